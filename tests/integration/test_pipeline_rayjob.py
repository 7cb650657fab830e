"""The training stages on a cluster: the RayJob manifest validates against the KubeRay CRD, and the
submit-and-watch code drives a fake Kubernetes API server on 127.0.0.1 through the real `kubernetes`
Python client (every call recorded); the stage summary comes back from a real S3 server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.fake_servers import FakeServer
from unimedvl import manifests
from unimedvl.config import load_params
from unimedvl.pipeline.rayjob import RayJobError, job_name, rayjob_manifest, run_stage_on_ray, submit_and_wait

REPO = Path(__file__).resolve().parents[2]
NS = "kubeflow"


def manifest(stage="stage2", **kw):
    params = load_params(REPO / "params.yaml")
    return rayjob_manifest(stage, params, image="registry.local/unimedvl-gpu:1.2.3", data_uri="s3://p/run/qc/dataset",
                           previous_uri="s3://p/run/stage1/model", out_uri="s3://p/run/stage2/model",
                           run_id="1f2e3d4c-aaaa-bbbb", **kw)


def test_rayjob_manifest_validates_against_the_crd():
    m = manifest()
    assert manifests.validate(m) == []
    spec = m["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert "unimedvl train --stage stage2 --ray-address auto" in spec["entrypoint"]
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    pod = worker["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.local/unimedvl-gpu:1.2.3"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.2.3")
    # The validator is live: a wrong type is caught.
    worker["replicas"] = "two"
    assert any("replicas" in e for e in manifests.validate(m))
    assert job_name("stage2", "1F2E-3D4C-aaaa-bbbb-cccc") == "unimedvl-stage2-1f2e3d4caaaa"


def test_gpu_workers_follow_the_step_parameter():
    params = load_params(REPO / "params.yaml")
    params = params.model_copy(update={"pipeline": params.pipeline.model_copy(update={"gpus": {"stage1": 4}})})
    m = rayjob_manifest("stage1", params, image="i:t", data_uri="s3://a/d", previous_uri="s3://a/p", out_uri="s3://a/o",
                        run_id="r")
    assert manifests.validate(m) == []
    assert m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 4
    import base64

    import yaml

    env = yaml.safe_load(m["spec"]["runtimeEnvYAML"])["env_vars"]
    train = yaml.safe_load(base64.b64decode(env["UNIMEDVL_PARAMS_B64"]))["train"]
    assert (train["workers"], train["use_gpu"], train["backend"]) == (4, True, "ray")


def fake_kube(final: str = "SUCCEEDED", exists: bool = False) -> FakeServer:
    base = f"/apis/ray.io/v1/namespaces/{NS}/rayjobs"

    def create(call, srv):
        if exists:
            return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}, "application/json"
        srv.state["job"] = call.json()
        return 201, call.json(), "application/json"

    def get(call, srv):
        srv.state["polls"] = srv.state.get("polls", 0) + 1
        n = srv.state["polls"]
        status = ({"jobDeploymentStatus": "Initializing"} if n == 1 else {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
                  if n == 2 else {"jobDeploymentStatus": "Complete" if final == "SUCCEEDED" else "Failed", "jobStatus": final,
                                  "message": "" if final == "SUCCEEDED" else "Job entrypoint command failed with exit code 1"})
        return 200, {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": call.path.rsplit("/", 1)[1]},
                     "status": status}, "application/json"

    def pods(call, srv):
        name = call.query["labelSelector"][0].split("=", 1)[1]
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                     "items": [{"metadata": {"name": f"{name}-submitter-x7k2", "namespace": NS}}]}, "application/json"

    def log(call, srv):
        return 200, "step 1/2 loss 5.1\nstep 2/2 loss 4.9\n", "text/plain"

    return FakeServer([("POST", base, create), ("GET", f"/api/v1/namespaces/{NS}/pods/", log),
                       ("GET", f"/api/v1/namespaces/{NS}/pods", pods), ("GET", base + "/", get)])


def api_client(url):
    from kubernetes import client

    cfg = client.Configuration(host=url)
    return client.ApiClient(cfg)


def test_submit_and_wait_creates_streams_and_waits():
    srv = fake_kube()
    try:
        m, out = manifest(), io.StringIO()
        status = submit_and_wait(m, api_client=api_client(srv.url), poll_s=0.05, out=out)
    finally:
        srv.stop()
    assert status["jobStatus"] == "SUCCEEDED"
    posts = [c for c in srv.calls if c.method == "POST"]
    assert len(posts) == 1 and posts[0].path == f"/apis/ray.io/v1/namespaces/{NS}/rayjobs" and posts[0].json() == m
    name = m["metadata"]["name"]
    assert srv.paths("GET").count(f"/apis/ray.io/v1/namespaces/{NS}/rayjobs/{name}") == 3
    log_calls = [c for c in srv.calls if c.path.endswith("/log")]
    assert log_calls and log_calls[0].query["follow"][0].lower() == "true" and f"{name}-submitter-x7k2" in log_calls[0].path
    assert f"[{name}] step 2/2 loss 4.9" in out.getvalue()


def test_failed_rayjob_raises_with_message_and_log_tail():
    srv = fake_kube(final="FAILED")
    try:
        with pytest.raises(RayJobError, match="ended FAILED: Job entrypoint command failed") as e:
            submit_and_wait(manifest(), api_client=api_client(srv.url), poll_s=0.05, out=io.StringIO())
    finally:
        srv.stop()
    assert "step 2/2 loss 4.9" in str(e.value)


def test_a_retried_task_waits_for_its_existing_rayjob():
    srv = fake_kube(exists=True)
    try:
        status = submit_and_wait(manifest(), api_client=api_client(srv.url), poll_s=0.05, out=io.StringIO())
    finally:
        srv.stop()
    assert status["jobStatus"] == "SUCCEEDED" and len([c for c in srv.calls if c.method == "POST"]) == 1


def test_run_stage_on_ray_returns_the_summary_from_s3(s3_env, monkeypatch):
    from unimedvl.storage import load_settings, minio_client

    monkeypatch.setenv("UNIMEDVL_PARAMS", str(REPO / "params.yaml"))
    settings = load_settings(REPO / "params.yaml")
    out_uri = settings.uri("pipelines", "run-1", "stage1", "model")
    body = json.dumps({"stage": "stage1", "steps": 7, "heldout_end": {"loss": 1.5}}).encode()
    minio_client(settings).put_object(settings.buckets["pipelines"], "run-1/stage1/model.metrics.json", io.BytesIO(body), len(body))
    srv = fake_kube()
    try:
        params = load_params(REPO / "params.yaml")
        params = params.model_copy(update={"pipeline": params.pipeline.model_copy(
            update={"ray": params.pipeline.ray.model_copy(update={"poll_s": 0.05})})})
        summary = run_stage_on_ray("stage1", settings.uri("pipelines", "run-1", "qc", "dataset"),
                                   settings.uri("pipelines", "run-1", "autoencoder", "model"), out_uri, params,
                                   image="i:t", run_id="run-1", api_client=api_client(srv.url))
    finally:
        srv.stop()
    assert summary["steps"] == 7 and summary["ray_status"] == "SUCCEEDED" and summary["rayjob"] == "unimedvl-stage1-run1"
    with pytest.raises(RayJobError, match="s3:// pipeline root"):
        run_stage_on_ray("stage1", "/d", "/p", "/local/out", params, image="i:t", run_id="r")


def test_sync_round_trips_folders_and_single_files_through_s3(s3_env, tmp_path, monkeypatch):
    """What the RayJob entrypoint runs: `unimedvl pipeline sync` both ways, against a real S3 server."""
    from typer.testing import CliRunner

    from unimedvl.cli import app

    monkeypatch.setenv("UNIMEDVL_PARAMS", str(REPO / "params.yaml"))
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "ema.safetensors").write_bytes(b"\x00weights" * 100)
    (src / "sub" / "lineage.json").write_text("{}")
    (tmp_path / "model.metrics.json").write_text('{"steps": 3}')
    runner = CliRunner()
    for args in (["pipeline", "sync", str(src), "s3://unimedvl-pipelines/r/stage1/model"],
                 ["pipeline", "sync", str(tmp_path / "model.metrics.json"), "s3://unimedvl-pipelines/r/stage1/model.metrics.json"],
                 ["pipeline", "sync", "s3://unimedvl-pipelines/r/stage1/model", str(tmp_path / "back")],
                 ["pipeline", "sync", "s3://unimedvl-pipelines/r/stage1/model.metrics.json", str(tmp_path / "m.json")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    assert (tmp_path / "back" / "ema.safetensors").read_bytes() == (src / "ema.safetensors").read_bytes()
    assert (tmp_path / "back" / "sub" / "lineage.json").exists() and not (tmp_path / "back" / "model.metrics.json").exists()
    assert json.loads((tmp_path / "m.json").read_text()) == {"steps": 3}
    res = runner.invoke(app, ["pipeline", "sync", str(src), str(tmp_path / "x")])
    assert res.exit_code == 1 and "exactly one" in res.output

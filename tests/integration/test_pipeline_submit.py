"""`unimedvl pipeline submit`: through kfp.Client to a fake KFP API server, and through hera to a fake
Argo server, both on 127.0.0.1, recording every call; bad arguments are refused before any call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fake_servers import FakeServer
from unimedvl.cli import app

J = "application/json"
REPO = Path(__file__).resolve().parents[2]


def fake_kfp(existing: bool) -> FakeServer:
    api = "/apis/v2beta1"
    return FakeServer([
        ("GET", f"{api}/healthz", lambda c, s: (200, {"multi_user": False}, J)),
        ("GET", f"{api}/pipelines/p-7/versions", lambda c, s: (200, {"pipeline_versions": [
            {"pipeline_id": "p-7", "pipeline_version_id": "v-1"}], "total_size": 1}, J)),
        ("GET", f"{api}/pipelines", lambda c, s: (200, {"pipelines": [{"pipeline_id": "p-7", "display_name": "unimedvl"}],
                                                        "total_size": 1} if existing else {}, J)),
        ("POST", f"{api}/pipelines/upload_version", lambda c, s: (200, {"pipeline_id": "p-7", "pipeline_version_id": "v-2"}, J)),
        ("POST", f"{api}/pipelines/upload", lambda c, s: (200, {"pipeline_id": "p-7", "display_name": "unimedvl"}, J)),
        ("GET", f"{api}/experiments", lambda c, s: (200, {}, J)),
        ("POST", f"{api}/experiments", lambda c, s: (200, {"experiment_id": "e-1", "display_name": c.json()["display_name"]}, J)),
        ("POST", f"{api}/runs", lambda c, s: (200, {"run_id": "r-1", "display_name": c.json()["display_name"]}, J)),
    ])


def invoke(*args):
    return CliRunner().invoke(app, ["pipeline", "submit", *args])


def test_submit_uploads_a_new_version_and_starts_a_run(tmp_path):
    srv = fake_kfp(existing=True)
    override = tmp_path / "o.yaml"
    override.write_text("qc: {min_side: 48}\n")
    try:
        res = invoke("--host", srv.url, "--experiment", "nightly", "--set", "train_profile=smoke", "--set", "stage1_steps=5",
                     "--params-override", str(override), "--version", "v-test")
    finally:
        srv.stop()
    assert res.exit_code == 0, res.output
    assert "run_id: r-1" in res.output and "version_id: v-2" in res.output
    posts = {c.path: c for c in srv.calls if c.method == "POST"}
    upload = posts["/apis/v2beta1/pipelines/upload_version"]
    assert upload.query == {"name": ["v-test"], "pipelineid": ["p-7"]}
    assert b"pipelineInfo" in upload.body and b"unimedvl" in upload.body  # the compiled YAML itself
    assert "/apis/v2beta1/pipelines/upload" not in posts
    assert posts["/apis/v2beta1/experiments"].json()["display_name"] == "nightly"
    run = posts["/apis/v2beta1/runs"].json()
    assert run["experiment_id"] == "e-1"
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-7", "pipeline_version_id": "v-2"}
    assert run["runtime_config"]["parameters"] == {"train_profile": "smoke", "stage1_steps": 5,
                                                   "params_override": "qc: {min_side: 48}\n"}


def test_first_submit_creates_the_pipeline():
    from unimedvl.pipeline.submit import submit_kfp

    srv = fake_kfp(existing=False)
    try:
        out = submit_kfp(srv.url, {})
    finally:
        srv.stop()
    paths = srv.paths("POST")
    assert paths == ["/apis/v2beta1/pipelines/upload", "/apis/v2beta1/runs"] and out["run_id"] == "r-1"
    run = json.loads(srv.calls[-1].body)
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-7", "pipeline_version_id": "v-1"}
    assert out["version_id"] == "v-1"


@pytest.mark.parametrize("args, message", [
    (["--set", "nosuch=1"], "unknown pipeline parameters ['nosuch']"),
    (["--set", "stage1_lr=-1"], "stage1.lr"),
    (["--set", "train_profile=nope"], "unknown profile"),
    (["--set", "novalue"], "NAME=VALUE"),
])
def test_bad_arguments_are_refused_before_any_call(args, message):
    srv = fake_kfp(existing=True)
    try:
        res = invoke("--host", srv.url, *args)
    finally:
        srv.stop()
    assert res.exit_code != 0 and message in res.output, res.output
    assert srv.calls == []


def test_an_unreachable_server_is_a_clear_error():
    srv = FakeServer([("GET", "/apis/v2beta1/healthz", lambda c, s: (200, {}, J))])
    try:
        res = invoke("--host", srv.url, "--set", "train_profile=smoke")
    finally:
        srv.stop()
    assert res.exit_code == 1 and "refused the submission" in res.output and "Traceback" not in res.output


def fake_argo(exists: bool) -> FakeServer:
    ns = "kubeflow"

    def create(kind):
        def route(c, s):
            if exists:
                return 409, {"code": 6, "message": f"{kind} already exists"}, J
            body = c.json()
            return 200, body.get("template") or body.get("cronWorkflow"), J
        return route

    def get(c, s):  # what the server holds: the previous rendering, at resourceVersion 41
        import yaml

        kind = "workflowtemplate" if "workflow-templates" in c.path else "cronworkflow"
        doc = yaml.safe_load((REPO / "pipelines" / "compiled" / f"argo-{kind}.yaml").read_text())
        doc["metadata"]["resourceVersion"] = "41"
        return 200, doc, J

    def put(c, s):
        body = c.json()
        return 200, body.get("template") or body.get("cronWorkflow"), J

    def submit(c, s):
        return 200, {"metadata": {"name": "unimedvl-x8f2k", "namespace": ns}, "spec": {}}, J

    return FakeServer([
        ("POST", f"/api/v1/workflow-templates/{ns}", create("workflow template")),
        ("GET", f"/api/v1/workflow-templates/{ns}/", get), ("PUT", f"/api/v1/workflow-templates/{ns}/", put),
        ("POST", f"/api/v1/cron-workflows/{ns}", create("cron workflow")),
        ("GET", f"/api/v1/cron-workflows/{ns}/", get), ("PUT", f"/api/v1/cron-workflows/{ns}/", put),
        ("POST", f"/api/v1/workflows/{ns}/submit", submit),
    ])


@pytest.mark.parametrize("exists", [False, True])
def test_submit_engine_argo_posts_the_rendered_yaml(exists):
    import yaml

    srv = fake_argo(exists)
    try:
        res = invoke("--host", srv.url, "--engine", "argo", "--set", "train_profile=smoke")
    finally:
        srv.stop()
    assert res.exit_code == 0, res.output
    assert "workflow: unimedvl-x8f2k" in res.output
    wt = yaml.safe_load((REPO / "pipelines" / "compiled" / "argo-workflowtemplate.yaml").read_text())
    sent = [c for c in srv.calls if c.path.startswith("/api/v1/workflow-templates") and c.method in ("POST", "PUT")]
    body = sent[-1].json()["template"]
    assert body["spec"]["templates"][0]["container"]["args"] == wt["spec"]["templates"][0]["container"]["args"]
    if exists:
        assert [c.method for c in sent] == ["POST", "PUT"] and body["metadata"]["resourceVersion"] == "41"
    sub = [c for c in srv.calls if c.path.endswith("/submit")][0].json()
    assert sub["resourceKind"] == "WorkflowTemplate" and sub["resourceName"] == "unimedvl"
    assert sub["submitOptions"]["parameters"] == ["train_profile=smoke"]
    res = invoke("--host", "http://127.0.0.1:9", "--engine", "argo", "--set", "nosuch=1")
    assert res.exit_code == 1 and "unknown Argo workflow parameters" in res.output

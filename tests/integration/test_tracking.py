"""The MLflow run lifecycle of `unimedvl.tracking` on a real MLflow SQLite store: one parent per pipeline
run, children per step, statuses, killed-run handling, the fallback key, datasets and source tags."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from unimedvl.config import TrackingConfig
from unimedvl.tracking import (
    PARENT_TAG,
    PIPELINE_KEY_TAG,
    PREVIOUS_PARENT_TAG,
    RETRY_OF_TAG,
    STEP_TAG,
    data_id,
    pipeline_key,
    step_run,
)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory):
    """Creating MLflow's SQLite schema takes ~10-20 s here; do it once and copy the file per test."""
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("mlflow-template")
    MlflowClient(f"sqlite:///{d / 'mlflow.db'}").search_experiments()
    return d / "mlflow.db"


@pytest.fixture
def store(tmp_path, monkeypatch, _template_db):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    shutil.copy(_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("UNIMEDVL_RUN_ID", "kfp-run-42")
    return MlflowClient(uri), TrackingConfig(experiment="unimedvl-test")


def _runs(client, name="unimedvl-test"):
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], max_results=100)


def _dataset(path, sha_of_input=None):
    path.mkdir(parents=True)
    m = {"format": "unimedvl-shards/1", "step": "qc" if sha_of_input else "ingest", "accepted": 3, "shards": []}
    if sha_of_input:
        m["input_manifest_sha256"] = sha_of_input
    (path / "manifest.json").write_text(json.dumps(m))
    return path


def test_steps_share_one_parent_which_ends_finished(store, tmp_path):
    client, cfg = store
    data = _dataset(tmp_path / "qc")
    with step_run("qc", params={"qc": {"min_side": 32}}, data=data, tracking=cfg) as a:
        a.log_metrics({"seen": 18.0})
        (tmp_path / "m.json").write_text("{}")
        assert a.log_artifact(tmp_path / "m.json") == "m.json"
        assert a.log_artifact(tmp_path / "m.json") is None  # never logged twice
    with step_run("stage1", params={"stage": {"lr": 0.002}}, data=data, tracking=cfg) as b:
        pass
    runs = _runs(client)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags[PIPELINE_KEY_TAG] == "kfp-run-42"
    kids = {r.data.tags[STEP_TAG]: r for r in runs if r.data.tags.get(PARENT_TAG) == parents[0].info.run_id}
    assert set(kids) == {"qc", "stage1"} and {k.info.status for k in kids.values()} == {"FINISHED"}
    qc = kids["qc"]
    assert qc.info.run_id == a.run_id and b.parent_id == a.parent_id
    assert qc.data.params["qc.min_side"] == "32" and qc.data.metrics["seen"] == 18.0
    for tag in ("mlflow.source.git.commit", "mlflow.source.name", "mlflow.source.type", "mlflow.user"):
        assert qc.data.tags.get(tag), tag
    ds = qc.inputs.dataset_inputs
    assert len(ds) == 1 and ds[0].dataset.name == "qc" and "manifest.json" in ds[0].dataset.source
    assert [a.path for a in client.list_artifacts(qc.info.run_id)] == ["m.json"]


def test_rerun_of_a_finished_step_opens_a_new_parent(store, tmp_path):
    client, cfg = store
    with step_run("stage1", tracking=cfg) as first:
        pass
    with step_run("stage2", tracking=cfg) as second:
        pass
    with step_run("stage1", tracking=cfg) as again:
        pass
    assert second.parent_id == first.parent_id and again.parent_id != first.parent_id
    new_parent = client.get_run(again.parent_id)
    assert new_parent.data.tags[PREVIOUS_PARENT_TAG] == first.parent_id
    with step_run("stage2", tracking=cfg) as later:  # the next step follows the newest parent
        pass
    assert later.parent_id == again.parent_id


def test_failure_marks_child_and_parent_failed_and_retry_links(store):
    client, cfg = store
    with pytest.raises(ValueError), step_run("stage1", tracking=cfg) as bad:
        raise ValueError("boom")
    assert client.get_run(bad.run_id).info.status == "FAILED"
    assert client.get_run(bad.parent_id).info.status == "FAILED"
    with step_run("stage1", tracking=cfg) as ok:
        pass
    # The retry lives under the same parent, links to the failed run, and the parent recovers.
    assert ok.parent_id == bad.parent_id and ok.retry_of == bad.run_id
    assert client.get_run(ok.run_id).data.tags[RETRY_OF_TAG] == bad.run_id
    assert client.get_run(ok.parent_id).info.status == "FINISHED"


def test_killed_run_is_marked_killed_on_retry(store, tmp_path):
    """A process killed inside its step (os._exit: no cleanup) leaves a RUNNING child; the retry marks it KILLED."""
    client, cfg = store
    code = ("import os\nfrom unimedvl.config import TrackingConfig\nfrom unimedvl.tracking import step_run\n"
            "cm = step_run('stage1', tracking=TrackingConfig(experiment='unimedvl-test'))\nrun = cm.__enter__()\n"
            "print(run.run_id, flush=True)\nos._exit(9)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    killed = out.stdout.split()[-1]
    assert client.get_run(killed).info.status == "RUNNING"
    with step_run("stage1", tracking=cfg) as retry:
        pass
    assert client.get_run(killed).info.status == "KILLED"
    assert retry.retry_of == killed and retry.parent_id == client.get_run(killed).data.tags[PARENT_TAG]
    assert client.get_run(retry.parent_id).info.status == "FINISHED"  # the retried run no longer counts


def test_fallback_key_names_the_ingest_data(store, tmp_path, monkeypatch):
    from unimedvl.data.shards import manifest_sha256

    monkeypatch.delenv("UNIMEDVL_RUN_ID")
    monkeypatch.setenv("UNIMEDVL_GIT_COMMIT", "0123456789abcdef")
    ingest = _dataset(tmp_path / "ingest")
    qc = _dataset(tmp_path / "qcd", sha_of_input=manifest_sha256(ingest))
    assert data_id(qc) == data_id(ingest) == manifest_sha256(ingest)
    key = pipeline_key(qc)
    assert key.startswith("dvc:0123456789ab:") and key.endswith(":" + manifest_sha256(ingest)[:12])
    client, cfg = store
    # ingest knows its data only at the end: its run is attached to the parent on exit.
    with step_run("ingest", data=ingest, tracking=cfg, defer_parent=True) as ing:
        assert ing.parent_id is None
    with step_run("stage1", data=qc, tracking=cfg) as s1:
        pass
    assert ing.parent_id == s1.parent_id
    assert client.get_run(ing.run_id).data.tags[PARENT_TAG] == s1.parent_id


def test_finish_pipeline_closes_the_parent(store):
    from unimedvl.tracking import finish_pipeline

    client, cfg = store
    with step_run("stage1", tracking=cfg) as run:
        pass
    assert finish_pipeline(cfg) == (run.parent_id, "FINISHED")
    assert finish_pipeline(cfg, failed=True) == (run.parent_id, "FAILED")
    assert client.get_run(run.parent_id).info.status == "FAILED"


def test_disabled_tracking_is_a_no_op(tmp_path):
    with step_run("evaluate", tracking=TrackingConfig(enabled=False)) as run:
        run.log_metrics({"x": 1.0})
        assert run.log_artifact(tmp_path) is None
    assert run.run_id is None

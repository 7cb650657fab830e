"""The QC run is logged to MLflow (the embedded default: SQLite) with its report as artifacts."""

from __future__ import annotations

import pytest

import json

from tests.unit.test_qc_run import crafted
from unimedvl.config import QCConfig
from unimedvl.data.shards import manifest_sha256
from unimedvl.qc import run_qc

pytestmark = pytest.mark.slow  # creating the MLflow SQLite schema takes ~20 s on two cores


def test_qc_run_and_artifacts_in_mlflow(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("UNIMEDVL_RUN_ID", "qc-test-run")
    crafted_dir = crafted(tmp_path)
    m = run_qc(crafted_dir, tmp_path / "out", QCConfig())
    client = mlflow.MlflowClient(uri)
    run = client.get_run(m["mlflow_run_id"])
    # QC is a child of the pipeline's parent, in the one experiment every step uses.
    assert client.get_experiment(run.info.experiment_id).name == "unimedvl"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["unimedvl.pipeline_key"] == "qc-test-run" and parent.info.status == "FINISHED"
    assert run.data.tags["unimedvl.step"] == "qc" and run.data.metrics["seen"] == 18
    assert run.data.params["qc.min_side"] == "32"
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.source_type == "local"
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report", "metrics.json"} <= top
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/index.html" in report and "report/counts_by_reason.png" in report
    assert (tmp_path / "mlruns").exists()  # artifacts next to the database, not in the working folder
    out = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert out["input_manifest_sha256"] == manifest_sha256(crafted_dir)

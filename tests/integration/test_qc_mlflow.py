"""The QC run is logged to MLflow (the embedded default: SQLite) with its report as artifacts."""

from __future__ import annotations

import pytest

from tests.unit.test_qc_run import crafted
from unimedvl.config import QCConfig
from unimedvl.qc import run_qc

pytestmark = pytest.mark.slow  # creating the MLflow SQLite schema takes ~20 s on two cores


def test_qc_run_and_artifacts_in_mlflow(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = QCConfig(mlflow={"tracking_uri": uri, "experiment": "qc-test"})
    m = run_qc(crafted(tmp_path), tmp_path / "out", cfg)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(m["mlflow_run_id"])
    assert run.data.tags["unimedvl.step"] == "qc" and run.data.metrics["seen"] == 18
    assert run.data.params["min_side"] == "32"
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report", "metrics.json"} <= top
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/index.html" in report and "report/counts_by_reason.png" in report
    assert (tmp_path / "mlruns").exists()  # artifacts next to the database, not in the working folder

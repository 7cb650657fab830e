"""MLflow run contents against a real `mlflow server` on 127.0.0.1: one parent run per pipeline run,
one child run per stage with flattened params, per-step and system metrics, artifacts and tags."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.train_helpers import make_dataset
from unimedvl.config import Params
from unimedvl.train.stages import run_stage
from unimedvl.tracking import manifest_sha256, pipeline_key

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_runs_params_metrics_artifacts(mlflow_server, tmp_path, monkeypatch):
    import torch
    from mlflow.tracking import MlflowClient

    torch.set_num_threads(1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("UNIMEDVL_GIT_COMMIT", "0123abcd")
    monkeypatch.delenv("UNIMEDVL_RUN_ID", raising=False)
    data = make_dataset(tmp_path / "qc", per_task=6)
    params = Params(tokenizer={"vocab_size": 320}, autoencoder={"steps": 3, "batch_size": 2},
                    train={"backend": "local", "heldout_samples": 4, "grid_steps": 2, "log_every": 2},
                    stage1={"steps": 6, "max_tokens": 400}, tracking={"system_metrics_interval": 0.5})
    models = tmp_path / "models"
    for stage in ("tokenizer", "autoencoder", "stage1"):
        run_stage(stage, data, models / stage, params, progress=False,
                  checkpoint_dir=tmp_path / "ck" if stage == "stage1" else None)

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("unimedvl")
    runs = client.search_runs([exp.experiment_id])
    key = pipeline_key(data)
    assert key.startswith("dvc:0123abcd:") and key.endswith(manifest_sha256(data)[:12])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["unimedvl.pipeline_key"] == key
    assert parents[0].info.status == "FINISHED"
    children = {r.data.tags["unimedvl.step"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == {"tokenizer", "autoencoder", "stage1"}
    s1 = children["stage1"]
    assert s1.info.status == "FINISHED"
    assert s1.data.tags["mlflow.source.git.commit"] == "0123abcd" and s1.data.tags["data_manifest_sha256"] == manifest_sha256(data)
    assert s1.inputs.dataset_inputs[0].dataset.digest == manifest_sha256(data)[:16]
    assert s1.data.params["stage.lr"] == "0.002" and s1.data.params["train.strategy"] == "ddp"
    for m in ("loss", "ce", "mse", "lr", "grad_norm", "tokens_per_s", "samples_per_s"):
        hist = client.get_metric_history(s1.info.run_id, m)
        assert [h.step for h in hist] == list(range(1, 7)), m
    assert "heldout_loss" in s1.data.metrics and "heldout_raw_loss" in s1.data.metrics
    assert "heldout_ce.i2t" in s1.data.metrics and "heldout_mse.t2i" in s1.data.metrics
    assert any(k.startswith("system/") for k in s1.data.metrics), sorted(s1.data.metrics)
    top = {a.path for a in client.list_artifacts(s1.info.run_id)}
    assert {"loss_curves.png", "samples.png", "resolved_config.yaml", "model", "losses.jsonl"} <= top
    assert "tokenizer.json" not in top  # it is in the model folder; nothing is logged twice
    # Only stage3 uploads its weights (once); earlier stages log their lineage.
    model_files = {Path(a.path).name for a in client.list_artifacts(s1.info.run_id, "model")}
    assert model_files == {"lineage.json"}
    ae_arts = {a.path for a in client.list_artifacts(children["autoencoder"].info.run_id)}
    assert "reconstructions.png" in ae_arts
    assert "tokenizer.json" in {a.path for a in client.list_artifacts(children["tokenizer"].info.run_id)}

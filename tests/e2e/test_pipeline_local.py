"""`unimedvl pipeline run-local`: the whole Kubeflow DAG through kfp.local, the same results as the
library (and `dvc repro`) on the same params and key. One run per session, shared by the tests."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEY = "kfp-local-test-key"
# A small data set keeps this in the default run (its `slow` twin below runs the full smoke profile).
LEAN = {"train_profile": "smoke", "ingest_phantom_count": 60, "autoencoder_steps": 3, "stage1_steps": 2,
        "stage2_steps": 2, "stage3_steps": 2, "run_ablation": True,
        "params_override": "ingest:\n  sources: [{name: phantom}]\n"}


@pytest.fixture(scope="session")
def kfp_run(tmp_path_factory):
    from unimedvl.pipeline.local import run_local

    tmp = tmp_path_factory.mktemp("kfp")
    env = {"UNIMEDVL_SECRET_KEY": KEY, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        run = run_local(tmp / "root", LEAN)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return run, env


def shard_hashes(folder: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((folder / "manifest.json").read_text())["shards"]]


def test_run_local_matches_the_library_on_the_same_params_and_key(kfp_run, tmp_path, monkeypatch):
    from unimedvl.data.ingest import ingest
    from unimedvl.pipeline.params import effective, resolve
    from unimedvl.qc import run_qc

    run, env = kfp_run
    monkeypatch.setenv("UNIMEDVL_SECRET_KEY", KEY)
    params = effective(resolve({k: v for k, v in LEAN.items() if k.startswith(("ingest_", "train_"))}, LEAN["params_override"]))
    assert [s.name for s in params.ingest.sources] == ["phantom"] and params.ingest.phantom.count == 60
    ingest(list(params.ingest.sources), tmp_path / "ingest", params.ingest)
    run_qc(tmp_path / "ingest", tmp_path / "qc", params.qc, report_dir=tmp_path / "report",
           metrics_path=tmp_path / "qc.json", log_to_mlflow=False)
    assert shard_hashes(run / "ingest" / "dataset") == shard_hashes(tmp_path / "ingest")
    assert shard_hashes(run / "qc" / "dataset") == shard_hashes(tmp_path / "qc")
    assert shard_hashes(tmp_path / "qc")


def test_run_local_model_folders_load_and_artefacts_render(kfp_run):
    import mlflow

    from unimedvl.model.checkpoint import load_model
    from unimedvl.model.tokenizer import load_tokenizer

    run, env = kfp_run
    assert load_tokenizer(run / "tokenizer" / "model").vocab_size > 256
    for step in ("autoencoder", "stage1", "stage2", "stage3", "ablation"):
        model, report = load_model(run / step / "model")
        assert report.ok, (step, report)
        lineage = json.loads((run / step / "model" / "lineage.json").read_text())
        assert lineage["extra"]["stage"] == ("stage3" if step == "ablation" else step)
        m = json.loads((run / step / "metrics").read_text())
        if step != "autoencoder":
            assert m["steps"] == 2.0 and m["heldout_end.loss"] > 0, (step, m)
    qc = json.loads((run / "qc" / "metrics").read_text())
    assert qc["accepted"] + qc["quarantined"] == qc["seen"] > 0
    page = (run / "qc" / "report").read_text()
    assert "data:image/png;base64," in page and not re.search(r"""src=["'][^"':]+\.png""", page)
    # The exit handler closed the MLflow parent run of this KFP run; the stages' runs are its children.
    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("unimedvl")
    out = json.loads((run / "ingest" / "executor_output.json").read_text())
    run_id = out["artifacts"]["dataset"]["artifacts"][0]["metadata"]["pipeline_run_id"]
    assert run_id
    for key, steps in ((run_id, {"qc", "tokenizer", "autoencoder", "stage1", "stage2", "stage3"}),
                       (f"{run_id}:ablation", {"stage3"})):
        parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`unimedvl.pipeline_key` = '{key}' and "
                                     "tags.`unimedvl.role` = 'pipeline'")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", (key, parents)
        children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
        assert {r.data.tags["unimedvl.step"] for r in children} >= steps, key


@pytest.mark.slow
def test_run_local_smoke_profile_equals_dvc_repro(tmp_path):
    """The full smoke profile (packaged corpus + phantoms) through kfp.local and `dvc repro` with the
    same params and key: identical ingest and qc shards; loadable models."""
    from tests.pipeline_helpers import dvc_repro_smoke
    from unimedvl.model.checkpoint import load_model
    from unimedvl.pipeline.local import run_local

    dvc_dir = dvc_repro_smoke(tmp_path / "dvc", KEY)
    os.environ["UNIMEDVL_SECRET_KEY"] = KEY
    try:
        run = run_local(tmp_path / "root", {"train_profile": "smoke", "ingest_phantom_count": 120},
                        params=dvc_dir / "params.yaml")
    finally:
        os.environ.pop("UNIMEDVL_SECRET_KEY", None)
    assert shard_hashes(run / "ingest" / "dataset") == shard_hashes(dvc_dir / "data" / "ingest")
    assert shard_hashes(run / "qc" / "dataset") == shard_hashes(dvc_dir / "data" / "qc")
    for step in ("autoencoder", "stage1", "stage2", "stage3"):
        assert load_model(run / step / "model")[1].ok

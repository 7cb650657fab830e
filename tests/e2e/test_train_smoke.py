"""The whole training pipeline on the `smoke` profile: tokenizer -> autoencoder -> stage1-3, each
stage's held-out loss lower at its end than at its start, every folder in the released layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_helpers import make_dataset
from unimedvl.config import load_params
from unimedvl.train.stages import StageError, run_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # trains under local Ray (params.yaml: backend ray): one Ray at a time
def test_smoke_pipeline_losses_fall(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("UNIMEDVL_PIPELINE_KEY", "test-smoke")
    data = make_dataset(tmp_path / "qc", per_task=12)
    params = load_params(REPO / "params.yaml")
    models = tmp_path / "models"
    out = {}
    for stage in ("tokenizer", "autoencoder", "stage1", "stage2", "stage3"):
        out[stage] = run_stage(stage, data, models / stage, params, profile="smoke", progress=False,
                               checkpoint_dir=tmp_path / "ck" / stage if stage.startswith("stage") else None)
    for stage in ("autoencoder", "stage1", "stage2", "stage3"):
        s = out[stage]
        assert s["heldout_end"]["loss"] < s["heldout_start"]["loss"], (stage, s)
        folder = models / stage
        for f in ("ema.safetensors", "ae.safetensors", "llm_config.json", "vit_config.json", "tokenizer.json", "lineage.json"):
            assert (folder / f).exists(), (stage, f)
        lineage = json.loads((folder / "lineage.json").read_text())
        assert lineage["extra"]["stage"] == stage and lineage["data_manifest_sha256"]
    assert (models / "stage3.metrics.json").exists()


def test_missing_previous_stage_is_a_clear_error(tmp_path):
    data = make_dataset(tmp_path / "qc", per_task=2, tasks=("text_only",), splits=("train",))
    with pytest.raises(StageError, match=r"starts from the stage1 stage's output .* does not exist: run `unimedvl train --stage stage1"):
        run_stage("stage2", data, tmp_path / "models" / "stage2", load_params(REPO / "params.yaml"), progress=False)


def test_incompatible_previous_folder_is_a_clear_error(tmp_path):
    from dataclasses import replace

    from tests.train_helpers import make_tokenizer
    from unimedvl.model.checkpoint import save_model
    from unimedvl.model.config import PRESETS
    from unimedvl.model.unimedvl import build_model

    data = make_dataset(tmp_path / "qc", per_task=2, tasks=("text_only",), splits=("train",))
    folder = tmp_path / "models" / "autoencoder"
    tok = make_tokenizer(data, folder)
    cfg = PRESETS["tiny"]
    cfg = cfg.replace(llm=replace(cfg.llm, vocab_size=tok.vocab_size, hidden_size=64))
    save_model(build_model(cfg), folder, lineage={"extra": {"stage": "autoencoder"}}, tokenizer=tok)
    with pytest.raises(StageError, match="incompatible with train.preset='tiny': llm.hidden_size: folder 64 vs preset 128"):
        run_stage("stage1", data, tmp_path / "models" / "stage1", load_params(REPO / "params.yaml"), progress=False)

"""Presets: the paper preset matches the released checkpoint exactly; the others have their sizes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from unimedvl.model.cli import model_app, preset_info
from unimedvl.model.config import PRESETS, ModelConfig, active_backbone_params, flops_per_token


def test_paper_preset_matches_the_released_counts_exactly():
    info = preset_info("paper")
    assert info["tensors"] == 1223
    assert info["parameters"] == 14_607_260_128
    assert info["autoencoder_tensors"] == 244
    assert info["autoencoder_parameters"] == 83_819_683


@pytest.mark.parametrize(("preset", "low", "high"), [("tiny", 1e6, 1e7), ("small", 7e7, 1.5e8), ("base", 7e8, 1.5e9)])
def test_preset_sizes(preset, low, high):
    info = preset_info(preset)
    assert low <= info["parameters"] + info["autoencoder_parameters"] <= high


def test_flops_per_token_counts_one_expert():
    cfg = PRESETS["paper"]
    active = active_backbone_params(cfg.llm)
    assert 7.0e9 < active < 7.7e9  # one Qwen2.5-7B expert without the input embedding table
    assert flops_per_token(cfg, seq_len=0) == 6 * active
    assert flops_per_token(cfg, 4096) > flops_per_token(cfg, 0)
    assert flops_per_token(cfg, 4096, training=False) * 3 == flops_per_token(cfg, 4096)


def test_config_round_trips_through_a_dict():
    for cfg in PRESETS.values():
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cli_info_json():
    result = CliRunner().invoke(model_app, ["info", "--preset", "paper", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["parameters"] == 14_607_260_128 and data["tensors"] == 1223 and data["preset"] == "paper"
    assert {"autoencoder_parameters", "autoencoder_tensors", "flops_per_token"} <= set(data)
    bad = CliRunner().invoke(model_app, ["info", "--preset", "huge"])
    assert bad.exit_code != 0 and "unknown preset" in bad.output

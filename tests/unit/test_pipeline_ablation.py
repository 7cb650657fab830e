"""The synergy ablation's pre-flight (the KFP branch's and `unimedvl evaluate --ablation`'s one function):
a variant whose masked mixture selects nothing the data has fails before any training, naming the
variant and the mixture; a stage trained without image outputs has no mixture-weighted MSE (None), not a
crash. The branch's run is the slow e2e test (tests/e2e/test_pipeline_local.py)."""

from __future__ import annotations

import pytest


def test_masked_mixture_the_data_lacks_is_a_clear_error():
    from unimedvl.config import Params
    from unimedvl.evaluate.synergy import SynergyError, masked_params

    p = Params()
    # Data with generation tasks only: understanding_only keeps text_only and i2t, which it lacks.
    masked_params(p, ("i2t",), 0, "generation_only", available={"t2i", "interleaved"})
    with pytest.raises(SynergyError, match=r"'understanding_only'.*stage1's mixture.*'i2t': 75.*it has: interleaved, t2i"):
        masked_params(p, ("t2i", "interleaved"), 0, "understanding_only", available={"t2i", "interleaved"})
    # Without knowing the data, a mixture masked to nothing is still refused.
    only_t2i = p.model_copy(update={"stage1": p.stage1.model_copy(update={"mixture": {"t2i": 1.0}})})
    with pytest.raises(SynergyError, match="understanding_only.*stage1"):
        masked_params(only_t2i, ("t2i", "interleaved"), 0, "understanding_only")


def test_run_ablation_refuses_before_training(smoke_pipeline, tmp_path):
    from unimedvl.evaluate.synergy import SynergyError, data_categories, run_ablation

    p = smoke_pipeline["params"]
    assert data_categories(smoke_pipeline["qc"], p) == {"text_only", "t2i", "i2t", "interleaved"}
    bad = p.model_copy(update={"stage2": p.stage2.model_copy(update={"mixture": {"t2i": 1.0}})})
    with pytest.raises(SynergyError, match="understanding_only.*stage2"):
        run_ablation(smoke_pipeline["qc"], smoke_pipeline["benchmark"], smoke_pipeline["judge"],
                     smoke_pipeline["models"] / "autoencoder", tmp_path / "work", bad, doc=tmp_path / "synergy.md")
    assert not (tmp_path / "work").exists() and not (tmp_path / "synergy.md").exists()  # nothing trained


def test_heldout_mse_of_a_mixture_without_image_outputs_is_none():
    from unimedvl.train.heldout import _mixed

    fam = {"i2t": {"ce": 2.0, "mse": None}, "t2i": {"ce": 1.0, "mse": 0.25}, "text_only": {"ce": 4.0, "mse": None}}
    understanding = {"text_only": 5.0, "t2i": 0.0, "i2t": 75.0, "interleaved": 0.0}
    assert _mixed(fam, understanding, "mse") is None
    assert _mixed(fam, understanding, "ce") == pytest.approx((5 * 4.0 + 75 * 2.0) / 80)
    assert _mixed(fam, {"t2i": 1.0, "i2t": 1.0}, "mse") == pytest.approx(0.25)

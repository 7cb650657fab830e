"""Evaluation numbers pinned where a closed form exists: the Frechet distance of shifted copies, the
permutation tests' +1-corrected p-values at their floor, the bootstrap's edge cases, the min_n
boundary and the closed-question rules (mutation testing found each of these unpinned)."""

from __future__ import annotations

import numpy as np
import pytest

from unimedvl.evaluate.generation import frechet_distance, frechet_metric
from unimedvl.evaluate.stats import bootstrap_ci, mcnemar_exact, metric, paired_permutation_test, permutation_test
from unimedvl.evaluate.understanding import is_closed, yes_no


def test_frechet_distance_of_a_shifted_copy_is_the_squared_shift_with_a_bootstrap_interval():
    a = np.random.default_rng(0).normal(size=(200, 2))
    b = a + np.array([3.0, 4.0])  # same covariance: the trace terms cancel, FD = |shift|^2 = 25
    assert frechet_distance(a, b) == pytest.approx(25.0, abs=1e-6)
    m = frechet_metric(a, b, n_boot=20, seed=3)
    assert m.status.value == "ok" and m.value == pytest.approx(25.0, abs=1e-6) and m.n == 200
    rng = np.random.default_rng(3)  # the interval: estimate +- 1.96 bootstrap SE (ddof=1) of these resamples
    boots = [frechet_distance(a[rng.integers(0, 200, 200)], b[rng.integers(0, 200, 200)]) for _ in range(20)]
    se = float(np.std(boots, ddof=1))
    assert (m.ci_low, m.ci_high) == pytest.approx((25.0 - 1.96 * se, 25.0 + 1.96 * se), rel=1e-9)
    assert frechet_metric(a[:3], b[:3]).status.value == "insufficient_samples"


def test_permutation_p_values_floor_at_one_over_n_plus_one():
    big, small = np.arange(10.0, 20.0), np.arange(0.0, 10.0)
    assert permutation_test(big, small, n_perm=199) == pytest.approx(1 / 200)  # no permutation beats it
    assert permutation_test(small, big, n_perm=199) == pytest.approx(1.0)  # every permutation does
    # All-positive differences: only the all-plus sign vector (1 in 2^12) reaches the observed sum.
    p = paired_permutation_test(np.full(12, 1.0), n_perm=1200)
    assert 1 / 1201 <= p < 5 / 1201
    assert paired_permutation_test(np.full(12, -1.0), n_perm=1200) == pytest.approx(1.0)  # 1200 of 1200 hit


def test_bootstrap_edges_and_metric_boundary():
    v = np.random.default_rng(4).random(12)  # continuous values: every resample count moves the quantiles
    assert bootstrap_ci(v, n_boot=0) is None and bootstrap_ci(v[:1]) is None
    lo, hi = bootstrap_ci(v, n_boot=200, seed=1)
    assert 0.0 <= lo < v.mean() < hi <= 1.0 and bootstrap_ci(v, n_boot=201, seed=1) != (lo, hi)
    assert bootstrap_ci(v) == bootstrap_ci(v, n_boot=1000, seed=0)  # the documented default
    m = metric(v, min_n=12, n_boot=200, seed=1)  # exactly min_n items: computed, with that very interval
    assert m.status.value == "ok" and m.value == pytest.approx(v.mean()) and (m.ci_low, m.ci_high) == (lo, hi)
    assert metric(v, min_n=13).status.value == "insufficient_samples"


def test_mcnemar_message_names_the_test():
    with pytest.raises(ValueError, match="^McNemar needs paired outcomes"):
        mcnemar_exact([True], [True, False])


def test_yes_no_and_closed_questions():
    assert yes_no("Yes, there is.") == "yes" and yes_no("No.") == "no" and yes_no("None seen") == "no"
    assert yes_no("left lower lobe") is None
    assert is_closed("Is there an effusion?", "no")
    assert is_closed("Is there an effusion?", "yes it is")  # three words
    assert not is_closed("Is there an effusion?", "no it is not")  # four words: an open answer
    assert not is_closed("Where is the lesion?", "left lower lobe")
    assert is_closed("Which side?\nA. left\nB. right", "A")


def test_ssim_region_change_and_pointing_edges():
    from unimedvl.evaluate.generation import pointing_hit, region_change, ssim

    rng = np.random.default_rng(0)
    a, b = rng.random((6, 6)), rng.random((6, 6))
    s = ssim(a, b)  # a 6 px image: the window shrinks to 5 (the default 7 does not fit)
    assert -1.0 < s < 1.0 and ssim(a, a) == 1.0 and ssim(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    before, after = np.zeros((4, 4)), np.full((4, 4), 0.5)
    assert region_change(before, after, np.ones((4, 4))) == (0.5, 0.0)  # no outside: 0, not nan
    mask = np.zeros((4, 4))
    mask[:2] = 1
    assert region_change(before, after, mask) == (0.5, 0.5)
    region = np.zeros((4, 4), bool)
    region[0, 0] = True
    assert pointing_hit(np.ones((4, 4)), region) == (False, 1 / 16)  # a flat heatmap points nowhere
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    assert pointing_hit(heat, region) == (True, 1 / 16)


def test_torchscript_features_and_bicubic_baseline(tmp_path):
    import torch

    from unimedvl.evaluate.generation import bicubic_upsample, torchscript_extractor

    class Pool(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    torch.jit.script(Pool()).save(str(tmp_path / "pool.pt"))
    extract = torchscript_extractor(tmp_path / "pool.pt", resolution=8)
    grey = torch.full((2, 1, 4, 4), 0.5)
    feats = extract(grey)  # grey repeated to 3 channels, resized, pooled
    assert feats.shape == (2, 3) and feats.dtype == np.float64 and np.allclose(feats, 0.5)
    up = bicubic_upsample(np.full((4, 4), 0.25), 8)
    assert up.shape == (8, 8) and up.dtype == np.float64 and np.allclose(up, 0.25)

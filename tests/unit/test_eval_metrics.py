"""Every evaluation metric on hand-made cases with known answers, including where a naive
implementation goes wrong."""

from __future__ import annotations

import numpy as np
import pytest

from unimedvl.evaluate import understanding as U
from unimedvl.evaluate.generation import (
    bicubic_upsample,
    pointing_hit,
    faithfulness,
    faithfulness_contributions,
    frechet_distance,
    frechet_metric,
    psnr,
    region_change,
    ssim,
)
from unimedvl.evaluate.report import bleu, finding_prf, label_report, report_metrics, rouge_l
from unimedvl.evaluate.schema import FINDINGS, Status
from unimedvl.evaluate.stats import (
    auroc_metric,
    bootstrap_ci,
    hits_above_chance_p,
    mcnemar_exact,
    metric,
    paired_permutation_test,
    permutation_test,
)


def test_closed_answers_ignore_case_punctuation_and_articles():
    assert U.closed_correct("Yes.", "yes")
    assert U.closed_correct("YES, there is an effusion", "Yes")
    assert not U.closed_correct("No.", "Yes.")
    assert not U.closed_correct("Effusion.", "No.")  # no yes/no word is wrong, never read as "no"
    assert U.open_exact("The left lung.", "left lung")
    assert not U.open_exact("", "")


def test_option_letters_and_texts():
    q = "Which side?\nA. left\nB. right\nC. both"
    assert U.closed_correct("B", "B", q)
    assert U.closed_correct("(B) right", "B", q)
    assert U.closed_correct("b", "B", q) and U.closed_correct("(b)", "B", q)  # a lower-case letter
    assert U.closed_correct("right", "B", q)
    assert U.closed_correct("The answer is right.", "B", q)
    assert not U.closed_correct("A", "B", q)
    assert not U.closed_correct("left or right", "B", q)  # two options named: no answer
    # an empty answer names no option, whatever the options' texts are
    assert U.option_letter("", {"A": "xxxx", "B": "left"}) is None and U.option_letter(None, {"A": "xxxx"}) is None


def test_all_yes_answerer_scores_the_yes_share_only():
    refs = ["Yes."] * 30 + ["No."] * 70
    acc = np.mean([U.closed_correct("yes", r) for r in refs])
    assert acc == pytest.approx(0.3)
    assert U.majority_answers([("presence", r) for r in refs]) == {"presence": "no"}


def test_open_recall_counts_reference_tokens():
    assert U.open_recall("a small left effusion", "Small left pleural effusion.") == pytest.approx(3 / 4)
    assert U.open_recall("anything", "") == 0.0


def test_labeler_negation_and_uncertainty():
    lab = label_report("FINDINGS: No pleural effusion. Possible right pneumothorax. There is a 9 mm nodule in the "
                       "RUL. The heart is not enlarged.")
    assert lab.positive == {"nodule"}
    assert lab.negative == {"effusion", "cardiomegaly"}
    assert lab.uncertain == {"pneumothorax"}
    assert label_report("The costophrenic angles are sharp, without pleural effusion.").positive == frozenset()
    assert label_report("Enlarged cardiac silhouette (cardiothoracic ratio 0.62).").positive == {"cardiomegaly"}
    assert label_report("No effusion, but a left pneumothorax.").positive == {"pneumothorax"}
    # a naive keyword matcher would call "no effusion" an effusion: F1 0 against an empty reference
    tp, fp, fn, per = finding_prf(["No effusion. No pneumothorax."], [set()])
    assert (tp, fp, fn, per) == (0, 0, 0, [1.0])
    tp, fp, fn, _ = finding_prf(["Small left pleural effusion. Possible nodule."], [{"effusion", "nodule"}])
    assert (tp, fp, fn) == (1, 0, 1)


def test_bleu_rouge_meteor():
    refs = ["there is a small left pleural effusion", "no acute cardiopulmonary abnormality"]
    assert bleu(refs, refs, 4) == pytest.approx(100.0)
    assert bleu(["completely different words here"] * 2, refs, 1) == pytest.approx(0.0)
    assert rouge_l(refs, refs) == [pytest.approx(1.0)] * 2
    m = report_metrics(refs * 5, refs * 5, [set()] * 10, min_n=5, n_boot=20, seed=0)
    assert m["report.meteor"].status is Status.unavailable and m["report.meteor"].value is None
    assert m["report.bleu4"].value == pytest.approx(100.0)
    few = report_metrics(refs, refs, [None, None], min_n=5, n_boot=20, seed=0)
    assert few["report.bleu1"].status is Status.insufficient_samples


def test_ssim_psnr_constant_and_known_cases():
    c = np.full((32, 32), 0.5)
    assert ssim(c, c) == 1.0 and psnr(c, c) == 100.0  # a naive SSIM divides 0 by 0 on constant images
    assert psnr(c, c + 0.1) == pytest.approx(20.0)
    rng = np.random.default_rng(0)
    img = rng.random((32, 32))
    assert ssim(img, img) == 1.0
    noisy = [ssim(img, np.clip(img + rng.normal(0, s, img.shape), 0, 1)) for s in (0.05, 0.2, 0.5)]
    assert 1.0 > noisy[0] > noisy[1] > noisy[2]
    assert -1.0 <= ssim(c, img) <= 1.0


def test_bicubic_and_region_change():
    big = np.add.outer(np.linspace(0, 1, 16), np.zeros(16))
    low = big.reshape(4, 4, 4, 4).mean(axis=(1, 3))
    assert psnr(bicubic_upsample(low, 16), big) > 25
    before = np.zeros((8, 8))
    after = before.copy()
    after[:2, :2] = 1.0
    mask = np.zeros((8, 8))
    mask[:2, :2] = 1
    assert region_change(before, after, mask) == (1.0, 0.0)


def test_faithfulness_paint_everything_scores_zero():
    finding = np.array(["nodule"] * 10 + ["effusion"] * 10)
    asks = np.array([True, False] * 10)
    everything = np.ones((20, len(FINDINGS)), dtype=bool)
    assert faithfulness(everything, finding, asks)["nodule"] == 0.0
    perfect = np.zeros((20, len(FINDINGS)), dtype=bool)
    perfect[:10, FINDINGS.index("nodule")] = asks[:10]
    perfect[10:, FINDINGS.index("effusion")] = asks[10:]
    f = faithfulness(perfect, finding, asks)
    assert f["nodule"] == 1.0 and f["effusion"] == 1.0 and f["lesion"] is None
    assert faithfulness_contributions(perfect, finding, asks).sum() == pytest.approx(1.0)
    assert faithfulness_contributions(everything, finding, asks).sum() == pytest.approx(0.0)
    p = paired_permutation_test(faithfulness_contributions(perfect, finding, asks)
                                - faithfulness_contributions(everything, finding, asks), 2000, 0)
    assert p < 0.01


def test_statistics():
    assert mcnemar_exact([True] * 20, [False] * 20)[0] < 1e-5
    assert mcnemar_exact([True, False], [True, False]) == (1.0, 0, 0)
    p, n01, n10 = mcnemar_exact([True] * 12 + [False] * 8, [False] * 12 + [True] * 8)
    assert (n01, n10) == (12, 8) and p > 0.3
    lo, hi = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)], n_boot=500, seed=1)
    assert lo < 0.5 < hi and hi - lo < 0.3
    assert metric([1.0] * 3, min_n=5).status is Status.insufficient_samples
    assert permutation_test([1.0] * 30, [0.0] * 30, 500) < 0.01
    assert permutation_test([0.0] * 30, [1.0] * 30, 500) > 0.9


def test_margin_auroc_sees_a_signal_the_greedy_answer_hides():
    truth = [True, False] * 20
    # every margin negative (greedy "no" throughout: accuracy 0.5), but higher for the true "yes"
    hidden = [-1.0 + 0.5 * t for t in truth]
    m = auroc_metric(truth, hidden, min_n=10, n_boot=200)
    assert m.value == 1.0 and m.status is Status.ok and m.n == 40 and m.ci_high == 1.0
    # a constant margin (the blind all-alike answerer) is chance, not undefined; reversed is 0
    assert auroc_metric(truth, [2.0] * 40, min_n=10).value == 0.5
    assert auroc_metric(truth, [-x for x in hidden], min_n=10, n_boot=0).value == 0.0
    noisy = auroc_metric(truth, [t + np.sin(i) for i, t in enumerate(truth)], min_n=10, n_boot=300)
    assert 0.5 < noisy.value < 1.0 and noisy.ci_low < noisy.value < noisy.ci_high
    # one class only, or too few items: no number
    assert auroc_metric([True] * 30, list(range(30)), min_n=10).status is Status.insufficient_samples
    assert auroc_metric(truth[:6], hidden[:6], min_n=10).status is Status.insufficient_samples


def test_bootstrap_interval_is_the_95_percent_one_and_insufficient_says_what_and_how_many():
    # 50 zeros and 50 ones: the mean's 95% interval is 0.5 +- 1.96 * 0.05 (a 90% one would be +- 0.082)
    lo, hi = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)], n_boot=4000, seed=3)
    assert 0.395 <= lo <= 0.415 and 0.585 <= hi <= 0.605, (lo, hi)  # a 97% one reaches 0.39 / 0.61
    assert bootstrap_ci([0.0, 1.0], n_boot=50) is not None  # two items are enough to resample
    assert bootstrap_ci([0.0, 1.0], n_boot=1) is not None  # and one resample gives an interval
    assert bootstrap_ci([100.0] + [0.0] * 9, n_boot=400, seed=0)[1] > 0  # the first item is drawn too
    assert bootstrap_ci([1.0], n_boot=50) is None and bootstrap_ci([0.0, 1.0], n_boot=0) is None
    m = metric([1.0] * 3, min_n=5, what="reports")
    assert (m.n, m.value, m.reason) == (3, None, "3 reports, fewer than evaluate.min_n=5")
    assert metric([1.0] * 3, min_n=5).reason == "3 items, fewer than evaluate.min_n=5"
    assert metric([1.0, 0.0] * 3, min_n=6).status is Status.ok  # exactly min_n is enough
    truth = [True, False] * 5
    a = auroc_metric(truth, [float(t) for t in truth], min_n=10)
    assert a.status is Status.ok and a.value == 1.0 and a.n == 10  # exactly min_n
    b = auroc_metric(truth[:8], [0.0] * 8, min_n=10, what="finding questions")
    assert (b.n, b.reason) == (8, "8 finding questions (both answers needed), fewer than evaluate.min_n=10")
    assert auroc_metric(truth[:4], [0.0] * 4, min_n=10).reason.startswith("4 items (both")
    # one "yes" in ten: many resamples hold no "yes" at all; they count as chance, never an error
    rare = [True] + [False] * 9
    r = auroc_metric(rare, list(range(10, 0, -1)), min_n=10, n_boot=300, seed=2)
    assert r.value == 1.0 and 0.5 <= r.ci_low <= r.ci_high <= 1.0
    assert r == auroc_metric(rare, list(range(10, 0, -1)), min_n=10, n_boot=300, seed=2)  # seeded interval


def test_permutation_tests_edges_ties_and_reproducibility():
    with pytest.raises(ValueError, match="^a permutation test needs two non-empty groups$"):
        permutation_test([1.0, 2.0], [])
    with pytest.raises(ValueError, match="^a permutation test needs two non-empty groups$"):
        permutation_test([], [1.0])
    with pytest.raises(ValueError, match="^a permutation test needs at least one pair$"):
        paired_permutation_test([])
    assert 0.0 < permutation_test([3.0], [1.0, 2.0], 200) <= 1.0  # a one-item group is a group
    assert paired_permutation_test([0.5], 200) == pytest.approx(0.5, abs=0.1)  # one pair: a coin flip
    # identical groups: every permutation ties the observed difference, so p is exactly 1
    assert permutation_test([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 300) == 1.0
    assert paired_permutation_test([0.0, 0.0, 0.0], 300) == 1.0
    a, b = [0.2, 0.5, 0.1, 0.9, 0.7], [0.3, 0.4, 0.6, 0.0, 0.1]
    assert permutation_test(a, b) == permutation_test(a, b)  # seeded: the same p every run
    d = [0.3, -0.1, 0.2, 0.05, -0.2, 0.4]
    assert paired_permutation_test(d) == paired_permutation_test(d)
    assert 0.05 < permutation_test(a, b) < 0.95 and 0.05 < paired_permutation_test(d) < 0.95


def test_chance_rates_are_probabilities():
    with pytest.raises(ValueError, match="^one chance rate per item$"):
        hits_above_chance_p([True, False], [0.5])
    # out-of-range rates (an area ratio off by rounding) are read as 0 and 1
    assert hits_above_chance_p([True, True], [-0.2, 1.4]) == hits_above_chance_p([True, True], [0.0, 1.0]) == 0.0
    assert hits_above_chance_p([True, True], [1.4, 0.5]) == pytest.approx(0.5)  # P(both) with rates 1 and 0.5
    assert hits_above_chance_p([True, True], [-0.3, 0.5]) == 0.0
    # no hits: p is 1 exactly, though the tail sums to 1 + 2e-16 in floating point for these rates
    assert hits_above_chance_p([False, False], [0.1, 0.6]) == 1.0


def test_frechet_distance_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 4))
    b = rng.normal(0, 1, (4000, 4)) + np.array([2.0, 0, 0, 0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.1)
    c = rng.normal(0, 2, (4000, 4))  # same mean, std 2: 4 * (1 + 4 - 2 * 2) = 4
    assert frechet_distance(a, c) == pytest.approx(4.0, rel=0.1)
    few = frechet_metric(a[:7], b[:7])
    assert few.status is Status.insufficient_samples and "needs >= 8" in few.reason


def test_synergy_masks_mixtures_and_tabulates(tmp_path):
    from unimedvl.config import Params
    from unimedvl.evaluate.synergy import masked_params, synergy_table, write_synergy_md
    from unimedvl.train.stages import stage_spec

    p = masked_params(Params(), ("i2t",), seed=3)
    assert p.train.seed == 3
    for stage in ("stage1", "stage2", "stage3"):
        mix = stage_spec(p, stage).mixture
        assert mix["i2t"] == 0 and mix["t2i"] > 0
        assert stage_spec(p, stage).steps == stage_spec(Params(), stage).steps  # same budget
    u = masked_params(Params(), ("t2i", "interleaved"), seed=0)
    assert stage_spec(u, "stage2").mixture["t2i"] == 0 and stage_spec(u, "stage2").mixture["i2t"] > 0
    results = {"unified": {0: {"vqa.finding.accuracy": 0.7, "generation.faithfulness.mean": 0.2},
                           1: {"vqa.finding.accuracy": 0.8, "generation.faithfulness.mean": None}},
               "understanding_only": {0: {"vqa.finding.accuracy": 0.6}, 1: {"vqa.finding.accuracy": 0.6}},
               "generation_only": {0: {"generation.faithfulness.mean": 0.1}, 1: {}}}
    rows = {r["metric"]: r for r in synergy_table(results)}
    assert rows["vqa.finding.accuracy"]["deltas"] == pytest.approx([0.1, 0.2])
    assert rows["vqa.finding.accuracy"]["mean"] == pytest.approx(0.15)
    assert rows["generation.faithfulness.mean"]["deltas"] == pytest.approx([0.1]) and rows["generation.faithfulness.mean"]["stdev"] is None
    text = write_synergy_md(list(rows.values()), tmp_path / "synergy.md").read_text()
    assert "| `vqa.finding.accuracy` | understanding_only | +0.1500 |" in text


def test_pointing_game_hits_misses_and_flat_maps():
    region = np.zeros((16, 16), dtype=bool)
    region[4:6, 4:6] = True
    heat = np.zeros((16, 16))
    heat[5, 5] = 1.0
    assert pointing_hit(heat, region) == (True, pytest.approx(4 / 256))
    heat = np.zeros((16, 16))
    heat[7, 5] = 1.0
    assert pointing_hit(heat, region)[0] is False
    assert pointing_hit(heat, region, grow=2)[0] is True  # within the heatmap's resolution
    assert pointing_hit(np.ones((16, 16)), region)[0] is False  # a flat map points nowhere


def test_pointing_game_p_value_is_the_exact_chance_tail():
    from scipy.stats import binomtest

    # equal rates: the one-sided binomial test
    hits = [True] * 7 + [False] * 3
    assert hits_above_chance_p(hits, [0.3] * 10) == pytest.approx(binomtest(7, 10, 0.3, alternative="greater").pvalue)
    # one rate per item: P(at least one hit) = 1 - 0.9 * 0.1
    assert hits_above_chance_p([True, False], [0.1, 0.9]) == pytest.approx(0.91)
    assert hits_above_chance_p([True, True], [0.1, 0.9]) == pytest.approx(0.09)
    assert hits_above_chance_p([False, False], [0.1, 0.9]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one chance rate per item"):
        hits_above_chance_p([True], [0.1, 0.2])

"""Duplicate search: the multi-index Hamming search, the perceptual hash, MinHash, the alignment cut."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.unit.test_qc_checks import near_copy, phantom
from unimedvl.qc.alignment import AlignmentScorer, below_cut, load_scorer
from unimedvl.qc.dedup import (
    brute_force_pairs,
    correlation,
    hamming,
    minhash,
    minhash_pairs,
    near_pairs,
    phash,
    pixel_hash,
    plan,
    thumbnail,
)


def clustered_hashes(n: int, radius: int, seed: int = 0) -> np.ndarray:
    """Clusters of 5 around random centres, members 0..radius+2 bits away (some just outside)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**63, size=n // 5, dtype=np.uint64) * np.uint64(2)
    h = np.repeat(centres, 5)
    flips = rng.integers(0, radius + 3, size=len(h))
    for c in range(radius + 2):
        use = c < flips
        h[use] ^= np.uint64(1) << rng.integers(0, 64, size=int(use.sum())).astype(np.uint64)
    return h


def test_near_pairs_equals_brute_force():
    for radius in (0, 3, 5, 8):
        h = clustered_hashes(3000, radius, seed=radius)
        got = {tuple(p) for p in near_pairs(h, radius).tolist()}
        want = {tuple(p) for p in brute_force_pairs(h, radius).tolist()}
        assert got == want and len(want) > 100


def test_plan_keeps_buckets_small_and_obeys_the_pigeonhole():
    for n in (10**4, 10**6):
        for t in (2, 5, 8):
            p = plan(n, t)
            assert p.blocks * (p.radius + 1) > t  # some block is within `radius` of its partner
            assert 2 ** min(p.widths) >= n / 64  # buckets of ~log2(n) bits


def test_pixel_hash_is_on_pixels_not_bytes():
    a = phantom(1)
    assert pixel_hash(a) == pixel_hash(a.copy()) != pixel_hash(phantom(2))
    assert pixel_hash(a) != pixel_hash(a.astype(np.uint16))


def test_near_copy_is_caught_and_another_image_of_the_same_modality_is_not():
    a, copy, other = phantom(11), near_copy(phantom(11)), phantom(12)
    assert copy.shape != a.shape  # resized, shifted, JPEG re-encoded
    assert hamming(phash(a), phash(copy)) <= 8
    assert correlation(thumbnail(a), thumbnail(copy)) >= 0.88
    assert correlation(thumbnail(a), thumbnail(other)) < 0.88


def test_minhash_finds_the_same_report_reworded_slightly():
    r1 = ("FINDINGS: The heart is normal in size. The mediastinum is unremarkable. There is a 1 cm nodule in the "
          "right upper lobe. No pleural effusion or pneumothorax. IMPRESSION: Right upper lobe nodule.")
    r2 = r1.replace("IMPRESSION:", "IMPRESSION -").replace("1 cm", "1 cm ")
    r3 = "FINDINGS: Large left pleural effusion with compressive atelectasis. Heart size cannot be assessed."
    sigs = np.stack([minhash(r1), minhash(r2), minhash(r3)])
    pairs = minhash_pairs(sigs, 0.8)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]


def test_alignment_cut_keeps_the_top_fraction_and_unjudged_records():
    drop, cut = below_cut([0.9, 0.1, math.nan, 0.5, 0.5, 0.3], 0.5)
    assert cut == 0.5 and drop == [False, True, False, False, False, True]  # 3 of 5 judged kept
    assert below_cut([0.5, 0.5, 0.5, 0.5], 0.5)[0] == [False, False, True, True]  # ties: exact fraction
    assert below_cut([0.9, 0.5, 0.1], 0.1) == ([False, True, True], 0.9)  # a small fraction keeps one, not two
    assert below_cut([math.nan, math.nan], 0.5) == ([False, False], None) and below_cut([], 0.5) == ([], None)  # none judged
    # Distinct scores: the top 2 of 5 stay, whatever their input order; ties at the cut fill the quota only.
    assert below_cut([0.9, 0.1, 0.7, 0.3, 0.5], 0.4) == ([False, True, False, True, True], 0.7)
    assert below_cut([0.9, 0.5, 0.5, 0.5, 0.1], 0.4) == ([False, False, True, True, True], 0.5)



def test_load_scorer_imports_factories_and_instances_and_refuses_the_rest(tmp_path, monkeypatch):
    (tmp_path / "my_align.py").write_text(
        "class Const:\n"
        "    def __init__(self, value=1.0):\n"
        "        self.value = value\n"
        "    def score(self, records):\n"
        "        return [self.value] * len(records)\n"
        "def half():\n"
        "    return Const(0.5)\n"
        "ready = Const(2.0)\n"
        "class NoScore:\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_scorer("my_align:Const").score([1, 2]) == [1.0, 1.0]  # a class is instantiated
    assert load_scorer("my_align:half").score([1]) == [0.5]  # a factory is called
    assert load_scorer("my_align:ready").score([1]) == [2.0]  # an instance is used as it is
    with pytest.raises(TypeError, match="my_align:NoScore gives NoScore, which has no score"):
        load_scorer("my_align:NoScore")
    for bad in ("my_align.Const", "my_align:Const:extra", ":Const", "my_align:"):
        with pytest.raises(ValueError, match="must look like 'package.module:factory'"):
            load_scorer(bad)
    # not a class, factory or scorer (a float is not callable): refused with the same message, never called
    with pytest.raises(TypeError, match="math:pi gives float, which has no score"):
        load_scorer("math:pi")
    # a callable scorer instance is a scorer, used as it is (not called as if it were a factory)
    (tmp_path / "my_callable.py").write_text(
        "class Scorer:\n"
        "    def score(self, records):\n"
        "        return [3.0] * len(records)\n"
        "    def __call__(self):\n"
        "        raise AssertionError('a scorer instance was called as a factory')\n"
        "instance = Scorer()\n"
    )
    assert load_scorer("my_callable:instance").score([1]) == [3.0]
    assert not isinstance(object(), AlignmentScorer)


def test_batched_correlations_equal_the_single_pair_ones_flat_images_included():
    from unimedvl.qc.dedup import correlation, correlations, thumbnail

    flat_a, flat_b = np.full((32, 32), 7, np.uint8), np.full((32, 32), 200, np.uint8)
    thumbs = [thumbnail(phantom(1)), thumbnail(near_copy(phantom(1))), thumbnail(flat_a), thumbnail(flat_b),
              thumbnail(phantom(2))]
    pairs = np.array([(0, 1), (2, 3), (0, 2), (0, 4)])
    got = correlations(thumbs, pairs, chunk=3)  # two chunks
    want = [correlation(thumbs[a], thumbs[b]) for a, b in pairs.tolist()]
    assert got.tolist() == pytest.approx(want, abs=1e-6)  # float32 batches vs the float64 single pair
    assert got[1] == 1.0 and got[2] == 0.0  # two flat images are the same picture; flat vs textured is not
    assert got[0] > 0.9 > got[3]

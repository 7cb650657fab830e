"""Cross-split leakage for every split pair, and the official-split rules, with exact verdicts.

Each case is a separate small data set so that one rule cannot mask another: a bug that stops
removing val->test leakage, or that ignores `keep_official_split_sources` for text, changes exactly
one verdict here.
"""

from __future__ import annotations

import pytest

from tests.unit.test_qc_checks import make_record, near_copy, phantom
from unimedvl.config import QCConfig
from unimedvl.data.shards import DatasetWriter, read_quarantine
from unimedvl.qc import run_qc

REPORT = ("FINDINGS: The cardiomediastinal silhouette is enlarged. There is a 2 cm spiculated nodule in the left "
          "lower lobe with adjacent pleural thickening. No pneumothorax. IMPRESSION: Suspicious left lower lobe nodule.")
# Padding records so that every split exists (the GE suite requires all three).
PADDING = ("pad-train", "train", 101), ("pad-val", "val", 102), ("pad-test", "test", 103)


def _run(tmp_path, records, **cfg):
    recs = [make_record(rid, split=split, images=[phantom(seed)]) for rid, split, seed in PADDING] + records
    src = tmp_path / "ingest"
    writer = DatasetWriter(src, step="ingest")
    for r in recs:
        writer.add(r.dataset, r)
    writer.close()
    metrics = run_qc(src, tmp_path / "out", QCConfig(**cfg), log_to_mlflow=False)
    verdicts = {q.id: q.reason for q in read_quarantine(tmp_path / "out")}
    return metrics, verdicts


@pytest.mark.parametrize(
    ("earlier", "later"),
    [("train", "val"), ("train", "test"), ("val", "test")],
)
@pytest.mark.parametrize("copy", ["exact", "near"])
def test_image_leakage_leaves_the_earlier_split(tmp_path, earlier, later, copy):
    image = phantom(7)
    leaked = image if copy == "exact" else near_copy(image)
    metrics, verdicts = _run(tmp_path, [
        make_record("kept", split=later, images=[image]),
        make_record("leaked", split=earlier, images=[leaked], answer="A second caption of that radiograph."),
    ])
    assert verdicts == {"leaked": "split_leakage"}
    assert metrics["dedup"]["split_leakage"] == {f"{earlier}->{later}": 1}
    # Three padding images plus the pair: one image if the copy is exact, two and one confirmed near pair if not.
    d = metrics["dedup"]
    assert (d["unique_images"], d["near_dup_pairs"]) == ((4, 0) if copy == "exact" else (5, 1)), d
    assert d["text_leakage"] == {}  # short captions: no report text to compare, still reported
    (detail,) = [q.detail for q in read_quarantine(tmp_path / "out")]
    assert detail.startswith("input image ") and f"removed from {earlier}" in detail, detail


def test_a_train_val_test_chain_keeps_only_test(tmp_path):
    image = phantom(8)
    _, verdicts = _run(tmp_path, [
        make_record("in-train", images=[near_copy(image)], answer="First caption of the radiograph."),
        make_record("in-val", split="val", images=[image], answer="Second caption of the radiograph."),
        make_record("in-test", split="test", images=[near_copy(image)], answer="Third caption of the radiograph."),
    ])
    assert verdicts == {"in-train": "split_leakage", "in-val": "split_leakage"}


@pytest.mark.parametrize("within_split", [False, True])
def test_within_split_near_pairs_are_confirmed_only_when_they_can_decide(tmp_path, within_split):
    image = phantom(11)
    metrics, verdicts = _run(tmp_path, [
        make_record("a-train", images=[image], answer="The same caption of the radiograph."),
        make_record("b-train", images=[near_copy(image)], answer="The same caption of the radiograph."),
        make_record("c-val", split="val", images=[near_copy(near_copy(image))], answer="Another caption here."),
    ], near_dup_within_split=within_split)
    d = metrics["dedup"]
    # cross-split leakage is decided the same way either way: both train records leave for val's copy
    assert verdicts == {"a-train": "split_leakage", "b-train": "split_leakage"}, verdicts
    # the train-train pair (and the padding's pairs) only matter to within-split deduplication
    if within_split:
        assert d["near_dup_checked"] == d["near_dup_candidates"], d
    else:
        assert d["near_dup_checked"] < d["near_dup_candidates"], d


def test_official_split_sources_keep_image_overlap_and_report_it(tmp_path):
    image = phantom(9)
    metrics, verdicts = _run(tmp_path, [
        make_record("bench-val", split="val", images=[image], dataset="bench"),
        make_record("bench-train", images=[near_copy(image)], dataset="bench", answer="Another caption here."),
        # the same overlap from a source without an official split is still removed
        make_record("other-train", images=[image], dataset="other", answer="Yet another caption here."),
    ], keep_official_split_sources=("bench",))
    assert verdicts == {"other-train": "split_leakage"}
    assert metrics["dedup"]["official_split_overlap"] == {"bench:train->val": 1}


@pytest.mark.parametrize(("earlier", "later"), [("train", "val"), ("train", "test"), ("val", "test")])
def test_text_leakage_for_every_split_pair(tmp_path, earlier, later):
    _, verdicts = _run(tmp_path, [
        make_record("t-later", split=later, sub="text_only", question="Write a report.", answer=REPORT,
                    modality="none", patient="p-1"),
        make_record("t-earlier", split=earlier, sub="text_only", question="Write a report.",
                    answer=REPORT.replace("2 cm", "2.0 cm"), modality="none", patient="p-2"),
    ])
    assert verdicts == {"t-earlier": "text_leakage"}


def test_text_leakage_official_split_exemption(tmp_path):
    records = [
        make_record("t-test", split="test", sub="text_only", question="Write a report.", answer=REPORT,
                    modality="none", patient="p-1", dataset="bench"),
        make_record("t-train", sub="text_only", question="Write a report.", answer=REPORT.replace("2 cm", "2.0 cm"),
                    modality="none", patient="p-2", dataset="bench"),
    ]
    metrics, verdicts = _run(tmp_path / "exempt", records, keep_official_split_sources=("bench",))
    assert verdicts == {}
    assert metrics["dedup"]["text_leakage"] == {"kept_official:bench": 1}
    _, verdicts = _run(tmp_path / "not-exempt", records)
    assert verdicts == {"t-train": "text_leakage"}


def test_near_pairs_confirm_only_what_a_decision_reads_and_answer_as_the_eager_search():
    import numpy as np

    from unimedvl.qc import dedup
    from unimedvl.qc.run import NearPairs

    base = phantom(21)
    # 0 the scan, 1 an unrelated scan, 2 and 3 near copies of 0; every pair with 0 is a hash candidate
    thumbs = [dedup.thumbnail(a) for a in (base, phantom(22), near_copy(base), near_copy(near_copy(base)))]
    cand = np.array([(0, 1), (0, 2), (0, 3)])
    near = NearPairs(thumbs, cand, min_corr=0.88, block=1)
    # the lowest-numbered confirmed neighbour: 1 is read and rejected, 2 accepted, 3 never computed
    assert near.first(0, lambda v: True) == 2
    assert near.stats() == {"near_dup_checked": 2, "near_dup_pairs": 1}
    assert near.first(0, lambda v: v == 3) == 3 and near.first(1, lambda v: True) is None
    assert near.first(0, lambda v: v == 1) is None  # a candidate that does not correlate is no neighbour
    # the eager answer over every candidate agrees; (2, 3) is no candidate, so no pair
    assert near.confirmed() == [{2, 3}, set(), {0}, {0}]
    assert near.stats() == {"near_dup_checked": 3, "near_dup_pairs": 2}
    eager = dedup.correlations(thumbs, cand)
    assert [bool(c >= 0.88) for c in eager] == [False, True, True]


def test_near_pairs_threshold_is_inclusive_and_a_block_is_confirmed_at_once():
    import numpy as np

    from unimedvl.qc import dedup
    from unimedvl.qc.run import NearPairs

    base = phantom(23)
    thumbs = [dedup.thumbnail(a) for a in (base, phantom(24), base.copy(), near_copy(base))]
    cand = np.array([(0, 1), (0, 2), (0, 3)])
    # a pixel copy correlates exactly 1.0: at min_corr 1.0 it is a neighbour (>=), the near copy is not
    exact = NearPairs(thumbs, cand, min_corr=1.0)
    assert exact.first(0, lambda v: True) == 2 and exact.is_near(0, 2) and not exact.is_near(0, 3)
    assert exact.stats() == {"near_dup_checked": 3, "near_dup_pairs": 1}
    # candidates are correlated a block at a time: two unrelated scans, then a block holding the copies,
    # both of whose pairs are computed though the first one decides
    thumbs = [dedup.thumbnail(a) for a in (base, phantom(24), phantom(25), near_copy(base), base.copy())]
    blocked = NearPairs(thumbs, np.array([(0, 1), (0, 2), (0, 3), (0, 4)]), min_corr=0.88, block=2)
    assert blocked.first(0, lambda v: True) == 3
    assert blocked.stats() == {"near_dup_checked": 4, "near_dup_pairs": 2}

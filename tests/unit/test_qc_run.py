"""`run_qc` end to end on a crafted data set: accounting, leakage, duplicates, suite failure, report."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from tests.unit.test_qc_checks import make_record, near_copy, phantom
from unimedvl.config import QCConfig
from unimedvl.data.shards import DatasetWriter, read_manifest, read_quarantine, read_table
from unimedvl.qc import run_qc
from unimedvl.qc.expectations import SuiteFailed

REPORT_R = ("FINDINGS: The cardiomediastinal silhouette is enlarged. There is a 2 cm spiculated nodule in the left "
            "lower lobe with adjacent pleural thickening. No pneumothorax. IMPRESSION: Suspicious left lower lobe nodule.")


def crafted(tmp_path, *, splits=("train", "val", "test")):
    recs = [
        make_record("good-train", images=[phantom(21)]),
        make_record("good-val", split="val", images=[phantom(25)]),
        make_record("test-x", split="test", images=[phantom(30)]),
        make_record("leak-near", images=[near_copy(phantom(30))], answer="Another caption of that radiograph."),
        make_record("val-v", split="val", images=[phantom(40)]),
        make_record("leak-exact", sub="vqa_open", images=[phantom(40)], question="Which organ?", answer="Lung"),
        make_record("test-cf", split="test", images=[phantom(31)]),
        make_record("cf-pair", sub="counterfactual", images=[phantom(50)], outputs=[near_copy(phantom(31))],
                    question="Show this image with the nodule removed.", answer="Here is the counterfactual image."),
        make_record("q1", sub="vqa_open", images=[phantom(60)], question="Which organ?", answer="Lung"),
        make_record("q2", sub="vqa_open", images=[phantom(60)], question="Which plane?", answer="Coronal"),
        make_record("q1-again", sub="vqa_open", images=[phantom(60)], question="Which organ?", answer="Lung"),
        make_record("other-same-modality", images=[phantom(61)]),
        make_record("blank", images=[phantom(62) * 0]),
        make_record("short-caption", images=[phantom(63)], answer="CXR."),
        make_record("txt-test", split="test", sub="text_only", question="Write a chest radiograph report.",
                    answer=REPORT_R, modality="none", patient="p-a"),
        make_record("txt-train", sub="text_only", question="Write a chest radiograph report.",
                    answer=REPORT_R.replace("2 cm", "2.0 cm"), modality="none", patient="p-b"),
        make_record("bench-test", split="test", images=[phantom(70)], dataset="bench"),
        make_record("bench-train", images=[near_copy(phantom(70))], dataset="bench"),
    ]
    recs = [r for r in recs if r.split in splits]
    src = tmp_path / "ingest"
    w = DatasetWriter(src, step="ingest")
    for r in recs:
        w.add(r.dataset, r)
    w.close()
    return src


@pytest.fixture(scope="module")
def qc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qc")
    src = crafted(tmp)
    cfg = QCConfig(keep_official_split_sources=("bench",))
    metrics = run_qc(src, tmp / "out", cfg, log_to_mlflow=False)
    verdicts = {q.id: q.reason for q in read_quarantine(tmp / "out")}
    return tmp, metrics, verdicts


def test_accounting_invariant(qc):
    tmp, metrics, verdicts = qc
    m = read_manifest(tmp / "out")
    assert m["step"] == "qc" and m["accepted"] + m["quarantined"] == m["seen"] == 18
    for counts in m["by_source"].values():
        assert counts["accepted"] + counts["quarantined"] == counts["seen"]
    assert read_table(tmp / "out").num_rows == m["accepted"] and len(verdicts) == m["quarantined"]
    assert json.loads((tmp / "out" / "metrics.json").read_text())["seen"] == 18
    assert all(q.step == "qc" for q in read_quarantine(tmp / "out"))


def test_leakage_removed_from_train_never_from_test(qc):
    _, metrics, verdicts = qc
    assert verdicts["leak-near"] == "split_leakage"  # resized + shifted + JPEG copy of a test image
    assert verdicts["leak-exact"] == "split_leakage"  # the very pixels of a val image
    for kept in ("test-x", "test-cf", "val-v", "txt-test", "bench-test"):
        assert kept not in verdicts
    assert "other-same-modality" not in verdicts and "good-train" not in verdicts
    assert metrics["dedup"]["split_leakage"] == {"train->test": 2, "train->val": 1}


def test_counterfactual_pair_leaves_as_a_whole(qc):
    tmp, _, verdicts = qc
    assert verdicts["cf-pair"] == "split_leakage"
    import pyarrow.parquet as pq

    rows = {r["id"]: r for r in pq.read_table(tmp / "out" / "quarantine" / "part-00000.parquet").to_pylist()}
    assert len(rows["cf-pair"]["input_img"]) == 1 and len(rows["cf-pair"]["output_img"]) == 1
    assert "output image" in rows["cf-pair"]["qc_detail"]


def test_duplicates_are_same_image_task_and_text(qc):
    _, metrics, verdicts = qc
    assert verdicts["q1-again"] == "duplicate_record"
    assert "q1" not in verdicts and "q2" not in verdicts  # two questions about one image are not duplicates


def test_checks_ge_text_leakage_and_official_split(qc):
    _, metrics, verdicts = qc
    assert verdicts["blank"] == "blank_image"
    assert verdicts["short-caption"] == "caption_length"  # from GE's unexpected index list
    assert verdicts["txt-train"] == "text_leakage"
    assert "bench-train" not in verdicts and metrics["dedup"]["official_split_overlap"] == {"bench:train->test": 1}


def test_report_and_rejected_rows(qc):
    tmp, _, _ = qc
    report = tmp / "out" / "report"
    page = (report / "index.html").read_text()
    for fig in ("counts_by_reason.png", "counts_by_modality.png", "counts_by_source.png", "counts_by_split.png",
                "hist_image_size.png", "hist_text_length.png"):
        assert (report / fig).stat().st_size > 1000 and fig in page
    assert "thumbs/split_leakage-0-0.png" in page and (report / "thumbs" / "split_leakage-0-0.png").exists()
    assert "expect_column_values_to_be_between" in page and (report / "ge_validation.json").exists()


def test_suite_failure_stops_the_step(tmp_path):
    src = crafted(tmp_path, splits=("train", "val"))
    with pytest.raises(SuiteFailed, match=r"\['test'\] are missing entirely"):
        run_qc(src, tmp_path / "out", QCConfig(), log_to_mlflow=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    from unimedvl.cli import app

    result = CliRunner().invoke(app, ["qc", "--input", str(src), "--output", str(tmp_path / "o2"), "--no-mlflow",
                                      "--report", str(tmp_path / "r"), "--metrics", str(tmp_path / "m.json"),
                                      "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1 and "missing entirely" in result.output


def test_alignment_hook(tmp_path):
    src = crafted(tmp_path)

    class ByLength:
        def score(self, records):
            return [float(len(r.message[-1].value)) if r.input_img else math.nan for r in records]

    cfg = QCConfig(alignment={"keep_top_fraction": 0.5}, required_splits=())
    m = run_qc(src, tmp_path / "out", cfg, scorer=ByLength(), log_to_mlflow=False)
    # 9 image records pass every other check; the top half (ceil(4.5) = 5) is kept: the two short answers
    # and, of the five tied at the cut, the two that come after the quota is used up.
    assert m["alignment"] == {"scored": 9, "cut": 48.0, "dropped": 4}
    verdicts = {q.id: q.reason for q in read_quarantine(tmp_path / "out")}
    low = {rid for rid, reason in verdicts.items() if reason == "low_alignment"}
    assert low == {"q1", "q2", "other-same-modality", "bench-test"}
    assert "txt-test" not in verdicts  # text-only: not judged

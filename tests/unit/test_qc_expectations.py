"""The Great Expectations suite: each row-level expectation fires on a deliberately broken copy of the
data (and only on the broken rows), and a suite-level failure is reported as such."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tests.unit.test_qc_checks import make_record, phantom
from unimedvl.config import QCConfig
from unimedvl.qc.checks import check_batch
from unimedvl.qc.expectations import expectation_specs, metadata_frame, validate

CFG = QCConfig()


def good_rows() -> list[dict]:
    img = phantom(1)
    recs = [make_record(f"ok-{s}", split=s, images=[img]) for s in ("train", "val", "test")]
    recs.append(make_record("ok-vqa", sub="vqa_open", images=[img], question="Which organ?", answer="Lung"))
    return [r.to_row() for r in recs]


def broken_rows() -> dict[str, tuple[dict, str]]:
    """key -> (row, the reason GE must give it). Each row is broken in exactly one way."""
    img = phantom(2)
    out: dict[str, tuple[dict, str]] = {}

    def add(key, reason, **changes):
        row = make_record(key, images=[img]).to_row()
        row.update(changes)
        out[key] = (row, reason)

    add("no-license", "missing_field", license="")
    add("bad-modality", "invalid_value", modality="xray-ish")
    add("bad-split", "invalid_value", split="holdout")
    add("bad-pair", "invalid_value", main_task_type="generation")  # caption is not a generation task
    add("bad-lang", "invalid_value", lang="English")
    add("two-humans", "malformed_turns", message=[{"from": "human", "value": "<image>\nHi"}, {"from": "human", "value": "again"}])
    add("gpt-first", "malformed_turns", message=[{"from": "gpt", "value": "<image>\nHi"}, {"from": "human", "value": "x"}])
    add("no-placeholder", "placeholder_mismatch",
        message=[{"from": "human", "value": "Caption this."}, {"from": "gpt", "value": "A chest radiograph."}])
    small = make_record("small", images=[phantom(3, size=24)]).to_row()
    out["small"] = (small, "image_too_small")
    big = make_record("big", images=[img]).to_row()
    big["input_img"] = [{**big["input_img"][0], "height": 5000}]
    out["big"] = (big, "image_too_big")
    vqa = make_record("empty-answer", sub="vqa_open", images=[img], question="Which organ?", answer=" ").to_row()
    out["empty-answer"] = (vqa, "empty_answer")
    add("short-caption", "caption_length", message=[{"from": "human", "value": "<image>\nCaption."}, {"from": "gpt", "value": "CXR."}])
    add("long-caption", "caption_length",
        message=[{"from": "human", "value": "<image>\nCaption."}, {"from": "gpt", "value": "word " * 300}])
    dup = make_record("ok-train", images=[img]).to_row()  # same id as a good row
    out["dup-id"] = (dup, "duplicate_id")
    return out


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    broken = broken_rows()
    rows = good_rows() + [r for r, _ in broken.values()]
    table = check_batch(pa.Table.from_pylist(rows), CFG)
    path = tmp_path_factory.mktemp("ge") / "ge.json"
    return validate(metadata_frame(table), CFG, path), broken, path


def test_every_row_expectation_fires_on_exactly_the_broken_rows(outcome):
    ge, broken, _ = outcome
    want = {row["id"]: reason for row, reason in broken.values()}
    want["ok-train"] = "duplicate_id"  # GE lists both rows of a duplicated id
    assert {k: v[0] for k, v in ge.row_failures.items()} == want
    assert not ge.suite_failures


def test_each_row_expectation_has_a_reason_and_fired(outcome):
    ge, _, path = outcome
    reasons_fired = {e["reason"] for e in ge.per_expectation if not e["success"]}
    reasons_declared = {m["reason"] for _, _, m in expectation_specs(CFG) if "reason" in m}
    assert reasons_declared <= reasons_fired
    saved = json.loads(path.read_text())
    assert saved["success"] is False and len(saved["results"]) == len(expectation_specs(CFG))
    assert any(r["result"].get("unexpected_index_list") for r in saved["results"])


def test_missing_split_is_a_suite_failure(tmp_path):
    rows = [r for r in good_rows() if r["split"] != "test"]
    ge = validate(metadata_frame(check_batch(pa.Table.from_pylist(rows), CFG)), CFG)
    assert ge.row_failures == {}
    assert len(ge.suite_failures) == 1 and "['test']" in ge.suite_failures[0] and "missing entirely" in ge.suite_failures[0]

"""OmniMedVQA and GMAI-MMBench in their published layouts (tests/fixtures_public.py builds both, with
a planted bad item per case; test_sources_public.py checks their accounting beside the other
sources): the records carry the choices and the correct letter, QC keeps them, and evaluate's
option-letter rule scores a correct and an all-"A" answerer exactly on them."""

from __future__ import annotations

import base64
import io
import json
import sys
import tracemalloc
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fixtures_public as fx  # noqa: E402

from unimedvl.config import IngestConfig, QCConfig, SourceSpec  # noqa: E402
from unimedvl.data.ingest import ingest  # noqa: E402
from unimedvl.data.privacy import Keyed  # noqa: E402
from unimedvl.data.schema import Quarantine, Record  # noqa: E402
from unimedvl.data.shards import read_manifest, read_quarantine, read_table  # noqa: E402
from unimedvl.data.sources import get_source  # noqa: E402
from unimedvl.data.sources.base import Context  # noqa: E402
from unimedvl.evaluate import understanding as U  # noqa: E402
from unimedvl.evaluate.run import _labels, _turns  # noqa: E402

KEY = b"bench-key"
NAMES = ("omnimedvqa", "gmai_mmbench")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    data = {}
    for name in NAMES:
        root = tmp / "in" / name
        root.mkdir(parents=True)
        data[name] = (root, fx.BUILDERS[name](root, tmp))
    out = tmp / "ingest"
    manifest = ingest([SourceSpec(name=n, input=str(r)) for n, (r, _) in data.items()], out, IngestConfig(),
                      key=KEY, console=Console(file=io.StringIO())).manifest
    rows = read_table(out).to_pylist()
    by_key = {}
    for name, (_, expected) in data.items():
        ids = {Keyed(KEY).record_id(name, k): k for k in expected["letters"]}
        by_key[name] = {ids[r["id"]]: r for r in rows if r["id"] in ids}
    return {"tmp": tmp, "data": data, "out": out, "manifest": manifest, "rows": rows, "by_key": by_key}


def _read(name: str, root: Path, **cfg) -> tuple[list[Record], list[Quarantine]]:
    items = list(get_source(name).read(root, Context(source=name, keyed=Keyed(KEY), cfg=IngestConfig(**cfg))))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Quarantine)]


# --- records ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_good_item_is_a_record_with_its_letter_and_choices(bench, name):
    letters = bench["data"][name][1]["letters"]
    rows = bench["by_key"][name]
    assert set(rows) == set(letters)  # each good item became exactly its record
    for key, row in rows.items():
        labels = _labels(row)
        question, answer = _turns(row)
        choices = {k[-1]: v for k, v in labels.items() if k.startswith("choice_")}
        assert row["sub_task_type"] == "vqa_closed" and row["dataset"] == name
        assert labels["answer_label"] == letters[key]
        assert answer == f"{letters[key]}: {choices[letters[key]]}"
        lines = question.split("\n")
        assert lines[0] == "<image>" and "Choices:" in lines
        listed = lines[lines.index("Choices:") + 1:-1]
        assert listed == [f"{k}: {v}" for k, v in choices.items()] and len(listed) >= 2


def test_omnimedvqa_is_test_only_and_keeps_its_modality(bench):
    rows = bench["by_key"]["omnimedvqa"]
    assert {r["split"] for r in rows.values()} == {"test"}
    for key, mod in bench["data"]["omnimedvqa"][1]["modalities"].items():
        assert rows[key]["modality"] == mod, key  # `modality` read where `modality_type` is missing (CT)
    assert _labels(rows["AIDA_0000"])["access"] == "restricted-access"
    assert _labels(rows["ACRIMA_0000"])["question_type"] == "Modality Recognition"
    # "Glaucoma." is the option "glaucoma": matched ignoring case and the final full stop
    assert _turns(rows["ACRIMA_0002"])[1] == "C: glaucoma"


def test_gmai_mmbench_split_column_file_name_and_shared_images(bench):
    rows = bench["by_key"]["gmai_mmbench"]
    assert {k: r["split"] for k, r in rows.items()} == {k: k.split("/")[0] for k in rows}
    for key, mod in bench["data"]["gmai_mmbench"][1]["modalities"].items():
        assert rows[key]["modality"] == mod, key
    img = {k: r["input_img"][0]["bytes"] for k, r in rows.items()}
    assert img["val/2"] == img["val/1"]  # `image` = "1": row 1's image
    assert img["val/3"] == img["val/14"]  # a reference to a later row, resolved at the end of the file
    assert img["val/1"] != img["val/5"]
    labels = _labels(rows["val/1"])
    assert labels["clinical_vqa_task"] == "Disease Diagnosis" and labels["perceptual_granularity"] == "Image Level"
    assert _turns(rows["val/5"])[1] == "C: Lower"  # answer "c"


def test_question_text_is_deidentified(bench):
    for name in NAMES:
        for row in bench["rows"]:
            text = json.dumps([row["message"], row["labels"], row["source_uri"]])
            assert "Quentin" not in text and "Marsh" not in text
    assert "text:name" in bench["by_key"]["omnimedvqa"]["ACRIMA_0002"]["phi_removed"]
    assert "text:name" in bench["by_key"]["gmai_mmbench"]["val/5"]["phi_removed"]


def test_quarantine_accounts_for_every_bad_item(bench):
    m = read_manifest(bench["out"])
    q = read_quarantine(bench["out"])
    for name in NAMES:
        counts = m["by_source"][name]
        expected = bench["data"][name][1]
        assert counts["seen"] == expected["seen"] and counts["accepted"] == len(expected["letters"])
        assert counts["accepted"] + counts["quarantined"] == counts["seen"]
        assert sum(1 for x in q if x.source == name) == counts["quarantined"]


# --- evaluation ------------------------------------------------------------------------------------


def _accuracy(rows: list[dict], answer) -> float:
    ok = []
    for r in rows:
        question, reference = _turns(r)
        assert U.is_closed(question, reference)
        ok.append(U.closed_correct(answer(r, question), reference, question))
    return sum(ok) / len(ok)


@pytest.mark.parametrize("name", NAMES)
def test_option_letter_scoring_of_a_correct_and_an_all_a_answerer(bench, name):
    letters = bench["data"][name][1]["letters"]
    rows = list(bench["by_key"][name].values())
    # the truth comes from the fixture, not from the records being scored
    truth = {r["id"]: letters[k] for k, r in bench["by_key"][name].items()}
    assert _accuracy(rows, lambda r, q: truth[r["id"]]) == 1.0  # the bare letter
    assert _accuracy(rows, lambda r, q: f"({truth[r['id']]})") == 1.0
    chosen = {r["id"]: _labels(r)[f"choice_{truth[r['id']]}"] for r in rows}
    assert _accuracy(rows, lambda r, q: chosen[r["id"]]) == 1.0  # the choice's text, no letter
    expected_a = sum(v == "A" for v in letters.values()) / len(letters)
    assert 0 < expected_a < 1
    assert _accuracy(rows, lambda r, q: "A") == pytest.approx(expected_a)
    wrong = {r["id"]: next(k for k in U.options(_turns(r)[0]) if k != truth[r["id"]]) for r in rows}
    assert _accuracy(rows, lambda r, q: wrong[r["id"]]) == 0.0
    assert _accuracy(rows, lambda r, q: "I cannot tell") == 0.0


def test_qc_checks_pass_the_benchmark_records(bench):
    """Lean twin of the full QC run below: every row-level check, then duplicates and leakage."""
    from unimedvl.qc.run import find_leakage_and_duplicates, map_local, shard_paths

    cfg = QCConfig(keep_official_split_sources=NAMES)
    res = map_local(shard_paths(bench["out"]), cfg).to_pydict()
    assert len(res["_key"]) == len(bench["rows"])
    assert [(r, d) for r, d in zip(res["check_reason"], res["check_detail"], strict=True) if r] == []
    decided: dict = {}
    find_leakage_and_duplicates(res, decided, cfg)
    assert decided == {}


@pytest.mark.slow  # ~7 s: Great Expectations and the HTML report
def test_qc_keeps_the_benchmark_records(bench):
    from unimedvl.qc import run_qc

    cfg = QCConfig(required_splits=("val", "test"), keep_official_split_sources=NAMES)
    run_qc(bench["out"], bench["tmp"] / "qc", cfg, log_to_mlflow=False)
    m = read_manifest(bench["tmp"] / "qc")
    assert m["accepted"] + m["quarantined"] == m["seen"] == len(bench["rows"])
    assert [(q.id, q.reason, q.detail) for q in read_quarantine(bench["tmp"] / "qc")] == []
    assert m["by_split"] == {"test": 6, "val": 5}


# --- layouts and hostile files ---------------------------------------------------------------------


def _omni_item(qid: str, image: str = "Images/D/a.png") -> dict:
    return {"question_id": qid, "question": "Which?", "gt_answer": "x", "option_A": "x", "option_B": "y",
            "image_path": image, "modality_type": "X-Ray", "question_type": "Modality Recognition", "dataset": "D"}


@pytest.mark.parametrize("folder", ["QA_information", "QA information", "OmniMedVQA/QA_information"])
def test_omnimedvqa_folder_spellings_and_a_broken_file(tmp_path, folder):
    base = tmp_path / folder.rsplit("/", 1)[0] if "/" in folder else tmp_path
    fx.write_image(base / "Images/D/a.png", 1, size=fx.BENCH_SIZE)
    fx.write(tmp_path / folder / "Open-access/D.json", json.dumps([_omni_item("D_0"), _omni_item("D_1")]))
    fx.write(tmp_path / folder / "Open-access/Broken.json", '[{"question": "unterminated')
    records, bad = _read("omnimedvqa", tmp_path)
    assert len(records) == 2 and {r.modality for r in records} == {"xray"}
    assert [q.reason for q in bad] == ["malformed_json"]


def test_gmai_row_over_the_size_cap_is_skipped_not_held(tmp_path):
    cap = 64 << 10  # max_decoded_bytes: a row may be 4/3 of it plus 1 MiB
    huge = "A" * (32 << 20)
    fx.write(tmp_path / "GMAI-MMBench_VAL.tsv", fx.tsv([
        fx.gmai_row(1, "Huge row?", ["x", "y"], "A", huge),
        fx.gmai_row(2, "After it?", ["x", "y"], "B", fx.b64_image(3)),
    ]))
    del huge
    tracemalloc.start()
    try:
        records, bad = _read("gmai_mmbench", tmp_path, max_decoded_bytes=cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [q.reason for q in bad] == ["oversized"] and [r.message[1].value for r in records] == ["B: y"]
    assert peak < 8 << 20, f"peak {peak:,} bytes: the 32 MiB row was held in memory"


def test_gmai_quoted_newline_and_a_runaway_quote(tmp_path):
    rows = [fx.gmai_row(1, '"Line one\nline two?"', ["x", "y"], "A", fx.b64_image(4)),
            fx.gmai_row(2, '"Runaway', ["x", "y"], "A", fx.b64_image(5)),
            fx.gmai_row(3, "Fine?", ["x", "y"], "B", fx.b64_image(6))]
    data = fx.tsv(rows)
    fx.write(tmp_path / "GMAI-MMBench_VAL.tsv", data)
    records, bad = _read("gmai_mmbench", tmp_path)
    assert [r.message[0].value.split("\n")[1:3] for r in records][0] == ["Line one", "line two?"]
    assert [q.reason for q in bad] == ["malformed_csv"]  # rows 2-3 run into each other: one line, not a merge
    assert len(records) == 1


def test_gmai_invalid_split_value_and_multi_image_cell(tmp_path):
    img = fx.b64_image(7)
    fx.write(tmp_path / "GMAI-MMBench_VAL.tsv", fx.tsv([
        fx.gmai_row(1, "Which split?", ["x", "y"], "A", img, split="HOLDOUT"),
        fx.gmai_row(2, "Two images?", ["x", "y"], "A", json.dumps([img, img])),
        fx.gmai_row(3, "Fine?", ["x", "y"], "A", img),
    ]))
    records, bad = _read("gmai_mmbench", tmp_path)
    assert [(q.reason, "split" in q.detail or "list" in q.detail) for q in bad] == [("invalid_value", True)] * 2
    assert [r.split for r in records] == ["val"]
    assert base64.b64decode(img)  # the fixture's image is real base64


def test_gmai_reads_only_gmai_tsvs_of_an_lmudata_folder(tmp_path):
    rows = [fx.gmai_row(1, "Which?", ["x", "y"], "A", fx.b64_image(8))]
    fx.write(tmp_path / "GMAI-MMBench_VAL.tsv", fx.tsv(rows))
    fx.write(tmp_path / "GMAI-MMBench_VAL_local.tsv", fx.tsv(rows))  # VLMEvalKit's localised copy
    fx.write(tmp_path / "MMBench_DEV_EN.tsv", fx.tsv([fx.gmai_row(7, "Other benchmark?", ["x", "y"], "A", "")]))
    records, bad = _read("gmai_mmbench", tmp_path)
    assert len(records) == 1 and bad == []

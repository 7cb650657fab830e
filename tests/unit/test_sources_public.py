"""Public-dataset adapters on tiny copies of each dataset's real layout (see tests/fixtures_public.py).

One ingest of all nine sources (twice, for determinism) backs most tests; each planted bad item must
come out as exactly one quarantine line with its reason, and every good item as a record.
"""

from __future__ import annotations

import io
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fixtures_public as fx  # noqa: E402

from unimedvl.config import IngestConfig, SourceSpec  # noqa: E402
from unimedvl.data import images  # noqa: E402
from unimedvl.data.ingest import ingest  # noqa: E402
from unimedvl.data.privacy import Keyed  # noqa: E402
from unimedvl.data.schema import IMAGE_TOKEN, Quarantine, Record  # noqa: E402
from unimedvl.data.shards import read_manifest, read_quarantine, read_table  # noqa: E402
from unimedvl.data.sources import get_source  # noqa: E402
from unimedvl.data.sources.base import Context  # noqa: E402

KEY = b"test-key"
NAMES = list(fx.BUILDERS)
DATASET: dict[str, str] = {}  # free-text dataset names ("demo_set") become the source's slug (vocab.dataset_slug)


def _ingest(specs: list[SourceSpec], out: Path) -> dict:
    return ingest(specs, out, IngestConfig(), key=KEY, console=Console(file=io.StringIO())).manifest


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("public")
    data = fx.build_all(tmp / "in")
    specs = [SourceSpec(name=name, input=str(root)) for name, (root, _) in data.items()]
    out1, out2 = tmp / "out1", tmp / "out2"
    manifest = _ingest(specs, out1)
    _ingest(specs, out2)
    rows = read_table(out1).to_pylist()
    return {"data": data, "out": out1, "out2": out2, "manifest": manifest, "rows": rows,
            "quarantine": read_quarantine(out1)}


def rows_of(run, name: str) -> list[dict]:
    return [r for r in run["rows"] if r["dataset"] == DATASET.get(name, name)]


def record_id(name: str, source_id: str) -> str:
    return Keyed(KEY).record_id(name, source_id)


# --- accounting --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_item_is_a_record_or_a_quarantine_line(run, name):
    expected = run["data"][name][1]
    counts = run["manifest"]["by_source"][name]
    assert counts["seen"] == expected["seen"]
    assert counts["accepted"] + counts["quarantined"] == counts["seen"]
    assert counts["accepted"] == len(rows_of(run, name))


@pytest.mark.parametrize("name", NAMES)
def test_counts_per_task_and_split(run, name):
    expected = run["data"][name][1]
    rows = rows_of(run, name)
    assert Counter(r["sub_task_type"] for r in rows) == Counter(expected["by_task"])
    if expected["by_split"]:
        splits = Counter(r["split"] for r in rows)
        for split, n in expected["by_split"].items():
            assert splits[split] == n, (split, splits)
        if sum(expected["by_split"].values()) == len(rows):
            assert splits == Counter(expected["by_split"])
    if "by_modality" in expected:
        assert Counter(r["modality"] for r in rows) == Counter(expected["by_modality"])


@pytest.mark.parametrize("name", NAMES)
def test_planted_bad_items_get_their_exact_reason(run, name):
    expected = run["data"][name][1]
    got = Counter(q.reason for q in run["quarantine"] if q.source == name)
    assert got == expected["reasons"]
    for q in run["quarantine"]:
        assert q.detail and q.item


def test_manifest_totals_match_the_shards(run):
    m = run["manifest"]
    assert m["accepted"] == len(run["rows"])
    assert m["quarantined"] == len(run["quarantine"])
    assert m["accepted"] + m["quarantined"] == m["seen"]
    assert read_manifest(run["out"])["shards"] == m["shards"]


def test_every_record_is_well_formed(run):
    for row in run["rows"]:
        rec = Record.from_row(row)
        assert rec.problems() == []
        assert [t.role for t in rec.message] == ["human", "gpt"]
        for img in rec.input_img + rec.output_img:
            arr = images.decode_image(img.png)
            assert arr.shape[:2] == (img.height, img.width)
        if rec.input_img:
            assert rec.message[0].value.startswith(IMAGE_TOKEN + "\n")


# --- per dataset -----------------------------------------------------------------------------------


def test_slake_keeps_its_split_and_chinese_questions(run):
    rows = rows_of(run, "slake")
    zh = [r for r in rows if r["lang"] == "zh"]
    assert len(zh) == 2
    assert {r["split"] for r in zh} == {"train", "val"}
    assert any("器官" in r["message"][0]["value"] for r in zh)
    assert Counter(r["lang"] for r in rows) == Counter(run["data"]["slake"][1]["by_lang"])
    by_id = {r["id"]: r for r in rows}
    assert by_id[record_id("slake", "train/1")]["split"] == "train"
    assert by_id[record_id("slake", "val/6")]["split"] == "val"
    assert by_id[record_id("slake", "test/10")]["split"] == "test"
    labels = json.loads(by_id[record_id("slake", "train/1")]["labels"])
    assert labels == {"answer": "Yes", "answer_type": "CLOSED", "location": "Lung", "content_type": "Organ"}
    assert by_id[record_id("slake", "train/1")]["sub_task_type"] == "vqa_closed"
    # questions on one image share one pseudonym
    assert by_id[record_id("slake", "train/1")]["patient_key"] == by_id[record_id("slake", "train/2")]["patient_key"]


def test_vqa_rad_split_and_inferred_modality(run):
    by_id = {r["id"]: r for r in rows_of(run, "vqa_rad")}
    assert by_id[record_id("vqa_rad", "3")]["split"] == "test"
    assert by_id[record_id("vqa_rad", "4")]["split"] == "test"
    for qid in ("1", "2", "5"):
        assert by_id[record_id("vqa_rad", qid)]["split"] in ("train", "val")
    assert by_id[record_id("vqa_rad", "1")]["modality"] == "mri"
    assert by_id[record_id("vqa_rad", "2")]["modality"] == "mri"  # same image as qid 1
    assert by_id[record_id("vqa_rad", "3")]["modality"] == "ct"
    assert by_id[record_id("vqa_rad", "5")]["modality"] == "other"
    assert by_id[record_id("vqa_rad", "5")]["message"][1]["value"] == "2"  # numeric answer kept as text


def test_path_vqa_groups_questions_by_image(run):
    rows = rows_of(run, "path_vqa")
    by_id = {r["id"]: r for r in rows}
    a1 = by_id[record_id("path_vqa", "data/train-00000-of-00001.parquet#0")]
    a2 = by_id[record_id("path_vqa", "data/train-00000-of-00001.parquet#1")]
    b = by_id[record_id("path_vqa", "data/train-00000-of-00001.parquet#2")]
    assert a1["patient_key"] == a2["patient_key"] != b["patient_key"]
    assert a1["sub_task_type"] == "vqa_closed" and a2["sub_task_type"] == "vqa_open"
    assert {r["modality"] for r in rows} == {"histology"}


def test_pmc_vqa_lists_the_choices(run):
    by_id = {r["id"]: r for r in rows_of(run, "pmc_vqa")}
    r = by_id[record_id("pmc_vqa", "train.csv:2")]
    human, gpt = r["message"][0]["value"], r["message"][1]["value"]
    assert "A: MRI\nB: CT scan\nC: X-ray\nD: Ultrasound" in human
    assert gpt == "B: CT scan"
    assert r["modality"] == "ct"
    r = by_id[record_id("pmc_vqa", "train.csv:3")]
    assert "What does the arrow show, on the left?" in r["message"][0]["value"]
    assert r["message"][1]["value"] == "A: A mass"
    assert by_id[record_id("pmc_vqa", "test.csv:2")]["split"] == "test"
    assert by_id[record_id("pmc_vqa", "test.csv:2")]["modality"] == "xray"


def test_iu_xray_one_placeholder_per_view(run):
    rows = rows_of(run, "iu_xray")
    assert sorted(len(r["input_img"]) for r in rows) == run["data"]["iu_xray"][1]["images_per_record"]
    for r in rows:
        assert r["message"][0]["value"].count(IMAGE_TOKEN) == len(r["input_img"])
        assert r["modality"] == "xray"
    by_id = {r["id"]: r for r in rows}
    assert by_id[record_id("iu_xray", "CXR3_IM-0003")]["split"] == "val"
    assert by_id[record_id("iu_xray", "CXR1_IM-0001")]["message"][1]["value"].startswith("the heart is normal")


def test_mimic_cxr_reports_views_and_text_only(run):
    rows = rows_of(run, "mimic_cxr")
    by_id = {r["id"]: r for r in rows}
    for source_id, split in run["data"]["mimic_cxr"][1]["known_splits"].items():
        assert by_id[record_id("mimic_cxr", source_id)]["split"] == split
    study = by_id[record_id("mimic_cxr", "10000001/50000001")]
    assert study["sub_task_type"] == "report" and len(study["input_img"]) == 2
    assert json.loads(study["labels"]) == {"views": ["PA", "AP"]}  # frontal first, lateral dropped (cap 2)
    assert study["message"][1]["value"].startswith("FINDINGS: The lungs are clear")
    assert "IMPRESSION: No acute cardiopulmonary process." in study["message"][1]["value"]
    assert "___" in study["message"][0]["value"]  # MIMIC's placeholders are kept
    text = by_id[record_id("mimic_cxr", "10000001/50000002")]
    assert text["sub_task_type"] == "text_only" and text["modality"] == "none" and text["input_img"] == []
    assert text["main_task_type"] == "text_only"
    for r in rows:  # subject and study numbers never reach a stored path
        paths = [r["source_uri"]] + [i["path"] for i in r["input_img"]]
        assert not any("10000001" in p or "50000001" in p for p in paths), paths
    for q in run["quarantine"]:
        if q.source == "mimic_cxr":
            assert "p-" in q.item  # the numbered folders are keyed pseudonyms
            assert not any(n in q.item + q.detail for n in ("10000003", "50000004", "50000005", "50000006")), q


def test_roco_official_layout(run):
    rows = rows_of(run, "roco")
    by_id = {r["id"]: r for r in rows}
    r1 = by_id[record_id("roco", "ROCO_00001")]
    assert r1["license"] == "CC-BY-4.0" and r1["split"] == "train" and r1["modality"] == "ct"
    assert r1["message"][1]["value"].startswith("CT scan of the chest")
    assert by_id[record_id("roco", "ROCO_00002")]["modality"] == "mri"
    assert by_id[record_id("roco", "ROCO_00007")]["split"] == "val"
    assert json.loads(by_id[record_id("roco", "ROCO_00008")]["labels"])["category"] == "non-radiology"


def test_imagefolder_tasks(run):
    rows = rows_of(run, "imagefolder")
    t2i = [r for r in rows if r["sub_task_type"] == "t2i"]
    assert len(t2i) == 1 and t2i[0]["input_img"] == [] and len(t2i[0]["output_img"]) == 1
    assert t2i[0]["main_task_type"] == "generation" and t2i[0]["modality"] == "ct"
    vqa = [r for r in rows if r["sub_task_type"] == "vqa_closed"]
    assert vqa[0]["message"][0]["value"] == f"{IMAGE_TOKEN}\nIs there an effusion?"
    assert vqa[0]["modality"] == "xray" and vqa[0]["split"] == "train"
    report = [r for r in rows if r["sub_task_type"] == "report"]
    assert report[0]["modality"] == "mri"


def test_unimedvl_jsonl_keeps_the_schema(run):
    rows = rows_of(run, "unimedvl_jsonl")
    by_id = {r["id"]: r for r in rows}
    assert by_id[record_id("unimedvl_jsonl", "r1")]["split"] == "train"
    r2 = by_id[record_id("unimedvl_jsonl", "r2")]
    assert r2["split"] == "val" and r2["modality"] == "xray" and len(r2["output_img"]) == 1
    assert by_id[record_id("unimedvl_jsonl", "r4")]["split"] == "test"
    assert by_id[record_id("unimedvl_jsonl", "r3")]["main_task_type"] == "text_only"
    assert all(r["dataset"] == "unimedvl_jsonl" for r in rows)  # "demo_set" is not a known slug


# --- splits, determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mimic_cxr", "imagefolder", "unimedvl_jsonl", "iu_xray", "pmc_vqa"])
def test_no_patient_in_two_splits(run, name):
    splits = defaultdict(set)
    for r in rows_of(run, name):
        splits[r["patient_key"]].add(r["split"])
    assert splits
    assert all(len(s) == 1 for s in splits.values()), {k: v for k, v in splits.items() if len(v) > 1}


def test_split_by_patient_uses_more_than_one_split(run):
    # 12 MIMIC subjects without a split-CSV row are split by subject: not all into one split
    assert len({r["split"] for r in rows_of(run, "mimic_cxr")}) > 1


def test_ingest_is_deterministic(run):
    m1, m2 = read_manifest(run["out"]), read_manifest(run["out2"])
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    assert m1["by_source"] == m2["by_source"]
    assert [r["id"] for r in run["rows"]] == read_table(run["out2"], columns=["id"]).column("id").to_pylist()
    assert (run["out"] / "quarantine.jsonl").read_bytes() == (run["out2"] / "quarantine.jsonl").read_bytes()
    assert len({r["id"] for r in run["rows"]}) == len(run["rows"])


# --- smaller runs ----------------------------------------------------------------------------------


def test_each_image_is_decoded_once(tmp_path, monkeypatch):
    fx.build_slake(tmp_path / "slake")
    calls = Counter()
    real = images.load_image_file

    def counting(root, rel, max_side=0):
        calls[rel] += 1
        return real(root, rel, max_side)

    monkeypatch.setattr(images, "load_image_file", counting)
    _ingest([SourceSpec(name="slake", input=str(tmp_path / "slake"))], tmp_path / "out")
    assert calls["imgs/xmlab0/source.jpg"] == 1  # two questions share it
    assert calls["imgs/xmlab2/source.jpg"] == 1
    assert max(calls.values()) == 1


def test_roco_flat_layout(tmp_path):
    expected = fx.build_roco_flat(tmp_path / "roco")
    m = _ingest([SourceSpec(name="roco", input=str(tmp_path / "roco"))], tmp_path / "out")
    assert m["by_source"]["roco"] == {"seen": 2, "accepted": 2, "quarantined": 0}
    assert m["by_task"] == expected["by_task"]
    assert m["by_modality"] == {"xray": 1, "other": 1}


def test_non_utf8_csv_rows_are_quarantined(tmp_path):
    expected = fx.build_imagefolder_latin1(tmp_path / "folder")
    m = _ingest([SourceSpec(name="imagefolder", input=str(tmp_path / "folder"))], tmp_path / "out")
    assert m["by_source"]["imagefolder"]["seen"] == expected["seen"]
    assert m["quarantine_reasons"] == dict(expected["reasons"])
    assert m["by_task"] == expected["by_task"]


def _read(name: str, root: Path) -> list:
    ctx = Context(source=name, keyed=Keyed(KEY), cfg=IngestConfig())
    return list(get_source(name).read(root, ctx))


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_folder_is_one_quarantine_line(tmp_path, name):
    items = _read(name, tmp_path)
    assert len(items) == 1 and isinstance(items[0], Quarantine)
    assert items[0].reason == "missing_file"


@pytest.mark.parametrize("name,filename", [("slake", "train.json"), ("vqa_rad", "VQA_RAD Dataset Public.json"),
                                           ("iu_xray", "annotation.json")])
def test_an_unparsable_json_file_is_one_quarantine_line(tmp_path, name, filename):
    (tmp_path / filename).write_text('[{"question": "unterminated')
    items = _read(name, tmp_path)
    assert [(type(i), i.reason) for i in items] == [(Quarantine, "malformed_json")]


@pytest.mark.parametrize("name,filename", [("slake", "train.json"), ("vqa_rad", "VQA_RAD Dataset Public.json")])
def test_a_json_object_where_a_list_of_questions_belongs_is_one_quarantine_line(tmp_path, name, filename):
    (tmp_path / filename).write_text('{"question": "Is there an effusion?"}')
    items = _read(name, tmp_path)
    assert [(type(i), i.reason) for i in items] == [(Quarantine, "malformed_json")]
    assert items[0].detail == f"{filename} should hold a JSON list of questions, not a dict"


def test_a_non_utf8_json_file_is_invalid_encoding(tmp_path):
    (tmp_path / "train.json").write_bytes('[{"question": "Caf\u00e9"}]'.encode("latin-1"))
    items = _read("slake", tmp_path)
    assert [i.reason for i in items] == ["invalid_encoding"]


@pytest.mark.parametrize("name", NAMES)
def test_count_never_raises(tmp_path, name):
    module = get_source(name)
    if hasattr(module, "count"):
        ctx = Context(source=name, keyed=Keyed(KEY), cfg=IngestConfig())
        assert module.count(tmp_path, ctx) in (0, None)


@pytest.mark.parametrize("name", NAMES)
def test_count_matches_the_items_read(run, name):
    root, expected = run["data"][name]
    ctx = Context(source=name, keyed=Keyed(KEY), cfg=IngestConfig())
    assert get_source(name).count(root, ctx) == expected["seen"]

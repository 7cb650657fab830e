"""The record, the quarantine schema, de-identification primitives, shards and the manifest."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from unimedvl.config import IngestConfig, ParamsError, load_params
from unimedvl.data import images
from unimedvl.data.privacy import Keyed, load_key, scrub_path, scrub_text, split_for
from unimedvl.data.schema import RECORD_SCHEMA, Quarantine, Record, Rejected, Turn
from unimedvl.data.shards import DatasetWriter, read_manifest, read_quarantine, read_table, select_mixture


def make_record(i: int, split="train", modality="xray", patient="p1") -> Record:
    img = images.encode_png(np.full((8, 8), i % 255, dtype=np.uint8), path=f"img{i}.png")
    return Record(
        id=f"id{i}", dataset="t", modality=modality, main_task_type="understanding", sub_task_type="caption",
        split=split, lang="en", license="CC0", source_uri=f"img{i}.png", patient_key=patient,
        message=[Turn("human", "<image>\nDescribe."), Turn("gpt", f"Image {i}.")], input_img=[img],
        labels={"i": i},
    )


def test_record_round_trips_through_parquet_columns(tmp_path):
    rec = make_record(3)
    row = rec.to_row()
    assert list(row) == RECORD_SCHEMA.names
    back = Record.from_row(row)
    assert back == rec
    assert row["message"][0] == {"from": "human", "value": "<image>\nDescribe."}


def test_record_problems_catch_bad_structure():
    rec = make_record(1)
    assert rec.problems() == []
    rec.split = "holdout"
    rec.sub_task_type = "t2i"
    rec.message = [Turn("human", "no placeholder"), Turn("gpt", "x")]
    problems = " | ".join(rec.problems())
    assert "split 'holdout'" in problems and "understanding/t2i" in problems and "0 <image> placeholders" in problems


def test_rejected_only_takes_known_reasons():
    assert Rejected("path_escape", "x").reason == "path_escape"
    with pytest.raises(ValueError):
        Rejected("made_up_reason", "x")


@pytest.mark.parametrize(
    ("text", "planted", "kind"),
    [
        ("Exam on 03/14/2019 was normal.", "03/14/2019", "date"),
        ("Exam on 2019-03-14 was normal.", "2019-03-14", "date"),
        ("Exam on 14 March 2019 was normal.", "14 March 2019", "date"),
        ("Call 317-555-0199 with results.", "317-555-0199", "phone"),
        ("Call (317) 555-0199 with results.", "555-0199", "phone"),
        ("Mail jane.doe@hospital.org please.", "jane.doe@hospital.org", "email"),
        ("MRN: 12345678 on file.", "12345678", "id"),
        ("Patient 12345678. Seen today.", "12345678", "id"),
        ("Folder MRN98765432_ct", "98765432", "id"),
        ("Discussed with Dr. Quortle Plimsoll today.", "Quortle", "name"),
    ],
)
def test_scrub_text_removes_identifiers(text, planted, kind):
    cleaned, touched = scrub_text(text)
    assert planted not in cleaned
    assert f"text:{kind}" in touched


def test_scrub_text_keeps_clinical_numbers():
    text = "A 5 mm nodule in the right upper lobe; heart size 12.5 cm. T1 and T2 sequences."
    assert scrub_text(text) == (text, [])


def test_scrub_path_removes_identifiers_from_components():
    cleaned, touched = scrub_path("Doe_Jane_MRN98765432/2019-03-14/img.dcm", ("Doe",))
    assert "98765432" not in cleaned and "2019-03-14" not in cleaned and "Doe" not in cleaned
    assert touched


def test_keyed_hashes_depend_on_key_and_are_stable():
    a, b = Keyed(b"key-a"), Keyed(b"key-b")
    assert a.record_id("s", "1") == Keyed(b"key-a").record_id("s", "1")
    assert a.record_id("s", "1") != b.record_id("s", "1")
    assert a.patient_key("s", "MRN1") != a.patient_key("s", "MRN2")
    uid = a.uid("1.2.3.4")
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid == a.uid("1.2.3.4") and uid != b.uid("1.2.3.4")
    assert -3650 <= a.date_shift_days("p") <= -1


def test_split_for_is_deterministic_and_follows_fractions():
    k = Keyed(b"k")
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    splits = [split_for(k, f"g{i}", fractions) for i in range(4000)]
    assert splits == [split_for(k, f"g{i}", fractions) for i in range(4000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["test"] - 0.1) < 0.02
    assert {split_for(k, f"g{i}", {"train": 1.0}) for i in range(50)} == {"train"}


def test_load_key_creates_a_private_key_file_once(tmp_path, monkeypatch, capsys):
    path = tmp_path / "sub" / "secret.key"
    monkeypatch.setenv("UNIMEDVL_SECRET_FILE", str(path))
    key = load_key()
    assert len(key) == 64 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert str(path) in capsys.readouterr().err  # its location is printed
    assert load_key() == key
    monkeypatch.setenv("UNIMEDVL_SECRET_KEY", "from-env")
    assert load_key() == b"from-env"


def test_safe_path_rejects_escapes(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    os.symlink(tmp_path / "outside.png", root / "link.png")
    for rel in ("../outside.png", str(tmp_path / "outside.png"), "link.png"):
        with pytest.raises(Rejected) as e:
            images.safe_path(root, rel)
        assert e.value.reason == "path_escape", rel
    with pytest.raises(Rejected) as e:
        images.safe_path(root, "missing.png")
    assert e.value.reason == "missing_file"


def test_decode_image_classifies_bad_files(tmp_path):
    from tests.helpers import write_png

    good = write_png(tmp_path / "a.png").read_bytes()
    cases = {"empty_file": b"", "truncated_image": good[: len(good) // 2], "not_an_image": b"hello, not a png"}
    for reason, data in cases.items():
        with pytest.raises(Rejected) as e:
            images.decode_image(data, "x.png")
        assert e.value.reason == reason
    old = images.MAX_PIXELS
    try:
        images.set_max_pixels(100)
        with pytest.raises(Rejected) as e:
            images.decode_image(good, "a.png")
        assert e.value.reason == "image_too_large"
    finally:
        images.set_max_pixels(old)


def test_window_and_png_keep_16_bit():
    ramp = np.linspace(-1000, 3000, 64 * 64).reshape(64, 64)
    img16 = images.window(ramp, keep16=True)
    assert img16.dtype == np.uint16 and img16.max() == 65535 and img16.min() == 0
    png = images.encode_png(img16)
    assert images.decode_image(png.png).dtype == np.uint16
    windowed = images.window(ramp, center=40, width=400)
    assert windowed.dtype == np.uint8 and (windowed == 255).mean() > 0.5  # bone window saturates


def test_writer_accounts_every_item_and_is_byte_identical(tmp_path):
    def build(out):
        w = DatasetWriter(out, shard_max_mb=1)
        for i in range(6):
            w.add("s", make_record(i, split=["train", "val", "test"][i % 3], patient=f"p{i % 2}"))
        w.add("s", Quarantine("ingest", "s", "bad.png", "truncated_image", "cut short"))
        return w.close()

    m1, m2 = build(tmp_path / "a"), build(tmp_path / "b")
    assert (m1["seen"], m1["accepted"], m1["quarantined"]) == (7, 6, 1)
    assert m1["by_source"]["s"] == {"seen": 7, "accepted": 6, "quarantined": 1}
    assert m1["by_split"] == {"test": 2, "train": 2, "val": 2}
    assert m1["subjects"]["xray"] == {"test": 2, "train": 2, "val": 2}
    assert m1["shards"] == m2["shards"]
    assert (tmp_path / "a" / m1["shards"][0]["path"]).read_bytes() == (tmp_path / "b" / m2["shards"][0]["path"]).read_bytes()
    assert read_table(tmp_path / "a").num_rows == 6
    assert read_quarantine(tmp_path / "a")[0].reason == "truncated_image"
    assert read_manifest(tmp_path / "a") == json.loads((tmp_path / "a" / "manifest.json").read_text())


def test_read_table_detects_tampered_shards(tmp_path):
    w = DatasetWriter(tmp_path)
    w.add("s", make_record(1))
    m = w.close()
    with open(tmp_path / m["shards"][0]["path"], "ab") as fh:
        fh.write(b"tamper")
    with pytest.raises(ValueError, match="sha256"):
        read_table(tmp_path)


def test_params_validation_names_the_bad_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("ingest:\n  max_side: -3\n  split_fractions: {train: 1, holdout: 1}\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert "ingest.max_side" in str(e.value) and "holdout" in str(e.value)
    p.write_text("ingest:\n  max_side: 128\nfuture_step: {x: 1}\n")
    assert load_params(p).ingest.max_side == 128
    assert load_params(tmp_path / "absent.yaml").ingest == IngestConfig()


def test_repo_params_yaml_is_valid():
    from pathlib import Path

    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert params.ingest.sources[0].name == "packaged"


def test_mixture_takes_configured_languages_and_keeps_the_rest(tmp_path):
    w = DatasetWriter(tmp_path)
    for i, lang in enumerate(["en", "zh", "en", "zh", "fr"]):
        rec = make_record(i)
        rec.lang = lang
        w.add("s", rec)
    m = w.close()
    table = read_table(tmp_path)
    assert m["by_lang"] == {"en": 2, "fr": 1, "zh": 2} and table.num_rows == 5
    assert select_mixture(table, IngestConfig().mixture_languages)["lang"].to_pylist() == ["en", "en"]
    assert select_mixture(table, ["en", "zh"]).num_rows == 4
    assert select_mixture(table, []).num_rows == 0  # no language configured: nothing, not a type error

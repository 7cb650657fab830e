"""One bad item never stops a source: a failure injected at each stage of each adapter, and each
hostile file observed in the wild (built here, nothing binary committed), quarantines that item only."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fixtures_public as fx  # noqa: E402

from unimedvl.config import IngestConfig, SourceSpec  # noqa: E402
from unimedvl.data import dicom_io, images  # noqa: E402
from unimedvl.data.ingest import ingest  # noqa: E402
from unimedvl.data.privacy import Keyed  # noqa: E402
from unimedvl.data.schema import Quarantine, Record  # noqa: E402
from unimedvl.data.shards import read_manifest, read_quarantine, read_table  # noqa: E402
from unimedvl.data.sources import base, get_source  # noqa: E402
from unimedvl.data.sources.base import Context  # noqa: E402

KEY = b"isolation-key"


SMALL = IngestConfig(phantom={"count": 24})


def run(name: str, root: Path | None) -> tuple[list[Record], list[Quarantine]]:
    ctx = Context(source=name, keyed=Keyed(KEY), cfg=SMALL)
    root = None if name == "phantom" else root
    items = list(get_source(name).read(root, ctx))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Quarantine)]


def dicom_folder(root: Path) -> Path:
    from pydicom.data import get_testdata_file

    for i, name in enumerate(("CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm")):
        (root / f"s{i}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(get_testdata_file(name), root / f"s{i}" / f"im{i}.dcm")
    return root


BUILD = {**{n: (lambda root, tmp, n=n: fx.BUILDERS[n](root, tmp)) for n in fx.BUILDERS},
         "dicom": lambda root, tmp: dicom_folder(root), "phantom": lambda root, tmp: None}


def _once(real, calls: list[int], fail_at: int):
    def wrapper(*a, **kw):
        calls[0] += 1
        if calls[0] == fail_at:
            raise RuntimeError("injected failure")
        return real(*a, **kw)
    return wrapper


# (stage, object, attribute): reading, decoding, scrubbing and record building.
STAGES = {
    "read": (images, "read_bytes"),
    "decode": (images, "decode_image"),
    "dicom_decode": (dicom_io, "_display"),
    "scrub": (base, "scrub_text"),
    "build": (Context, "record"),
}
APPLIES = {"read": set(BUILD) - {"path_vqa", "gmai_mmbench", "dicom", "phantom"}, "decode": set(BUILD) - {"dicom", "phantom"},
           "dicom_decode": {"dicom"}, "scrub": set(BUILD), "build": set(BUILD)}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    out = {}
    for name, build in BUILD.items():
        root = tmp / name
        root.mkdir()
        build(root, tmp)
        out[name] = (root, run(name, root))
    return out


# PathVQA reads image bytes from parquet cells, GMAI-MMBench from base64 cells of a streamed TSV, and
# DICOM has its own decoder: no read_bytes stage.
@pytest.mark.parametrize("name,stage", [(n, s) for s in STAGES for n in sorted(APPLIES[s])])
def test_failure_at_each_stage_quarantines_only_that_item(layouts, monkeypatch, name, stage):
    root, (good, bad) = layouts[name]
    obj, attr = STAGES[stage]
    calls = [0]
    monkeypatch.setattr(obj, attr, _once(getattr(obj, attr), calls, 2))
    records, quarantined = run(name, root)
    assert calls[0] >= 2, f"{stage} of {name} was never reached twice"
    injected = [q for q in quarantined if "RuntimeError" in q.detail]
    assert len(injected) == 1, [(q.item, q.reason, q.detail) for q in quarantined]
    assert injected[0].reason == "decode_error" and injected[0].source == name
    # every other item is still read: at most one item's records are missing, and the last good one is there
    assert good[-1].id in {r.id for r in records}
    if stage == "read" and injected[0].item.endswith((".json", ".csv", ".txt", ".jsonl")):
        return  # the read that failed was a whole file of items: it is that file's one line
    per_item = max(Counter(r.source_uri.split("#frame")[0] for r in good).values()) if name == "dicom" else 1
    assert len(records) >= len(good) - per_item
    assert len(quarantined) == len(bad) + 1 or (stage == "read" and len(quarantined) <= len(bad) + 1)


# --- hostile files ----------------------------------------------------------------------------------


def _dicom(root: Path, name: str, edit) -> Path:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    edit(ds)
    path = root / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _palette_without_lut(ds):
    ds.PhotometricInterpretation = "PALETTE COLOR"


def _text_rescale_slope(ds):
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds[0x00281053] = RawDataElement(Tag(0x00281053), "DS", 6, b"slope ", 0, False, True)


def _short_modality_lut(ds):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "HU"
    item.add_new(0x00283006, "US", [0, 1, 2])  # 3 LUT entries where the descriptor promises 4096
    ds.ModalityLUTSequence = [item]
    for kw in ("RescaleSlope", "RescaleIntercept"):
        if kw in ds:
            del ds[kw]


@pytest.mark.parametrize("edit", [_palette_without_lut, _text_rescale_slope, _short_modality_lut])
def test_hostile_dicom_pixels_quarantine_and_the_folder_goes_on(tmp_path, edit):
    root = dicom_folder(tmp_path / "in")
    _dicom(root, "a-bad.dcm", edit)
    records, quarantined = run("dicom", root)
    assert len(quarantined) == 1 and quarantined[0].reason in ("decode_error", "corrupt_image"), quarantined
    assert {r.modality for r in records} == {"ct", "mri", "xray"}  # all three good files


def test_non_utf8_file_name_is_read_under_its_pseudonym(tmp_path):
    from pydicom.data import get_testdata_file

    root = dicom_folder(tmp_path / "in")
    raw = os.path.join(os.fsencode(root), b"M\xfcller\xff.dcm")  # Latin-1 bytes: not UTF-8
    shutil.copyfile(get_testdata_file("MR_small.dcm"), raw)
    out = tmp_path / "out"
    ingest([SourceSpec(name="dicom", input=str(root))], out, IngestConfig(), key=KEY, console=Console(file=io.StringIO()))
    m = read_manifest(out)
    assert m["by_source"]["dicom"]["seen"] == m["accepted"] + m["quarantined"]
    # the copy of MR_small sorts first, so s1/im1.dcm is the duplicate encoding
    reasons = Counter(q.reason for q in read_quarantine(out))
    assert reasons == Counter({"duplicate_encoding": 1})
    assert all("ller" not in p for r in read_table(out).to_pylist() for p in [r["source_uri"]])


def _slake_with(root: Path, tmp: Path, img_name: str) -> None:
    fx.build_slake(root, tmp)
    rows = json.loads((root / "test.json").read_text())
    rows.append(fx._slake_q(11, img_name, "Is this normal?", "No", "en", "CLOSED", "CT"))
    (root / "test.json").write_text(json.dumps(rows))


@pytest.mark.parametrize("img_name,reason", [
    ("xmlab6/so\u0000urce.jpg", "invalid_value"),  # NUL in a path in JSON
    ("xmlab6/" + "n" * 300 + ".jpg", "unreadable"),  # ENAMETOOLONG
])
def test_hostile_paths_in_json(tmp_path, img_name, reason):
    root = tmp_path / "slake"
    root.mkdir()
    _slake_with(root, tmp_path, img_name)
    records, quarantined = run("slake", root)
    assert len(records) == 6  # the fixture's six good questions
    extra = [q for q in quarantined if q.item.endswith("test.json#2")]
    assert len(extra) == 1 and extra[0].reason == reason, extra
    if reason == "unreadable":
        assert "too long" in extra[0].detail


def test_nul_in_csv_path(tmp_path):
    root = tmp_path / "imagefolder"
    root.mkdir()
    fx.build_imagefolder(root, tmp_path)
    with open(root / "metadata.csv", "a") as fh:
        fh.write("a\x00.png,A chest radiograph.,caption,,train,xray,P1\n")
    records, quarantined = run("imagefolder", root)
    assert len(records) == 16
    assert quarantined[-1].reason == "invalid_value" and "NUL" in quarantined[-1].detail


def _jsonl_root(tmp_path: Path, extra_lines: list[str]) -> Path:
    root = tmp_path / "jsonl"
    root.mkdir()
    fx.write_image(root / "a.png", 1)
    good = {"main_task_type": "understanding", "sub_task_type": "caption", "modality": "xray",
            "dataset": "demo", "message": [{"from": "human", "value": "<image>\nDescribe."},
                                           {"from": "gpt", "value": "A chest film."}],
            "input_img": [{"path": "a.png"}]}
    lines = [json.dumps(dict(good, id="g1")), *extra_lines, json.dumps(dict(good, id="g2"))]
    (root / "r.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_hostile_jsonl_lines(tmp_path):
    deep = '{"labels": ' + "[" * 100_000 + "]" * 100_000 + "}"
    big_int = '{"id": ' + "9" * 5000 + "}"
    surrogate = json.dumps({"id": "s1", "main_task_type": "understanding", "sub_task_type": "caption",
                            "modality": "xray", "dataset": "demo", "input_img": [{"path": "a.png"}],
                            "message": [{"from": "human", "value": "<image>\nDescribe."},
                                        {"from": "gpt", "value": "bad \ud800 text"}]})
    assert "\\ud800" in surrogate
    root = _jsonl_root(tmp_path, [deep, big_int, surrogate])
    out = tmp_path / "out"
    ingest([SourceSpec(name="unimedvl_jsonl", input=str(root))], out, IngestConfig(), key=KEY,
           console=Console(file=io.StringIO()))
    m = read_manifest(out)  # the run completed and wrote its manifest
    assert (m["seen"], m["accepted"]) == (5, 2)
    q = {x.item: x for x in read_quarantine(out)}
    assert q["r.jsonl:2"].reason == "malformed_json" and "levels deep" in q["r.jsonl:2"].detail
    assert q["r.jsonl:3"].reason == "malformed_json" and "5000 digits" in q["r.jsonl:3"].detail
    assert q["r.jsonl:4"].reason == "invalid_text"


def test_fifo_where_an_image_should_be_does_not_hang(tmp_path):
    root = tmp_path / "slake"
    root.mkdir()
    fx.build_slake(root, tmp_path)
    (root / "imgs/xmlab6/source.jpg").unlink()
    os.mkfifo(root / "imgs/xmlab6/source.jpg")
    dicoms = dicom_folder(tmp_path / "dicom")
    os.mkfifo(dicoms / "s0" / "pipe.dcm")
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("a FIFO was opened")))
    signal.alarm(60)
    try:
        _, quarantined = run("slake", root)
        _, dq = run("dicom", dicoms)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert [q.reason for q in quarantined if q.item.startswith("test.json#1")] == ["not_a_regular_file"]
    assert [q.reason for q in dq] == ["not_a_regular_file"]


# --- decoding that used to give wrong answers --------------------------------------------------------


def test_deflated_explicit_vr_is_read_not_called_truncated(tmp_path):
    from pydicom.data import get_testdata_file
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    root = tmp_path / "in"
    root.mkdir()
    ds.save_as(root / "deflated.dcm", enforce_file_format=True)
    assert (root / "deflated.dcm").stat().st_size < len(ds.PixelData)  # really deflated
    records, quarantined = run("dicom", root)
    assert quarantined == [] and records and {r.modality for r in records} == {"ct"}


def test_secondary_capture_is_not_taken_for_its_modality(tmp_path):
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    root = tmp_path / "in"
    root.mkdir()
    ds.save_as(root / "sc.dcm", enforce_file_format=True)
    records, quarantined = run("dicom", root)
    assert records == [] and [q.reason for q in quarantined] == ["modality_not_allowed"]
    assert "Secondary Capture" in quarantined[0].detail
    ctx = Context(source="dicom", keyed=Keyed(KEY), cfg=IngestConfig(allow_secondary_capture=True))
    admitted = [i for i in get_source("dicom").read(root, ctx) if isinstance(i, Record)]
    assert admitted and {r.modality for r in admitted} == {"other"}


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image as PILImage

    root = tmp_path / "imagefolder"
    root.mkdir()
    im = PILImage.new("RGB", (40, 20), (200, 0, 0))
    im.paste((0, 0, 200), (0, 0, 10, 20))  # blue band on the left of the stored pixels
    exif = PILImage.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    im.save(root / "photo.jpg", format="JPEG", exif=exif, quality=95)
    (root / "metadata.csv").write_text("image,text\nphoto.jpg,A photograph.\n")
    records, _ = run("imagefolder", root)
    img = records[0].input_img[0]
    assert (img.height, img.width) == (40, 20)  # stored upright, as a viewer shows it
    arr = np.asarray(PILImage.open(io.BytesIO(img.png)).convert("RGB"))
    assert arr[:5, :, 2].mean() > 150 and arr[-5:, :, 0].mean() > 150  # the left band is now on top


def test_quarantine_lines_never_name_a_person_or_an_absolute_path(tmp_path):
    root = tmp_path / "imagefolder"
    root.mkdir()
    fx.write_image(root / "a.png", 1)
    outside = fx.write_image(tmp_path / "Quortle_Plimsoll" / "x.png", 2)
    (root / "metadata.csv").write_text(
        "image,text\na.png,A chest film.\nQuortle_Plimsoll/MRN12345678/x.png,A chest film.\n"
        f"{outside},A chest film.\n")
    records, quarantined = run("imagefolder", root)
    assert len(records) == 1 and [q.reason for q in quarantined] == ["missing_file", "path_escape"]
    for q in quarantined:
        line = q.to_json()
        assert "Quortle" not in line and "Plimsoll" not in line and "12345678" not in line, line
        assert str(tmp_path) not in line and "/tmp" not in line, line
    assert "'p-" in quarantined[0].detail and "absolute path" in quarantined[1].detail


def test_csv_field_over_the_limit_is_one_malformed_row(tmp_path):
    root = tmp_path / "imagefolder"
    root.mkdir()
    fx.write_image(root / "a.png", 1)
    (root / "metadata.csv").write_text(
        "image,text\na.png,A chest film.\na.png," + "x" * 200_000 + "\na.png,Another chest film.\n")
    records, quarantined = run("imagefolder", root)
    assert len(records) == 2 and [q.reason for q in quarantined] == ["malformed_csv"]

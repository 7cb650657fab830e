"""The DICOM reader and the `dicom` adapter: real pydicom-data files across transfer syntaxes, bad
input of every kind, and the end-to-end de-identification test (no planted identifier survives
anywhere in the output of `ingest`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image as PILImage

from unimedvl.config import IngestConfig, SourceSpec
from unimedvl.data import images
from unimedvl.data.dicom_io import ALLOWED_DICOM_MODALITIES, read_dicom
from unimedvl.data.dicom_profile import DicomScrub
from unimedvl.data.privacy import Keyed
from unimedvl.data.schema import MODALITIES, Quarantine, Record, Rejected
from unimedvl.data.sources import dicom as dicom_source
from unimedvl.data.sources.base import Context

pytest.importorskip("pydicom.data")
from pydicom.data import get_testdata_file  # noqa: E402

KEY = b"k"


def data_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


def copy_to(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_file(name), dest)
    return dest


def run_adapter(root: Path, cfg: IngestConfig | None = None, key: bytes = KEY) -> tuple[list[Record], list[Quarantine]]:
    ctx = Context(source="dicom", keyed=Keyed(key), cfg=cfg or IngestConfig())
    items = list(dicom_source.read(root, ctx))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Quarantine)]


def png_array(img) -> np.ndarray:
    import io

    return np.asarray(PILImage.open(io.BytesIO(img.png)))


# --- (a) real files across transfer syntaxes ---------------------------------------------------------

DECODES = [
    # name, schema modality, transfer syntax name fragment, frames kept, colour
    ("CT_small.dcm", "ct", "Explicit VR Little Endian", 1, False),
    ("MR_small.dcm", "mri", "Explicit VR Little Endian", 1, False),
    ("MR_small_jp2klossless.dcm", "mri", "JPEG 2000 Image Compression (Lossless Only)", 1, False),
    ("MR_small_RLE.dcm", "mri", "RLE Lossless", 1, False),
    ("emri_small_jpeg_ls_lossless.dcm", "mri", "JPEG-LS Lossless", 8, False),  # 10 frames -> 8
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "ultrasound", "JPEG Lossless", 1, False),
    ("examples_ybr_color.dcm", "ultrasound", "JPEG Baseline", 8, True),  # 30-frame YBR_FULL_422 cine
    ("US1_J2KR.dcm", "ultrasound", "JPEG 2000", 1, True),  # YBR_RCT
    ("RG1_UNCI.dcm", "xray", "Explicit VR Little Endian", 1, False),  # MONOCHROME1 CR chest
]


IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber", "StudyID",
               "InstitutionName", "ReferringPhysicianName", "OperatorsName", "StationName", "DeviceSerialNumber",
               "StudyDate", "StudyTime")


@pytest.mark.parametrize("name,modality,syntax,n_frames,colour", DECODES)
def test_real_files_decode(name, modality, syntax, n_frames, colour):
    cfg = IngestConfig()
    d = read_dicom(data_file(name), Keyed(KEY), cfg)
    assert d.modality == modality and d.modality in MODALITIES
    assert ALLOWED_DICOM_MODALITIES[d.dicom_modality] == modality
    assert syntax in d.transfer_syntax
    assert len(d.frames) == n_frames
    for f in d.frames:
        assert max(f.shape[:2]) <= cfg.max_side
        assert f.dtype in (np.uint8, np.uint16)
        assert (f.ndim == 3 and f.shape[2] == 3) if colour else f.ndim == 2
        assert int(f.max()) > int(f.min()), "decoded frame is constant: pixels were not decoded"
        if f.dtype == np.uint16:
            assert d.bits_stored > 8
    # The report names each identifying element the original header carries, and private tags iff any.
    original = pydicom.dcmread(data_file(name), stop_before_pixels=True)
    carried = {f"dicom:{kw}" for kw in IDENTIFYING if kw in original}
    assert carried | {"dicom:uids", "dicom:dates"} <= set(d.phi_removed), carried - set(d.phi_removed)
    has_private = any(e.tag.is_private for e in original.iterall())
    assert ("dicom:private_tags" in d.phi_removed) == has_private
    json.dumps(d.meta)  # JSON-able
    assert {"modality", "rows", "columns", "n_frames", "transfer_syntax"} <= set(d.meta)


def test_metadata_from_real_headers():
    k, cfg = Keyed(KEY), IngestConfig()
    ct = read_dicom(data_file("CT_small.dcm"), k, cfg)
    assert ct.plane == "axial" and dicom_source.caption(ct) == "Axial CT slice."
    mr = read_dicom(data_file("MR_small.dcm"), k, cfg)
    assert mr.sequence == "T2"  # spin echo, TR 4000 / TE 240
    assert dicom_source.caption(mr) == "Axial T2-weighted MRI slice."
    cr = read_dicom(data_file("RG1_UNCI.dcm"), k, cfg)
    assert (cr.body_part, cr.view) == ("chest", "PA")
    assert dicom_source.caption(cr) == "PA radiograph of the chest."
    emri = read_dicom(data_file("emri_small_jpeg_ls_lossless.dcm"), k, cfg)
    assert emri.body_part == "head" and emri.sequence == "T1" and emri.n_frames == 10
    assert emri.frame_indices == [0, 1, 3, 4, 5, 6, 8, 9]  # 8 evenly spaced of 10
    # 8-bit output when 16-bit is switched off; the MONOCHROME1 CR is inverted so bone is bright.
    cr8 = read_dicom(data_file("RG1_UNCI.dcm"), k, IngestConfig(keep_16bit=False, max_side=64))
    assert cr8.frames[0].dtype == np.uint8 and max(cr8.frames[0].shape) == 64
    raw = pydicom.dcmread(data_file("RG1_UNCI.dcm")).pixel_array.astype(float)
    small = np.asarray(PILImage.fromarray(raw.astype(np.float32), mode="F").resize(cr8.frames[0].shape[::-1]))
    corr = np.corrcoef(small.ravel(), cr8.frames[0].astype(float).ravel())[0, 1]
    assert corr < -0.5, "MONOCHROME1 was not inverted"


def test_secondary_capture_photo_is_not_allowed():
    with pytest.raises(Rejected) as e:
        read_dicom(data_file("SC_rgb_jpeg_dcmtk.dcm"), Keyed(KEY), IngestConfig())
    assert e.value.reason == "modality_not_allowed" and "OT" in e.value.detail


def test_secondary_capture_is_secondary_capture_whatever_its_modality():
    # JPEG2000.dcm is a Secondary Capture whose Modality says NM: not an NM acquisition
    with pytest.raises(Rejected) as e:
        read_dicom(data_file("JPEG2000.dcm"), Keyed(KEY), IngestConfig())
    assert e.value.reason == "modality_not_allowed" and "Secondary Capture" in e.value.detail
    img = read_dicom(data_file("JPEG2000.dcm"), Keyed(KEY), IngestConfig(allow_secondary_capture=True))
    assert img.modality == "other" and img.frames and "JPEG 2000" in img.transfer_syntax


def test_transfer_syntax_variants_dedupe(tmp_path):
    root = tmp_path / "in"
    copy_to("MR_small.dcm", root / "a" / "mr.dcm")
    copy_to("MR_small_RLE.dcm", root / "b" / "mr_rle.dcm")
    copy_to("MR_small_jp2klossless.dcm", root / "c" / "mr_j2k")  # no extension
    copy_to("CT_small.dcm", root / "d" / "ct.dcm")
    records, quarantined = run_adapter(root)
    assert sorted(q.reason for q in quarantined) == ["duplicate_encoding", "duplicate_encoding"]
    k = Keyed(KEY)
    assert {q.item for q in quarantined} == {
        dicom_source.pseudo_path(k, "b/mr_rle.dcm"), dicom_source.pseudo_path(k, "c/mr_j2k")}
    images_by_modality = {}
    for r in records:
        images_by_modality.setdefault(r.modality, set()).add(r.input_img[0].png)
    assert {m: len(v) for m, v in images_by_modality.items()} == {"ct": 1, "mri": 1}
    # The three encodings decode to the same pixels.
    frames = [read_dicom(data_file(n), k, IngestConfig()).frames[0]
              for n in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm")]
    assert all(np.array_equal(frames[0], f) for f in frames[1:])


def test_records_from_metadata(tmp_path):
    root = tmp_path / "in"
    copy_to("RG1_UNCI.dcm", root / "cr.dcm")
    copy_to("examples_ybr_color.dcm", root / "us.dcm")
    records, quarantined = run_adapter(root)
    assert not quarantined
    cr = [r for r in records if r.modality == "xray"]
    qa = {r.message[0].value.split("\n", 1)[1]: r.message[1].value for r in cr}
    assert qa["Describe this image."] == "PA radiograph of the chest."
    assert qa["Which imaging modality is this?"] == "X-ray"
    assert qa["Which body part is shown?"] == "chest"
    assert qa["Which view is this radiograph?"] == "PA"
    assert qa["Is this an X-ray image?"] == "yes"
    no_q = [q for q, a in qa.items() if a == "no"]
    assert len(no_q) == 1 and no_q[0] != "Is this an X-ray image?"
    for r in records:
        assert not r.problems()
        assert r.message[0].value.startswith("<image>\n") and len(r.input_img) == 1
        assert r.labels["answer"] == r.message[1].value
        assert r.labels["modality"] == r.modality
        assert "path:pseudonymised" in r.phi_removed
    # One PNG per frame, shared by every record of that frame; 8 of 30 cine frames, URIs name them.
    us = [r for r in records if r.modality == "ultrasound"]
    assert len({r.source_uri for r in us}) == 8 and all("#frame=" in r.source_uri for r in us)
    by_uri = {}
    for r in us:
        by_uri.setdefault(r.source_uri, set()).add(r.input_img[0].png)
    assert all(len(v) == 1 for v in by_uri.values())
    assert png_array(us[0].input_img[0]).shape[2] == 3
    # All frames of one patient land in one split.
    assert len({r.split for r in us}) == 1 and len({r.patient_key for r in us}) == 1
    # Deterministic: a second run gives identical records.
    again, _ = run_adapter(root)
    assert [r.to_row() for r in again] == [r.to_row() for r in records]


# --- (b) bad input ---------------------------------------------------------------------------------


def _write(ds, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _only_quarantine(root: Path, cfg: IngestConfig | None = None) -> Quarantine:
    records, quarantined = run_adapter(root, cfg)
    assert not records and len(quarantined) == 1, (records, quarantined)
    return quarantined[0]


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert _only_quarantine(tmp_path).reason == "empty_file"


def test_truncated_file(tmp_path):
    data = data_file("CT_small.dcm").read_bytes()
    (tmp_path / "half.dcm").write_bytes(data[: len(data) // 2])
    (tmp_path / "j2k_half.dcm").write_bytes(data_file("MR_small_jp2klossless.dcm").read_bytes()[:4000])
    records, quarantined = run_adapter(tmp_path)
    assert not records and [q.reason for q in quarantined] == ["truncated_image", "truncated_image"]


def test_png_renamed_dcm(tmp_path):
    PILImage.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "photo.dcm", format="PNG")
    assert _only_quarantine(tmp_path).reason == "not_an_image"


def test_no_pixel_data(tmp_path):
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    del ds.PixelData
    _write(ds, tmp_path / "header_only.dcm")
    assert _only_quarantine(tmp_path).reason == "no_pixel_data"


def test_burned_in_annotation(tmp_path):
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    _write(ds, tmp_path / "burned.dcm")
    assert _only_quarantine(tmp_path).reason == "burned_in_annotation"
    records, quarantined = run_adapter(tmp_path, IngestConfig(allow_burned_in=True))
    assert records and not quarantined


def test_symlink_outside_root(tmp_path):
    outside = copy_to("CT_small.dcm", tmp_path / "elsewhere" / "ct.dcm")
    root = tmp_path / "in"
    root.mkdir()
    os.symlink(outside, root / "link.dcm")
    os.symlink(outside.parent, root / "linkdir")
    copy_to("MR_small.dcm", root / "sub" / "mr.dcm")
    os.symlink(root / "sub", root / "inside_link")  # a link inside the root is not an escape
    records, quarantined = run_adapter(root)
    assert sorted(q.reason for q in quarantined) == ["path_escape", "path_escape"]
    assert {r.modality for r in records} == {"mri"}


def test_oversized_image(tmp_path):
    copy_to("CT_small.dcm", tmp_path / "ct.dcm")  # 128 x 128
    old, old_pil = images.MAX_PIXELS, PILImage.MAX_IMAGE_PIXELS
    try:
        images.set_max_pixels(128 * 128 - 1)
        q = _only_quarantine(tmp_path)
    finally:
        images.MAX_PIXELS, PILImage.MAX_IMAGE_PIXELS = old, old_pil
    assert q.reason == "image_too_large" and "128x128" in q.detail


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([ds.PixelData])  # as an MPEG2 stream would be stored
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pixel decoder exists
    _write(ds, tmp_path / "mpeg2.dcm")
    q = _only_quarantine(tmp_path)
    assert q.reason == "unsupported_transfer_syntax" and "MPEG2" in q.detail


def test_missing_decoder_plugin_names_the_fix(tmp_path, monkeypatch):
    import pydicom.pixels

    class NoPlugins:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg-openjpeg"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoPlugins())
    with pytest.raises(Rejected) as e:
        read_dicom(data_file("MR_small_jp2klossless.dcm"), Keyed(KEY), IngestConfig())
    assert e.value.reason == "unsupported_transfer_syntax"
    assert "JPEG 2000" in e.value.detail and "pylibjpeg" in e.value.detail and "gdcm" in e.value.detail


def test_dicomdir_and_hidden_files_skipped_and_count(tmp_path):
    copy_to("CT_small.dcm", tmp_path / "DICOMDIR")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    copy_to("MR_small.dcm", tmp_path / "x" / "IM0001")
    ctx = Context(source="dicom", keyed=Keyed(KEY), cfg=IngestConfig())
    assert dicom_source.count(tmp_path, ctx) == 1
    records, quarantined = run_adapter(tmp_path)
    assert not quarantined and {r.modality for r in records} == {"mri"}
    assert dicom_source.locate(tmp_path, Keyed(KEY), records[0].source_uri) == tmp_path / "x" / "IM0001"


# --- (c) de-identification end to end ------------------------------------------------------------

PLANTED = {
    "PatientName": "Zyxwv^Quortle",
    "PatientID": "MRN98765432",
    "PatientBirthDate": "19510704",
    "InstitutionName": "Saint Quortle Hospital",
    "InstitutionAddress": "12 Quortle Lane, Springfield",
    "AccessionNumber": "ACC55501234",
    "ReferringPhysicianName": "Dr^Plimsoll",
    "OperatorsName": "Tech^Wobblesworth",
    "StudyDate": "20190312",
    "SeriesDate": "20190312",
    "StudyDescription": "Quortle follow-up, call 555-867-5309",
    "ImageComments": "Zyxwv Quortle: ring (555) 867-5309 or mail jane.quortle@plimsoll-clinic.org",
    "OtherPatientIDs": "OPID7654321",
    "PatientAddress": "12 Quortle Lane, Springfield",
    "PatientTelephoneNumbers": "555-867-5309",
    "StudyID": "STU8842",
}
# Every textual form that must not appear in any output (case-insensitive).
FORBIDDEN_TEXT = [
    "Zyxwv", "Quortle", "Plimsoll", "Wobblesworth", "MRN98765432", "98765432", "ACC55501234", "55501234",
    "OPID7654321", "7654321", "Springfield", "867-5309", "8675309", "jane.quortle", "plimsoll-clinic",
    "19510704", "1951-07-04", "1951/07/04", "07/04/1951", "04/07/1951", "04.07.1951", "July 4, 1951",
    "4 July 1951", "Jul 4 1951", "20190312", "2019-03-12", "STU8842",
    # the planted path components
    "Doe_Jane", "Doe^Jane", "Jane_Doe", "Zyxwv_series",
]
PLANTED_DIR = "Doe_Jane_MRN98765432"


def _plant(src: str, dest: Path, sop_uid: str, burned: bool = False) -> list[str]:
    """Copy a real file, plant identifiers, return every instance UID it carries (to check later)."""
    ds = pydicom.dcmread(data_file(src))
    for kw, value in PLANTED.items():
        setattr(ds, kw, value)
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.11111111111111"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.22222222222" + sop_uid[-2:]
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.3333333333" + sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if burned:
        ds.BurnedInAnnotation = "YES"
    uids = [str(e.value) for e in ds.iterall() if e.VR == "UI" and e.keyword not in (
        "SOPClassUID", "ReferencedSOPClassUID", "TransferSyntaxUID") and e.value and e.VM == 1]
    _write(ds, dest)
    return uids


def test_no_identifier_survives_ingest(tmp_path, capsys, caplog):
    from unimedvl.data.ingest import ingest

    caplog.set_level(logging.DEBUG)
    root = tmp_path / "input"
    folder = root / PLANTED_DIR / "Zyxwv_series"
    uids: list[str] = []
    uids += _plant("CT_small.dcm", folder / "Doe_Jane_ct.dcm", "01")
    uids += _plant("MR_small.dcm", folder / "Doe_Jane_mr.dcm", "02")
    uids += _plant("RG1_UNCI.dcm", folder / "Doe_Jane_chest.dcm", "03")
    uids += _plant("US1_UNCR.dcm", folder / "Doe_Jane_us.dcm", "04")
    uids += _plant("CT_small.dcm", folder / "Doe_Jane_burned.dcm", "05", burned=True)
    # The originals' own instance UIDs and names must not leak either.
    for src in ("CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm", "US1_UNCR.dcm"):
        ds = pydicom.dcmread(data_file(src), stop_before_pixels=True)
        uids += [str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]
    uids = sorted(set(uids))
    out = tmp_path / "out"

    result = ingest([SourceSpec(name="dicom", input=str(root))], out, IngestConfig(), key=KEY)
    logs = capsys.readouterr()
    log_text = logs.out + logs.err + caplog.text

    m = result.manifest
    assert m["by_source"]["dicom"]["quarantined"] == 1 and m["quarantine_reasons"] == {"burned_in_annotation": 1}
    assert m["accepted"] + m["quarantined"] == m["seen"]
    assert m["by_modality"].keys() == {"ct", "mri", "xray", "ultrasound"}

    # Every text the run produced: all Parquet cells (image bytes set aside), the other files, the logs.
    texts = [log_text]
    raw_blobs: list[bytes] = []
    rows = []
    for f in sorted(out.rglob("*")):
        if not f.is_file():
            continue
        raw_blobs.append(f.read_bytes())
        if f.suffix == ".parquet":
            for row in pq.read_table(f).to_pylist():
                for col in ("input_img", "output_img"):
                    for img in row[col]:
                        raw_blobs.append(img.pop("bytes"))
                rows.append(row)
                texts.append(json.dumps(row, ensure_ascii=False))
        else:
            texts.append(f.read_text(encoding="utf-8"))
    assert rows and {f.name for f in out.iterdir()} >= {"manifest.json", "quarantine.jsonl", "summary.txt"}
    haystack = "\n".join(texts).lower()
    for needle in FORBIDDEN_TEXT + uids:
        assert needle.lower() not in haystack, f"planted value {needle!r} leaked into the output"
    # Raw bytes of every output file (compressed shards and PNGs included) for the long values.
    for needle in [n for n in FORBIDDEN_TEXT + uids if len(n) >= 8]:
        for form in {needle, needle.lower(), needle.upper()}:
            assert not any(form.encode() in blob for blob in raw_blobs), f"{needle!r} found in raw output bytes"

    # What was touched is named on every record.
    must_name = {"dicom:PatientName", "dicom:PatientID", "dicom:PatientBirthDate", "dicom:InstitutionName",
                 "dicom:AccessionNumber", "dicom:ReferringPhysicianName", "dicom:OtherPatientIDs",
                 "dicom:PatientAddress", "dicom:ImageComments", "dicom:StudyDescription", "dicom:uids",
                 "dicom:dates", "path:pseudonymised"}
    for row in rows:
        assert must_name <= set(row["phi_removed"]), must_name - set(row["phi_removed"])
    # One patient (same planted PatientID) -> one pseudonym, one split, not the raw ID.
    assert len({r["patient_key"] for r in rows}) == 1 and len({r["split"] for r in rows}) == 1
    assert rows[0]["patient_key"].startswith("pt-")


# DicomScrub writes a 66-character DeidentificationMethod into an LO (max 64); read_dicom silences
# pydicom while it holds a dataset, but this test calls the scrubber directly.
@pytest.mark.filterwarnings("ignore:The value length")
def test_dates_shift_consistently_and_uids_remap_consistently():
    def study(date: str, study_uid: str, sop_uid: str):
        ds = pydicom.dcmread(data_file("CT_small.dcm"), stop_before_pixels=True)
        ds.StudyDate, ds.SeriesDate, ds.ContentDate = date, date, date
        ds.PatientBirthDate = "19510704"
        ds.StudyInstanceUID, ds.SOPInstanceUID = study_uid, sop_uid
        ds.ReferencedInstanceSequence = pydicom.Sequence([pydicom.Dataset()])
        ds.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
        return ds

    import datetime as dt

    def day(s: str) -> dt.date:
        return dt.datetime.strptime(s, "%Y%m%d").date()

    k = Keyed(KEY)
    a = study("20190312", "1.2.3.100", "1.2.3.100.1")
    b = study("20200101", "1.2.3.200", "1.2.3.200.1")
    c = study("20190312", "1.2.3.100", "1.2.3.100.1")
    for ds in (a, b):
        touched = DicomScrub(k, ("longitudinal_modified_dates",))(ds, "MRN98765432")
        assert {"dicom:dates", "dicom:uids", "dicom:PatientBirthDate"} <= set(touched)
    DicomScrub(k, ("longitudinal_modified_dates",))(c, "OTHER-PATIENT")
    # Same patient, two studies: both shifted by the same number of days, so the interval is kept.
    assert a.StudyDate != "20190312" and b.StudyDate != "20200101"
    assert (day(b.StudyDate) - day(a.StudyDate)) == (day("20200101") - day("20190312"))
    assert a.StudyDate == a.SeriesDate == a.ContentDate
    shift = (day(a.StudyDate) - day("20190312")).days
    assert shift == k.date_shift_days("MRN98765432") and shift < 0
    assert not a.get("PatientBirthDate")  # Z in PS3.15 E.1-1: emptied, never shifted
    # UIDs: same input UID -> same output UID, in nested sequences too, whatever the patient.
    assert a.StudyInstanceUID == c.StudyInstanceUID == k.uid("1.2.3.100") != "1.2.3.100"
    nested = {ds.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID for ds in (a, b, c)}
    assert nested == {k.uid("1.2.3.4.5.6.7")} and "1.2.3.4.5.6.7" not in nested  # remapped, not left as it was
    assert a.SOPInstanceUID != b.SOPInstanceUID and a.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    # A different key gives different UIDs, pseudonyms, record ids and date shifts.
    k2 = Keyed(b"another key")
    assert k2.uid("1.2.3.100") != k.uid("1.2.3.100")
    assert k2.patient_key("dicom", "MRN98765432") != k.patient_key("dicom", "MRN98765432")


def test_records_never_carry_raw_ids(tmp_path):
    """Same planted values through the adapter alone: keys and ids are keyed, paths pseudonymous."""
    root = tmp_path / "in"
    _plant("MR_small.dcm", root / PLANTED_DIR / "mr.dcm", "09")
    records, _ = run_adapter(root)
    other, _ = run_adapter(root, key=b"another key")
    assert records and other
    assert {r.patient_key for r in records}.isdisjoint({r.patient_key for r in other})
    assert {r.id for r in records}.isdisjoint({r.id for r in other})
    for r in records:
        assert PLANTED_DIR not in r.source_uri and "MRN" not in r.source_uri
        assert r.input_img[0].path == r.source_uri

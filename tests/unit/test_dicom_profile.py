"""The PS3.15 Basic Profile scrub: every attribute of the standard's table planted at three depths,
and a walk of the scrubbed dataset proving that only the kept set survives, at every depth."""

from __future__ import annotations

import warnings

import pydicom
import pytest
from pydicom.datadict import dictionary_keyword, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from unimedvl.data.dicom_profile import (
    DUMMY,
    EMPTY,
    IN_TABLE,
    KEPT_TEXT,
    REMOVE,
    TEXT_VRS,
    UIDS,
    DicomScrub,
    _masked,
)
from unimedvl.data.privacy import Keyed

PLANT = "QZXPLANT"


def _value(vr: str, tag: int):
    if vr in ("DA",):
        return "20190314"
    if vr == "TM":
        return "101010"
    if vr == "DT":
        return "20190314101010"
    if vr == "UI":
        return f"1.2.826.0.1.{tag}"
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"):
        return 7
    if vr in ("DS", "IS"):
        return "7"
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return PLANT.encode()
    if vr == "AS":
        return "092Y"
    if vr == "CS":
        return PLANT
    if vr == "PN":
        return f"{PLANT}^JOHN"
    if vr in ("SH", "AE"):
        return PLANT
    if vr == "AT":
        return None
    return f"{PLANT} {tag:08X}"


def _plant_all(ds: Dataset, depth: int) -> int:
    n = 0
    for tag in sorted(IN_TABLE):
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue  # a table entry pydicom's dictionary does not know
        if vr == "SQ":
            item = Dataset()
            item.PatientName = f"{PLANT}^NESTED"
            item.CodeMeaning = f"{PLANT} in a sequence"
            ds.add_new(tag, vr, Sequence([item]))
        elif (value := _value(vr, tag)) is not None:
            ds.add_new(tag, vr, value)
        n += 1
    ds.add_new(0x00291010, "LO", f"{PLANT} private")  # a private attribute
    # kept by the profile, but its free text names the patient (the case the issue observed)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "71020", "C4L", f"Chest for {PLANT}"
    ds.ProcedureCodeSequence = Sequence([code])
    if depth < 2:  # a kept sequence holding everything again, one level deeper
        child = Dataset()
        _plant_all(child, depth + 1)
        ds.ReferencedSeriesSequence = Sequence([child])
    return n


def _walk(ds: Dataset, depth: int = 0):
    for elem in ds:
        yield depth, elem
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _walk(item, depth + 1)


@pytest.fixture(scope="module")
def scrubbed():
    from pydicom.data import get_testdata_file

    warnings.simplefilter("ignore")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    planted = _plant_all(ds, 0)
    assert planted > 600  # the whole table, not a hand-picked list
    touched = DicomScrub(Keyed(b"k"))(ds, "patient-1")
    return ds, touched


def test_only_the_kept_set_survives_at_every_depth(scrubbed):
    ds, touched = scrubbed
    depths = set()
    for depth, elem in _walk(ds):
        depths.add(depth)
        tag, where = int(elem.tag), f"{elem.keyword or elem.tag} at depth {depth}"
        assert not elem.tag.is_private, where
        assert tag not in REMOVE and not _masked(tag), where
        if tag in EMPTY:
            assert elem.value in (None, "", b"", []) or elem.VR == "SQ" and len(elem.value) == 0, where
        elif tag in DUMMY or tag in UIDS:
            assert PLANT not in str(elem.value) and elem.value != _value(elem.VR, tag), where
        elif tag not in IN_TABLE:
            # kept by the profile: coded values, numbers, and the few equipment strings only
            assert elem.VR not in TEXT_VRS or elem.keyword in KEPT_TEXT or elem.keyword == "DeidentificationMethod", where
    assert depths >= {0, 1, 2, 3}
    assert PLANT not in str(ds)  # no planted value anywhere, values and nested items included
    assert "dicom:private_tags" in touched and "dicom:uids" in touched


def test_age_sex_weight_size_are_gone_unless_retained():
    from pydicom.data import get_testdata_file

    def planted():
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
        ds.PatientAge, ds.PatientSex, ds.PatientWeight, ds.PatientSize = "092Y", "F", 70, 1.6
        return ds

    ds = planted()
    DicomScrub(Keyed(b"k"))(ds, "p")
    assert "PatientAge" not in ds and "PatientWeight" not in ds and "PatientSize" not in ds
    assert not ds.get("PatientSex")  # Z: present and empty
    kept = planted()
    DicomScrub(Keyed(b"k"), ("patient_characteristics",))(kept, "p")
    assert (kept.PatientAge, kept.PatientSex) == ("092Y", "F")
    with pytest.raises(ValueError, match="retain option"):
        DicomScrub(Keyed(b"k"), ("keep_everything",))


def test_table_is_the_generated_one():
    # a few rows of PS3.15 Table E.1-1, one per action
    assert 0x00101010 in REMOVE  # Patient's Age: X
    assert 0x00100040 in EMPTY  # Patient's Sex: Z
    assert 0x0020000D in UIDS  # Study Instance UID: U
    assert 0x00080020 in EMPTY | DUMMY  # Study Date: Z
    assert dictionary_keyword(0x00081030) == "StudyDescription" and 0x00081030 in REMOVE

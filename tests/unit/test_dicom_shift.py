"""Longitudinal date shifting keeps a date-time's time part, and a record whose labels carry a lone
surrogate is flagged (mutation testing found both unpinned)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset

from unimedvl.data.dicom_profile import DicomScrub
from unimedvl.data.privacy import Keyed
from unimedvl.data.schema import Record, Turn, text_problem


@pytest.mark.filterwarnings("ignore:The value length")
def test_a_shifted_date_time_keeps_its_time_and_a_date_loses_nothing_else():
    k = Keyed(b"k")
    ds = Dataset()
    ds.AcquisitionDateTime = "20190314101010.5"
    ds.StudyDate = "20190314"
    ds.StudyTime = "101010"
    DicomScrub(k, ("longitudinal_modified_dates",))(ds, "MRN1")
    day = (dt.date(2019, 3, 14) + dt.timedelta(days=k.date_shift_days("MRN1"))).strftime("%Y%m%d")
    assert ds.AcquisitionDateTime == day + "101010.5"
    assert ds.StudyDate == day and ds.StudyTime == "101010"
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod == "PS3.15 E.1 basic profile; UIDs keyed"


def _record(labels):
    return Record(id="r1", dataset="d", modality="none", main_task_type="text_only", sub_task_type="text_only",
                  split="train", lang="en", license="CC0", source_uri="test://", patient_key="p",
                  message=[Turn("human", "q"), Turn("gpt", "a")], labels=labels)


def test_a_lone_surrogate_in_the_labels_is_a_text_problem():
    assert text_problem(_record({"finding": "effusion"})) is None
    assert text_problem(_record({"finding": "caf\u00e9 \U0001F600"})) is None  # a paired surrogate is fine
    assert text_problem(_record({"finding": "bad \udc80"})) == "a text field holds a lone surrogate (not well-formed UTF-8)"


@pytest.mark.filterwarnings("ignore:The value length")
def test_empty_and_dummy_actions_and_what_they_report():
    k = Keyed(b"k")
    ds = Dataset()
    ds.PatientID = "MRN1"  # Z: emptied, reported by name, no date involved
    touched = DicomScrub(k)(ds, "MRN1")
    assert ds.PatientID in ("", None) and touched == ["dicom:PatientID"]
    ds = Dataset()
    ds.StudyDate = "20190314"  # Z on a date: also reported as a date
    assert DicomScrub(k)(ds, "MRN1") == ["dicom:StudyDate", "dicom:dates"] and not ds.StudyDate
    ds = Dataset()
    ds.SpecimenPreparationSequence = [Dataset()]  # Z on a sequence: an empty sequence, not None
    DicomScrub(k)(ds, "MRN1")
    assert ds["SpecimenPreparationSequence"].VR == "SQ" and list(ds.SpecimenPreparationSequence) == []
    ds = Dataset()
    ds.ClinicalTrialSponsorName, ds.FrameAcquisitionDateTime = "Acme Trials", "20190314101010"  # D: dummies
    touched = DicomScrub(k)(ds, "MRN1")
    assert (ds.ClinicalTrialSponsorName, ds.FrameAcquisitionDateTime) == ("ANONYMIZED", "19000101000000")
    assert {"dicom:ClinicalTrialSponsorName", "dicom:FrameAcquisitionDateTime", "dicom:dates"} <= set(touched)


def test_record_problems_name_the_bad_modality():
    from dataclasses import replace

    bad = replace(_record(None), modality="banana")
    assert any(p.startswith("modality 'banana' is not one of") for p in bad.problems()), bad.problems()
    assert _record(None).problems() == []


@pytest.mark.parametrize("vr, dummy", [
    ("DA", "19000101"), ("DT", "19000101000000"), ("TM", "000000"), ("PN", "ANONYMOUS"),
    ("SH", "ANONYMIZED"), ("CS", "ANONYMIZED"), ("AE", "ANONYMIZED"), ("LO", "ANONYMIZED"), ("UT", "ANONYMIZED"),
    *[(vr, 0) for vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD")], ("DS", "0"), ("IS", "0"),
    *[(vr, b"") for vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN")],
])
def test_every_vr_gets_a_valid_dummy_that_holds_nothing_of_the_value(vr, dummy):
    """The D action's replacement per value representation (PS3.15 E.1: a non-zero-length dummy of the
    VR), from the value's VR alone: the original value never shows through."""
    from unimedvl.data.dicom_profile import _dummy

    got = _dummy(vr, Keyed(b"k"), "Acme Trials 20190314")
    assert got == dummy and type(got) is type(dummy)


def test_a_dummy_uid_is_the_keyed_uid_of_the_value():
    from unimedvl.data.dicom_profile import _dummy

    k = Keyed(b"k")
    assert _dummy("UI", k, "1.2.840.99.1") == k.uid("1.2.840.99.1") != _dummy("UI", k, "1.2.840.99.2")


@pytest.mark.filterwarnings("ignore:The value length")
def test_a_shifted_date_is_eight_digits_and_an_unparsable_one_is_emptied():
    """Careless exports: a DA with trailing digits is shifted to a valid DA (the extra digits, which
    only a DT may carry, are dropped), and a date that does not parse is emptied, never kept."""
    k = Keyed(b"k")
    ds = Dataset()
    ds.StudyDate, ds.ContentDate = "2019031412", "not a date"
    DicomScrub(k, ("longitudinal_modified_dates",))(ds, "MRN1")
    day = (dt.date(2019, 3, 14) + dt.timedelta(days=k.date_shift_days("MRN1"))).strftime("%Y%m%d")
    assert ds.StudyDate == day and ds.ContentDate in ("", None)

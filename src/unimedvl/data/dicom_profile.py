"""DICOM de-identification: the whole PS3.15 Annex E Basic Application Level Confidentiality
Profile, applied at every sequence depth.

The action table is not hand-picked: it is dicom-anonymizer's table generated from the standard's
Table E.1-1 (`dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c`, 655 attributes
with their X / Z / D / U actions, including the repeating-group masks for curves and overlays).
dicom-anonymizer's own engine is not used: it does not walk nested sequences the way we need,
writes its own dummy values, and cannot key UIDs and date shifts to our secret.

Actions: X (and X/Z, X/D, X/Z/D, X/Z/U*) remove; Z (and Z/D) empty; D replace by a dummy of the
right VR (a D sequence is emptied); U replace by a keyed UID. Private attributes are removed.
Stricter than the profile, free-text attributes the profile keeps (LO, LT, ST, UT, UC, SH, PN, UR
outside a small coded set, e.g. a CodeMeaning inside ProcedureCodeSequence) are removed too: no
step reads them after scrubbing.

Retain options (PS3.15 E.3), off unless `ingest.dicom_retain` names them:
- `longitudinal_modified_dates`: dates and times are shifted per patient (keyed) instead of
  replaced, so intervals between studies survive;
- `patient_characteristics`: PatientAge, PatientSex, PatientSize, PatientWeight, EthnicGroup,
  SmokingStatus, PregnancyStatus, ... are kept;
- `device_identity`: StationName, DeviceSerialNumber, DetectorID, ... are kept.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as _table

from .privacy import Keyed

RETAIN_OPTIONS = ("longitudinal_modified_dates", "patient_characteristics", "device_identity")
TABLE_SOURCE = "dicom-anonymizer dicomfields_2026c (PS3.15 Table E.1-1)"


def _tags(*names: str) -> tuple[set[int], list[tuple[int, int, int, int]]]:
    exact, masked = set(), []
    for name in names:
        for entry in getattr(_table, name):
            if len(entry) == 2:
                exact.add((entry[0] << 16) | entry[1])
            else:
                masked.append(tuple(entry))
    return exact, masked


REMOVE, REMOVE_MASKED = _tags("X_TAGS", "X_Z_TAGS", "X_D_TAGS", "X_Z_D_TAGS", "X_Z_U_STAR_TAGS")
EMPTY, _ = _tags("Z_TAGS", "Z_D_TAGS")
DUMMY, _ = _tags("D_TAGS")
UIDS, _ = _tags("U_TAGS")
IN_TABLE = REMOVE | EMPTY | DUMMY | UIDS

# PS3.15 Table E.3.x: what each Retain option keeps that the basic profile would remove or empty.
PATIENT_CHARACTERISTICS = {0x00101010, 0x00100040, 0x00101020, 0x00101030, 0x00102160, 0x001021A0,
                           0x001021C0, 0x00101022, 0x00101023, 0x00101024, 0x00102203, 0x00100212}
DEVICE_IDENTITY = {0x00081010, 0x00181000, 0x00181004, 0x00181005, 0x00181007, 0x00181008, 0x0018100B,
                   0x00187004, 0x0018700A, 0x00181009, 0x00181002, 0x0018700C, 0x00181006}
DATE_VRS = ("DA", "DT", "TM")
_BIRTH = {0x00100030, 0x00100032}  # birth date and time: emptied even when other dates are shifted
TEXT_VRS = ("LO", "LT", "ST", "UT", "UC", "SH", "PN", "UR")
# Kept text: coded values of code sequences (no free text) and equipment names no step reads out.
KEPT_TEXT = {"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "LongCodeValue", "URNCodeValue",
             "Manufacturer", "ManufacturerModelName", "SoftwareVersions"}
_CLASS_UIDS = {"SOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID", "ReferencedSOPClassUID",
               "ImplementationClassUID", "CodingSchemeUID", "ContextGroupExtensionCreatorUID"}
DEID_METHOD = "PS3.15 E.1 basic profile; UIDs keyed"  # LO: at most 64 characters


def _masked(tag: int) -> bool:
    group, elem = tag >> 16, tag & 0xFFFF
    return any(group & gm == g and elem & em == e for g, e, gm, em in REMOVE_MASKED)


@dataclass
class DicomScrub:
    """Scrub a pydicom Dataset in place; returns what was touched (`dicom:<Keyword>`...)."""

    keyed: Keyed
    retain: tuple[str, ...] = ()
    touched: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        bad = set(self.retain) - set(RETAIN_OPTIONS)
        if bad:
            raise ValueError(f"unknown DICOM retain option(s) {sorted(bad)}; choose from {RETAIN_OPTIONS}")
        self.kept = set()
        if "patient_characteristics" in self.retain:
            self.kept |= PATIENT_CHARACTERISTICS
        if "device_identity" in self.retain:
            self.kept |= DEVICE_IDENTITY

    def __call__(self, ds: Any, patient: str) -> list[str]:
        touched: set[str] = set()
        shift = self.keyed.date_shift_days(patient) if "longitudinal_modified_dates" in self.retain else None
        self._walk(ds, shift, touched)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.keyed.uid(str(meta.MediaStorageSOPInstanceUID))
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEID_METHOD
        return sorted(touched)

    def _walk(self, d: Any, shift: int | None, touched: set[str]) -> None:
        for elem in list(d):
            tag, kw, vr = int(elem.tag), elem.keyword or "", elem.VR
            name = f"dicom:{kw or f'{tag:08X}'}"
            if elem.tag.is_private:
                del d[elem.tag]
                touched.add("dicom:private_tags")
            elif tag in self.kept:
                continue
            elif shift is not None and vr in DATE_VRS and tag in IN_TABLE and tag not in _BIRTH and elem.value:
                elem.value = _shift(str(elem.value), shift, vr)
                touched.add("dicom:dates")
            elif tag in REMOVE or _masked(tag):
                del d[elem.tag]
                touched |= {name, "dicom:dates"} if vr in DATE_VRS else {name}
            elif tag in EMPTY:
                elem.value = [] if vr == "SQ" else None
                touched |= {name, "dicom:dates"} if vr in DATE_VRS else {name}
            elif tag in DUMMY:
                elem.value = [] if vr == "SQ" else _dummy(vr, self.keyed, elem.value)
                touched |= {name, "dicom:dates"} if vr in DATE_VRS else {name}
            elif tag in UIDS or (vr == "UI" and kw not in _CLASS_UIDS):
                if elem.value:
                    vals = list(elem.value) if elem.VM > 1 else [elem.value]
                    new = [self.keyed.uid(str(v)) for v in vals]
                    elem.value = new if elem.VM > 1 else new[0]
                    touched.add("dicom:uids")
            elif vr == "SQ":
                for item in elem.value or []:
                    self._walk(item, shift, touched)
            elif vr in TEXT_VRS and kw not in KEPT_TEXT:
                del d[elem.tag]  # stricter than the profile: free text nothing reads after this point
                touched.add(name)


def _dummy(vr: str, keyed: Keyed, value: Any) -> Any:
    if vr == "DA":
        return "19000101"
    if vr == "DT":
        return "19000101000000"
    if vr == "TM":
        return "000000"
    if vr == "UI":
        return keyed.uid(str(value))
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"):
        return 0
    if vr in ("DS", "IS"):
        return "0"
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b""
    if vr == "PN":
        return "ANONYMOUS"
    return "ANONYMIZED"  # 10 characters: valid for every text VR, the 16-character SH, CS and AE too


def _shift(value: str, days: int, vr: str) -> str:
    if vr == "TM":
        return value  # a time of day identifies no one once the date is shifted
    digits = value.strip()
    try:
        d = dt.datetime.strptime(digits[:8], "%Y%m%d") + dt.timedelta(days=days)
    except ValueError:
        return ""  # an unparsable date is emptied rather than kept
    return d.strftime("%Y%m%d") + (digits[8:] if vr == "DT" else "")

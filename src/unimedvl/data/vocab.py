"""Controlled values that records carry instead of free text: licences (SPDX ids), dataset slugs,
DICOM body parts. The licence gate and the model card import these lists; ingest maps whatever a
source writes onto them, so no free text of a user's file reaches these columns.
"""

from __future__ import annotations

import functools

from .patterns import bounded

# --- licences --------------------------------------------------------------------------------------

UNKNOWN_LICENSE = "LicenseRef-unknown"
# SPDX ids (and LicenseRef- ids for data licences SPDX does not list) a record may carry.
LICENSES: dict[str, str] = {
    "CC0-1.0": "Creative Commons Zero 1.0 (public domain dedication)",
    "CC-BY-4.0": "Creative Commons Attribution 4.0",
    "CC-BY-SA-4.0": "Creative Commons Attribution-ShareAlike 4.0",
    "CC-BY-NC-4.0": "Creative Commons Attribution-NonCommercial 4.0",
    "CC-BY-NC-SA-4.0": "Creative Commons Attribution-NonCommercial-ShareAlike 4.0",
    "CC-BY-NC-ND-4.0": "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0 (the IU reports)",
    "CC-BY-3.0": "Creative Commons Attribution 3.0",
    "MIT": "MIT",
    "BSD-3-Clause": "BSD 3-Clause",
    "Apache-2.0": "Apache 2.0",
    "LicenseRef-PhysioNet-CHDL-1.5.0": "PhysioNet Credentialed Health Data License 1.5.0 (MIMIC-CXR)",
    "LicenseRef-MNI-ICBM152": "MNI ICBM152 template licence (permissive, attribution)",
    "LicenseRef-matplotlib-sample-data": "matplotlib sample data (matplotlib licence, PSF-style)",
    UNKNOWN_LICENSE: "not known: check the data's terms before training on it",
}
# Licences that forbid commercial use or derivatives: the licence gate and model card flag them.
NON_COMMERCIAL = frozenset({"CC-BY-NC-4.0", "CC-BY-NC-SA-4.0", "CC-BY-NC-ND-4.0", "LicenseRef-PhysioNet-CHDL-1.5.0"})

_LICENSE_ALIASES = {
    "cc0": "CC0-1.0", "cc010": "CC0-1.0", "publicdomain": "CC0-1.0",
    "ccby": "CC-BY-4.0", "ccby40": "CC-BY-4.0", "ccby30": "CC-BY-3.0",
    "ccbysa": "CC-BY-SA-4.0", "ccbysa40": "CC-BY-SA-4.0",
    "ccbync": "CC-BY-NC-4.0", "ccbync40": "CC-BY-NC-4.0",
    "ccbyncsa": "CC-BY-NC-SA-4.0", "ccbyncsa40": "CC-BY-NC-SA-4.0",
    "ccbyncnd": "CC-BY-NC-ND-4.0", "ccbyncnd40": "CC-BY-NC-ND-4.0",
    "mit": "MIT", "bsd3clause": "BSD-3-Clause", "bsd": "BSD-3-Clause", "apache20": "Apache-2.0",
    "physionetcredentialedhealthdatalicense150": "LicenseRef-PhysioNet-CHDL-1.5.0",
    "mniicbm152": "LicenseRef-MNI-ICBM152",
    "matplotlibsampledata": "LicenseRef-matplotlib-sample-data",
    "pydicomdata": "MIT",
}
_NON_ALNUM = bounded(r"[^a-z0-9]+", 200)
_PAREN = bounded(r"\(([^)]{1,60})", 200)
_NOT_SLUG = bounded(r"[^a-z0-9]+", 200)
_NOT_UPPER = bounded(r"[^A-Z]", 64)


@functools.lru_cache(maxsize=1024)
def spdx(value: object) -> str:
    """The SPDX id for a source's licence text ("CC BY 4.0", "MIT (see package)"...), else
    LicenseRef-unknown. Nothing of the original text is kept."""
    text = str(value or "").strip()[:200]
    for known in LICENSES:
        if text.lower() == known.lower():
            return known
    for candidate in (text, text.split("(", 1)[0], text.split(";", 1)[0]):
        key = _NON_ALNUM.sub("", candidate.lower())
        if key in _LICENSE_ALIASES:
            return _LICENSE_ALIASES[key]
    inner = _PAREN.search(text)  # "pydicom-data (MIT; see package)"
    if inner:
        key = _NON_ALNUM.sub("", inner.group(1).split(";")[0].lower())
        if key in _LICENSE_ALIASES:
            return _LICENSE_ALIASES[key]
    return UNKNOWN_LICENSE


# --- dataset slugs ---------------------------------------------------------------------------------

# Every dataset a record may name (DESIGN section 4's sources and the packaged corpus's parts).
DATASETS: dict[str, str] = {
    "slake": "SLAKE (Liu et al., 2021)",
    "vqa_rad": "VQA-RAD (Lau et al., 2018)",
    "path_vqa": "PathVQA (He et al., 2020)",
    "pmc_vqa": "PMC-VQA (Zhang et al., 2023)",
    "omnimedvqa": "OmniMedVQA (Hu et al., 2024), multiple choice, test only",
    "gmai_mmbench": "GMAI-MMBench (Chen et al., 2024) as VLMEvalKit distributes it, multiple choice",
    "iu_xray": "IU X-ray, R2Gen layout (Demner-Fushman et al., 2016)",
    "iu_xray_reports": "IU X-ray reports packaged in torchxrayvision (text only)",
    "mimic_cxr": "MIMIC-CXR (Johnson et al., 2019)",
    "roco": "ROCO (Pelka et al., 2018)",
    "dicom": "a user's DICOM folder",
    "imagefolder": "a user's image folder with a CSV",
    "unimedvl_jsonl": "a user's records in the UniMedVL JSONL schema",
    "phantom": "procedural phantoms",
    "pydicom": "pydicom's test files",
    "pydicom-data": "the pydicom-data package",
    "nibabel": "nibabel's test data",
    "nibabel-spm-example": "nibabel's SPM example volumes",
    "nilearn-mni152": "the MNI152 template in nilearn",
    "dipy": "dipy's test data",
    "skimage": "scikit-image sample images",
    "matplotlib": "matplotlib sample data",
}


@functools.lru_cache(maxsize=1024)
def dataset_slug(value: object, source: str) -> str:
    """`value` when it is a known slug (case and separators aside), else the source's own name."""
    key = _NOT_SLUG.sub("_", str(value or "").strip().lower()[:80]).strip("_")
    for slug in DATASETS:
        if key == _NOT_SLUG.sub("_", slug):
            return slug
    return source if source in DATASETS else "unimedvl_jsonl"


# --- DICOM BodyPartExamined (PS3.16 Annex L defined terms, the ones imaging exports use) ------------

BODY_PARTS: dict[str, str] = {
    "ABDOMEN": "abdomen", "ANKLE": "ankle", "ARM": "arm", "BRAIN": "brain", "BREAST": "breast",
    "CHEST": "chest", "CLAVICLE": "clavicle", "COCCYX": "coccyx", "CSPINE": "cervical spine",
    "ELBOW": "elbow", "EXTREMITY": "extremity", "FOOT": "foot", "HAND": "hand", "HEAD": "head",
    "HEART": "heart", "HIP": "hip", "KNEE": "knee", "LEG": "leg", "LSPINE": "lumbar spine",
    "NECK": "neck", "PELVIS": "pelvis", "SHOULDER": "shoulder", "SKULL": "skull", "SPINE": "spine",
    "TSPINE": "thoracic spine", "WRIST": "wrist", "JAW": "jaw", "LIVER": "liver", "KIDNEY": "kidney",
    "LUNG": "lung", "EYE": "eye", "SINUS": "sinus", "THORAX": "thorax", "ABDOMENPELVIS": "abdomen and pelvis",
    "CHESTABDOMEN": "chest and abdomen", "HEADNECK": "head and neck", "FINGER": "finger", "TOE": "toe",
    "FEMUR": "femur", "TIBIA": "tibia", "HUMERUS": "humerus", "FOREARM": "forearm", "THIGH": "thigh",
    "SACRUM": "sacrum", "RIB": "rib", "SCAPULA": "scapula", "ORBIT": "orbit", "PROSTATE": "prostate",
    "UTERUS": "uterus", "BLADDER": "bladder", "PANCREAS": "pancreas", "SPLEEN": "spleen",
    "THYROID": "thyroid", "AORTA": "aorta", "WHOLEBODY": "whole body", "EXTREMITIES": "extremity",
}


def body_part(value: object) -> str | None:
    """A BodyPartExamined value mapped onto the defined terms (None when it is not one of them)."""
    key = _NOT_UPPER.sub("", str(value or "").upper()[:64])
    return BODY_PARTS.get(key)

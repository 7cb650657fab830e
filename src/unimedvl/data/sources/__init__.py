"""Source adapters: one module per source format. Each exposes NAME, NEEDS_INPUT and `read`."""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module (imported lazily: some adapters need optional packages).
SOURCES = {
    "packaged": "packaged",
    "phantom": "phantom",
    "slake": "slake",
    "vqa_rad": "vqa_rad",
    "path_vqa": "path_vqa",
    "pmc_vqa": "pmc_vqa",
    "omnimedvqa": "omnimedvqa",
    "gmai_mmbench": "gmai_mmbench",
    "iu_xray": "iu_xray",
    "mimic_cxr": "mimic_cxr",
    "roco": "roco",
    "dicom": "dicom",
    "imagefolder": "imagefolder",
    "unimedvl_jsonl": "unimedvl_jsonl",
}


class UnknownSource(ValueError):
    pass


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise UnknownSource(f"unknown source {name!r}; choose one of: {', '.join(sorted(SOURCES))}")
    return importlib.import_module(f"{__name__}.{SOURCES[name]}")

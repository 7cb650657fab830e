"""Typed params: one class per `params.yaml` section, loaded and validated once.

The CLI, the DVC stages and the KFP components all read their settings through `load_params`, so a
misspelt key or an out-of-range value fails in one place with a message that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """One `--source NAME --input PATH` pair (input may be empty for built-in sources)."""

    name: str
    input: str | None = None


class PackagedConfig(_Strict):
    """How the embedded real corpus slices its volumes and frames."""

    slices_per_volume: int = Field(12, ge=1, description="2D slices taken per plane of each 3D volume")
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    frames_per_series: int = Field(8, ge=1, description="frames taken from each multi-frame DICOM / 4D volume")
    reports: bool = True  # include the 3,955 Indiana University chest X-ray reports

    @field_validator("planes")
    @classmethod
    def _planes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = set(v) - {"axial", "coronal", "sagittal"}
        if bad:
            raise ValueError(f"unknown planes {sorted(bad)}; use axial, coronal, sagittal")
        return v


class IngestConfig(_Strict):
    sources: tuple[SourceSpec, ...] = (SourceSpec(name="packaged"),)
    split_fractions: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
    max_side: int = Field(512, ge=0, description="downscale so the longer side is at most this (0 keeps full size)")
    max_pixels: int = Field(64_000_000, gt=0, description="decompression-bomb cap: pixels per image")
    keep_16bit: bool = True  # keep 12-16-bit sources as 16-bit PNG
    allow_burned_in: bool = False  # ingest DICOMs flagged BurnedInAnnotation=YES
    mixture_languages: tuple[str, ...] = ("en",)  # languages the default training mixture takes
    shard_max_mb: int = Field(256, gt=0)
    packaged: PackagedConfig = PackagedConfig()

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        bad = set(v) - {"train", "val", "test"}
        if bad:
            raise ValueError(f"unknown split names {sorted(bad)}; use train, val, test")
        if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError("split fractions must be non-negative and not all zero")
        return v


class Params(_Strict):
    ingest: IngestConfig = IngestConfig()


class ParamsError(ValueError):
    pass


def load_params(path: str | Path | None = "params.yaml") -> Params:
    """Read and validate `params.yaml`; a missing file gives the defaults."""
    if path is None or not Path(path).exists():
        return Params()
    raw: Any = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    known = set(Params.model_fields)
    # Sections of steps this version does not know yet are ignored so old code reads new params.
    try:
        return Params(**{k: v for k, v in raw.items() if k in known})
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ParamsError(f"{path} is invalid:\n" + "\n".join(lines)) from None

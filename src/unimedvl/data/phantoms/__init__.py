"""Phantoms: procedurally generated chest radiographs and brain MRIs with known ground truth.

The public entry for evaluation is `render_from_labels(labels)`: it renders, from one image's
labels (the JSON stored in the `labels` column, `input[i]` / `output[i]`), exactly the pixels that
were stored, so evaluation can build the paired reference of any record, or render "the same
patient without the finding" to check a generated image. Rendering is a pure function of the
labels: anatomy, findings, an integer seed for noise and textures, the contrast (brain), and an
optional degradation (super-resolution and reconstruction inputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._raster import block_mean, clip, to_uint8
from .brain import CONTRASTS, render_brain
from .chest import LOBES, render_chest
from .findings import (
    progress_finding,
    sample_brain_labels,
    sample_chest_labels,
    without_finding,
)

__all__ = [
    "CONTRASTS",
    "LOBES",
    "Rendered",
    "progress_finding",
    "render",
    "render_from_labels",
    "sample_brain_labels",
    "sample_chest_labels",
    "without_finding",
]


class Rendered:
    """A rendered phantom: `image` (uint8), `float_image`, per-finding `findings` masks, `regions`."""

    __slots__ = ("findings", "float_image", "image", "regions")

    def __init__(self, float_image: np.ndarray, findings: list[np.ndarray], regions: dict[str, np.ndarray]):
        self.float_image = float_image
        self.image = to_uint8(float_image)
        self.findings = findings
        self.regions = regions


def render(labels: dict[str, Any], size: int | None = None) -> Rendered:
    """Render with the finding masks (full resolution, before any degradation is applied)."""
    family = labels.get("family")
    if family == "chest":
        r = render_chest(labels, size)
    elif family == "brain":
        r = render_brain(labels, size)
    else:
        raise ValueError(f"labels['family'] must be 'chest' or 'brain', got {family!r}")
    img = r.image
    deg = labels.get("degradation")
    if deg:
        img = degrade(img, deg, labels)
    return Rendered(img, r.findings, r.regions)


def render_from_labels(labels: dict[str, Any], size: int | None = None) -> np.ndarray:
    """The uint8 image one set of image labels describes (chest or brain, by `labels['family']`).

    `size` renders the same anatomy at another resolution (default: `labels['size']`, the stored
    one); for a degraded input (`labels['degradation']`) the result is the degraded image.
    """
    return render(labels, size).image


def degrade(img: np.ndarray, deg: dict[str, Any], labels: dict[str, Any]) -> np.ndarray:
    kind = deg["kind"]
    if kind == "downsample":  # a coarser detector: the mean of the (clipped) signal over each block
        return block_mean(clip(img, 0.0, 1.0), int(deg["factor"]))
    if kind == "kspace_undersample":
        return kspace_undersample(img, deg)
    if kind == "low_dose":
        rng = np.random.default_rng(int(deg["noise_seed"]))
        extra = labels["anatomy"]["noise"] * np.sqrt(1.0 / float(deg["dose_fraction"]) - 1.0)
        return img + extra * (0.6 + 0.4 * np.sqrt(clip(img, 0.0, 1.0))) * rng.standard_normal(img.shape, dtype=np.float32)
    raise ValueError(f"unknown degradation {kind!r}")


def kspace_mask(n: int, deg: dict[str, Any]) -> np.ndarray:
    """Phase-encode lines kept: a fully sampled centre plus random lines, 1/acceleration in all."""
    rng = np.random.default_rng(int(deg["mask_seed"]))
    keep = np.zeros(n, dtype=bool)
    centre = max(2, round(n * float(deg["center_fraction"])))
    lo = n // 2 - centre // 2
    keep[lo : lo + centre] = True
    want = max(centre, round(n / float(deg["acceleration"])))
    rest = np.flatnonzero(~keep)
    keep[rng.choice(rest, size=want - centre, replace=False)] = True
    return keep


def kspace_undersample(img: np.ndarray, deg: dict[str, Any]) -> np.ndarray:
    """Zero-filled reconstruction from undersampled k-space (row-wise phase encoding)."""
    k = np.fft.fftshift(np.fft.fft2(img))
    k[~kspace_mask(img.shape[0], deg), :] = 0.0
    return np.abs(np.fft.ifft2(np.fft.ifftshift(k)))

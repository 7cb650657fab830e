"""Vectorised raster primitives shared by the chest and brain renderers.

Every shape is drawn as an anti-aliased *coverage* map in [0, 1] with compact support (exactly 0
more than about half a pixel outside the shape), so a finding changes no pixel outside its own
region: the counterfactual pair (labels with and without the finding) differs only there.

Coordinates are normalised: x (column) and y (row) run over [0, 1] across the image, y downwards,
pixel centres at (i + 0.5) / size. Coordinate grids and interpolation matrices are cached per size.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DTYPE = np.float32  # 64 x 64 images: float32 halves the memory traffic and speeds up sqrt


def zeros(size: int) -> np.ndarray:
    return np.zeros((size, size), dtype=DTYPE)


class Draws:
    """Uniform draws taken from the generator in one block (one call instead of dozens)."""

    def __init__(self, rng: np.random.Generator, n: int):
        self._u = rng.random(n).tolist()
        self._i = 0

    def __call__(self, lo: float, hi: float, nd: int = 4) -> float:
        v = self._u[self._i]
        self._i += 1
        return round(lo + (hi - lo) * v, nd)


@lru_cache(maxsize=32)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(Y, X) pixel-centre coordinates in [0, 1], shape (size, size), read-only."""
    c = ((np.arange(size, dtype=np.float64) + 0.5) / size).astype(DTYPE)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@lru_cache(maxsize=32)
def axis(size: int) -> np.ndarray:
    """Pixel-centre coordinates of one axis, shape (size,)."""
    a = ((np.arange(size, dtype=np.float64) + 0.5) / size).astype(DTYPE)
    a.flags.writeable = False
    return a


def clip(a, lo: float, hi: float):
    """np.clip without its Python-level overhead (it dominates on 64 x 64 arrays)."""
    return np.minimum(np.maximum(a, lo), hi)


def coverage(signed_dist: np.ndarray, size: int, soft: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage of the region `signed_dist < 0` (distance in normalised units).

    `soft` is the width of the edge ramp in pixels; the ramp is compact (zero beyond soft/2 px).
    """
    return clip(0.5 - signed_dist * (size / soft), 0.0, 1.0)


def ellipse_q(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """The implicit ellipse function ((x-cx)/rx)^2 + ((y-cy)/ry)^2 (1 on the boundary)."""
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2


def ellipse_sd(yy, xx, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """First-order signed distance to an axis-aligned ellipse (exact on the boundary)."""
    dx = xx - cx
    dy = yy - cy
    q = (dx / rx) ** 2 + (dy / ry) ** 2
    g = 2.0 * np.sqrt((dx / (rx * rx)) ** 2 + (dy / (ry * ry)) ** 2)
    return (q - 1.0) / np.maximum(g, 1e-9)


def box(size: int, cy: float, cx: float, ey: float, ex: float, pad: float = 3.0) -> tuple[slice, slice] | None:
    """Row and column slices of the pixels within (ey, ex) of (cy, cx), plus `pad` pixels."""
    y0 = max(0, int(np.floor((cy - ey) * size - pad)))
    y1 = min(size, int(np.ceil((cy + ey) * size + pad)))
    x0 = max(0, int(np.floor((cx - ex) * size - pad)))
    x1 = min(size, int(np.ceil((cx + ex) * size + pad)))
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def ellipse_cov(yy, xx, cy, cx, ry, rx, size: int, soft: float = 1.0) -> np.ndarray:
    """Coverage of an axis-aligned ellipse, computed only inside its bounding box (zero outside)."""
    out = zeros(size)
    b = box(size, cy, cx, ry, rx, 2.0 + soft)
    if b is not None:
        out[b] = coverage(ellipse_sd(yy[b], xx[b], cy, cx, ry, rx), size, soft)
    return out


SUPERSAMPLE = 4


@lru_cache(maxsize=32)
def _subpixel(size: int) -> np.ndarray:
    o = ((np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5) / size
    return o.astype(DTYPE)


def disk_cov(yy, xx, cy: float, cx: float, r: float, size: int) -> np.ndarray:
    """Coverage of a disk of radius r by 4 x 4 supersampling: its sum is pi (r size)^2 within a few
    per cent even at 1.5 px radius (a linear edge ramp overestimates small disks by up to 30 %)."""
    out = zeros(size)
    b = box(size, cy, cx, r, r, 1.0)
    if b is not None:
        o = _subpixel(size)
        dy = (yy[b][:, None, :, None] + o[None, :, None, None] - cy) ** 2  # (h, ss, w, 1)
        dx = (xx[b][:, None, :, None] + o[None, None, None, :] - cx) ** 2  # (h, 1, w, ss)
        inside = (dy + dx) <= r * r
        out[b] = inside.mean(axis=(1, 3), dtype=DTYPE)
    return out


def rotated_ellipse_sd(yy, xx, cy, cx, ry, rx, angle: float):
    """Signed distance to an ellipse whose `rx` axis points along (cos angle, sin angle) in (x, y)."""
    c, s = np.cos(angle), np.sin(angle)
    dx = xx - cx
    dy = yy - cy
    return ellipse_sd(-s * dx + c * dy, c * dx + s * dy, 0.0, 0.0, ry, rx)


def rotated_ellipse_cov(yy, xx, cy, cx, ry, rx, angle: float, size: int, soft: float = 1.0) -> np.ndarray:
    out = zeros(size)
    e = max(ry, rx)
    b = box(size, cy, cx, e, e, 2.0 + soft)
    if b is not None:
        out[b] = coverage(rotated_ellipse_sd(yy[b], xx[b], cy, cx, ry, rx, angle), size, soft)
    return out


def band_cov(coord: np.ndarray, lo: float, hi: float, size: int) -> np.ndarray:
    """Coverage of lo <= coord < hi (coord normalised), anti-aliased at both ends."""
    return clip((coord - lo) * size + 0.5, 0.0, 1.0) * clip((hi - coord) * size + 0.5, 0.0, 1.0)


def lerp(a: np.ndarray, b, t: np.ndarray) -> np.ndarray:
    """a where t == 0 (exactly), b where t == 1."""
    return a + t * (b - a)


@lru_cache(maxsize=64)
def interp_matrix(size: int, k: int) -> np.ndarray:
    """(size, k) smooth (smoothstep) interpolation weights from k control points spanning [0, 1]."""
    pos = axis(size).astype(np.float64) * (k - 1)
    i0 = clip(np.floor(pos).astype(int), 0, k - 2)
    t = pos - i0
    t = t * t * (3.0 - 2.0 * t)
    m = np.zeros((size, k), dtype=DTYPE)
    rows = np.arange(size)
    m[rows, i0] = 1.0 - t
    m[rows, i0 + 1] = t
    m.flags.writeable = False
    return m


def smooth_field(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """A smooth random field (about unit variance at the control points) from a k x k grid."""
    g = rng.standard_normal((k, k), dtype=DTYPE)
    m = interp_matrix(size, k)
    return m @ g @ m.T


def block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by averaging factor x factor blocks (size must be divisible by factor)."""
    h, w = img.shape
    return img.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)

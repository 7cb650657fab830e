"""Safe image and path handling shared by every source adapter.

Everything a user's file can do wrong becomes a `Rejected` with a stable reason code, never an
exception that escapes the adapter.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile, ImageOps, UnidentifiedImageError

from .schema import Image, Rejected

# Decompression-bomb cap (pixels per image); overridden from params at ingest start.
MAX_PIXELS = 64_000_000


# Decoded-size cap (bytes of one decoded image or DICOM frame); overridden from params.
MAX_DECODED_BYTES = 256 << 20


def set_max_pixels(n: int, max_decoded_bytes: int | None = None) -> None:
    global MAX_PIXELS, MAX_DECODED_BYTES
    MAX_PIXELS = int(n)
    PILImage.MAX_IMAGE_PIXELS = int(n)
    if max_decoded_bytes is not None:
        MAX_DECODED_BYTES = int(max_decoded_bytes)


def safe_path(root: Path, rel: str, *, regular: bool = True) -> Path:
    """Resolve `rel` under `root`; reject absolute paths, `..` escapes and symlinks leaving root.

    With `regular` (the default) only a regular file is returned: opening a FIFO would block the
    run forever, and a device or socket is never an image.
    """
    if not rel or not str(rel).strip():
        raise Rejected("missing_field", "the record names no image path")
    rel = str(rel).strip()
    if "\x00" in rel:
        raise Rejected("invalid_value", "the path holds a NUL byte, which no file name can contain")
    try:
        os.fsencode(rel)  # a file name that is not UTF-8 arrives surrogate-escaped and is fine
    except UnicodeEncodeError:
        raise Rejected("invalid_text", "the path holds a lone surrogate that no file name can hold") from None
    try:
        return _resolve_under(root, rel, regular)
    except OSError as e:  # ENAMETOOLONG, ELOOP, EACCES... on the path itself
        why = "file name too long" if e.errno == errno.ENAMETOOLONG else (e.strerror or type(e).__name__)
        raise Rejected("unreadable", f"the path could not be looked up: {why} ({type(e).__name__})") from None


def _resolve_under(root: Path, rel: str, regular: bool) -> Path:
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise Rejected("path_escape", f"image path {rel!r} is absolute; paths must be relative to the input folder")
    root_real = Path(os.path.realpath(root))
    candidate = root / rel
    real = Path(os.path.realpath(candidate))
    if real != root_real and root_real not in real.parents:
        how = "through a symlink" if ".." not in Path(rel).parts else "with '..'"
        raise Rejected("path_escape", f"image path {rel!r} leads outside the input folder {how}")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise Rejected("missing_file", f"image file {rel!r} does not exist under the input folder") from None
    if regular and not stat.S_ISREG(mode):
        raise Rejected("not_a_regular_file", f"{rel!r} is a {_kind(mode)}, not a regular file")
    return real


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "folder"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def read_bytes(path: Path) -> bytes:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Rejected("not_a_regular_file", f"{path.name} is a {_kind(os.stat(path).st_mode)}, not a regular file")
        data = path.read_bytes()
    except OSError as e:
        raise Rejected("unreadable", f"could not read {path.name}: {e.strerror or e}") from None
    if not data:
        raise Rejected("empty_file", f"{path.name} is zero bytes long")
    return data


def prereduce(arr: np.ndarray, max_side: int) -> np.ndarray:
    """`arr` subsampled by the integer stride that keeps its longer side >= 2 * max_side (a copy
    only when it shrinks): cheap, and it bounds the memory of every later step."""
    h, w = arr.shape[:2]
    if not max_side or max(h, w) < 4 * max_side:
        return arr
    k = max(h, w) // (2 * max_side)
    return np.ascontiguousarray(arr[::k, ::k])


def decode_image(data: bytes, name: str = "image", max_side: int = 0) -> np.ndarray:
    """Decode an ordinary image file (PNG, JPEG, TIFF, BMP, ...) to uint8/uint16 grey or RGB.

    EXIF orientation is applied (a phone photo stored on its side is stored upright). With
    `max_side`, a large image is reduced by PIL's box filter right after decoding, before the array
    conversions, so a 7900^2 RGB PNG never exists as several full-size numpy copies."""
    if not data:
        raise Rejected("empty_file", f"{name} is zero bytes long")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise Rejected("image_too_large", f"{name} is {w}x{h} = {w * h:,} pixels, over the cap of {MAX_PIXELS:,}")
                decoded = w * h * len(im.getbands()) * (2 if im.mode.startswith("I;16") else 4 if im.mode in ("I", "F") else 1)
                if decoded > MAX_DECODED_BYTES:
                    raise Rejected("oversized", f"{name} decodes to {decoded:,} bytes, over ingest.max_decoded_bytes = "
                                   f"{MAX_DECODED_BYTES:,}")
                if max_side and max(w, h) >= 4 * max_side and hasattr(im, "draft"):
                    im.draft(im.mode, (w // 2, h // 2))  # JPEG: decode at a reduced scale directly
                im.load()
                im = ImageOps.exif_transpose(im) or im
                w, h = im.size
                if max_side and max(w, h) >= 4 * max_side:
                    try:
                        im = im.reduce(max(w, h) // (2 * max_side))
                    except ValueError:  # modes reduce() does not take (palette, 1-bit): full size
                        pass
                arr = _to_array(im)
    except Rejected:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as e:
        raise Rejected("image_too_large", f"{name}: {e}") from None
    except UnidentifiedImageError:
        raise Rejected("not_an_image", f"{name} is not an image file (its content matches no image format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        if "truncated" in msg or "broken data stream" in msg or "image file is truncated" in msg:
            raise Rejected("truncated_image", f"{name} is truncated: {msg}") from None
        raise Rejected("truncated_image", f"{name} could not be decoded: {msg}") from None
    return arr


def _to_array(im: PILImage.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode in ("I", "F"):
        return window(np.asarray(im, dtype=np.float64), keep16=True)
    if im.mode == "L":
        return np.asarray(im)
    if im.mode in ("1", "P", "LA", "PA"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "L")
    if im.mode == "RGBA":
        bg = PILImage.new("RGB", im.size, (0, 0, 0))
        bg.paste(im, mask=im.getchannel("A"))
        im = bg
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
        return np.ascontiguousarray(arr[..., 0])  # grey stored as RGB: keep one channel
    return arr


def window(
    values: np.ndarray,
    center: float | None = None,
    width: float | None = None,
    *,
    keep16: bool = False,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Map raw intensities (CT HU, MR signal, 12-16-bit X-ray) to uint8, or uint16 when `keep16`.

    Uses the DICOM window when given, else robust percentiles, so a few hot pixels do not flatten
    the contrast of the whole image.
    """
    v = np.asarray(values, dtype=np.float32)  # 24-bit mantissa: exact for 16-bit data, half float64's cost
    # Percentiles of a strided sample of ~64k pixels match the full image's to well under one grey
    # level and cost a fraction of a full partition on large scans.
    sample = v.ravel()[:: max(1, v.size // 65536)]
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        lo, hi = 0.0, 1.0
    elif center is not None and width is not None and width > 1:
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.clip((np.nan_to_num(v, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    if keep16:
        return np.round(scaled * 65535).astype(np.uint16)
    return np.round(scaled * 255).astype(np.uint8)


def encode_png(arr: np.ndarray, path: str = "") -> Image:
    """Encode uint8 grey/RGB or uint16 grey as PNG. Deterministic: no timestamps, fixed settings."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        if arr.ndim != 2:
            arr = arr[..., 0]
        im = PILImage.fromarray(arr)  # 2-D uint16 -> mode I;16 -> 16-bit grey PNG
    elif arr.dtype == np.uint8:
        im = PILImage.fromarray(arr)
    else:
        raise TypeError(f"encode_png takes uint8 or uint16, got {arr.dtype}")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    h, w = arr.shape[:2]
    return Image(png=buf.getvalue(), height=int(h), width=int(w), path=path)


def evenly_spaced(n: int, k: int) -> list[int]:
    """Up to `k` evenly spaced indices into `n` items (all of them when there are fewer): the
    frames of a multi-frame series, the slices of a volume."""
    k = max(1, int(k))
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def resize_max_side(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most `max_side` (0 = keep); keeps dtype."""
    h, w = arr.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return arr
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if arr.dtype == np.uint16:
        im = PILImage.fromarray(arr.astype(np.float32), mode="F").resize(size, PILImage.Resampling.BILINEAR)
        return np.clip(np.asarray(im), 0, 65535).round().astype(np.uint16)
    return np.asarray(PILImage.fromarray(arr).resize(size, PILImage.Resampling.BILINEAR))


def load_image_file(root: Path, rel: str, max_side: int = 0) -> Image:
    """Safe path + read + decode + optional downscale + PNG: the common path of every adapter."""
    path = safe_path(root, rel)
    arr = decode_image(read_bytes(path), name=rel, max_side=max_side)
    return encode_png(resize_max_side(arr, max_side), path=rel)

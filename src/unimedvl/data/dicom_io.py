"""The one DICOM reader every source uses: validate, de-identify, decode, window, downscale.

`read_dicom` turns one file into a `DicomImage` or raises `schema.Rejected` with a stable reason.
The order of work is what keeps identifiers in: the few values needed from identifying attributes
(the patient id that keys the pseudonym, the SOP instance UID that keys de-duplication, and the MR
sequence token guessed from free-text descriptions) are captured first, then `DicomScrub` runs on
the whole dataset, and only then is any other metadata read. Nothing this function returns holds a
name, id, date or UID: `patient` is only ever passed to keyed hashing by the caller, `image_key` is
keyed, and `meta` is built from coded values (CS), numbers and normalised tokens.

Pixels go through pydicom 3's decoders (pylibjpeg plugins: JPEG baseline/extended/lossless,
JPEG-LS, JPEG 2000, RLE), the Modality LUT, the DICOM window (or robust percentiles), MONOCHROME1
inversion and colour-space conversion, then `images.resize_max_side`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import stat
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import IngestConfig
from . import images, vocab
from .patterns import BoundedPattern, bounded, linear
from .dicom_profile import DicomScrub
from .privacy import Keyed, scrub_text
from .schema import Rejected

# DICOM Modality (0008,0060) -> schema modality. Everything else (OT, SC photographs, SEG, RTDOSE,
# SR, a missing value, ...) is not clinical imagery we train on and is quarantined.
ALLOWED_DICOM_MODALITIES: dict[str, str] = {
    "CT": "ct",
    "MR": "mri",
    "CR": "xray",
    "DX": "xray",
    "RG": "xray",
    "MG": "xray",
    "US": "ultrasound",
    "NM": "nuclear",
    "PT": "nuclear",
    "XA": "angiography",
    "RF": "angiography",
    "OP": "fundus",
    "OPT": "oct",
    "SM": "histology",
    "ES": "endoscopy",
}

# The plugins that decode compressed transfer syntaxes, named in the quarantine detail.
_DECODER_HINT = (
    "install the pylibjpeg plugins (pylibjpeg-libjpeg for JPEG/JPEG-LS, pylibjpeg-openjpeg for "
    "JPEG 2000, pylibjpeg-rle for RLE) or python-gdcm"
)
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its .1-.4 multi-frame variants
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNDEFINED = 0xFFFFFFFF


@dataclass
class DicomImage:
    frames: list[np.ndarray]  # uint8 (grey 2-D or RGB HxWx3) or uint16 grey 2-D, windowed and downscaled
    modality: str  # schema modality
    dicom_modality: str
    body_part: str | None  # BodyPartExamined, lower-case ("chest"), or None
    view: str | None  # ViewPosition (PA/AP/LAT...) or None
    laterality: str | None  # ImageLaterality/Laterality (L/R/B) or None
    plane: str | None  # axial/coronal/sagittal from ImageOrientationPatient, or None
    sequence: str | None  # MR contrast token ("T1", "T2", "FLAIR", "PD", "DWI", "ADC", "SWI", "T2*")
    patient: str  # raw PatientID (or StudyInstanceUID): only for keyed pseudonyms; never stored
    image_key: str  # keyed token for the image whatever its encoding (dedupes transfer-syntax variants)
    transfer_syntax: str  # e.g. "JPEG 2000 Image Compression (Lossless Only)"
    bits_stored: int
    phi_removed: list[str] = field(default_factory=list)  # what DicomScrub touched
    meta: dict[str, Any] = field(default_factory=dict)  # de-identified, JSON-able metadata for `labels`
    frame_indices: list[int] = field(default_factory=list)  # which source frames `frames` are
    n_frames: int = 1  # frames in the source object


def read_dicom(path: Path, keyed: Keyed, cfg: IngestConfig, *, max_frames: int = 8) -> DicomImage:
    """Read, de-identify and decode one DICOM file. Raises `schema.Rejected` for anything unusable."""
    path = Path(path)
    with _quiet_pydicom(), warnings.catch_warnings(record=True) as caught:
        # pydicom warns and logs with element values in the message ("Invalid value for VR DA:
        # '19510704'"); none of that may reach a log, so while we hold the raw dataset its warnings
        # are recorded (to spot truncation) and its log records dropped.
        warnings.simplefilter("always")
        return _read(path, keyed, cfg, max_frames, caught)


class _DropWhileReading(logging.Filter):
    """Installed once on the `pydicom` logger; drops its records while this thread reads a file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_state, "depth", 0)


_state = threading.local()
_FILTER = _DropWhileReading()


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    logger = logging.getLogger("pydicom")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def _read(path: Path, keyed: Keyed, cfg: IngestConfig, max_frames: int, caught: list) -> DicomImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        st = path.stat()
    except OSError as e:
        raise Rejected("unreadable", f"the file could not be read: {e.strerror or type(e).__name__}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Rejected("not_a_regular_file", "the path is not a regular file (a FIFO, device or folder)")
    size = st.st_size
    if size == 0:
        raise Rejected("empty_file", "the file is zero bytes long")
    try:
        ds = pydicom.dcmread(path, force=False)
    except InvalidDicomError:
        raise Rejected("not_an_image", "the file is not DICOM (no 'DICM' marker after the 128-byte preamble)") from None
    except (EOFError, struct.error):
        raise Rejected("truncated_image", "the DICOM file ends in the middle of a data element") from None
    except OSError as e:
        raise Rejected("unreadable", f"the file could not be read: {e.strerror or type(e).__name__}") from None
    except Exception as e:  # noqa: BLE001 - a malformed header must quarantine, never crash the run
        raise Rejected("unreadable", f"the DICOM header could not be parsed ({type(e).__name__})") from None
    # Element offsets of a Deflated file point into the inflated stream, not the file: only
    # pydicom's own end-of-data warnings tell truncation there.
    deflated = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) == _DEFLATED
    if _is_truncated(ds, None if deflated else size, caught):
        raise Rejected("truncated_image", "the DICOM file ends before its data does (it was cut short)")

    # --- clinical allow-list and burned-in text --------------------------------------------------
    # Checked first: Modality, SOP class and BurnedInAnnotation identify no one, and a file rejected
    # here (photographs, RT dose, segmentations) is not worth scrubbing.
    dicom_modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        # A Secondary Capture is a screenshot, photograph or scanned film whatever its Modality says
        # ("CT" on a screenshot of a CT viewer): it is not that acquisition.
        if not cfg.allow_secondary_capture:
            raise Rejected(
                "modality_not_allowed",
                f"a Secondary Capture object (SOP class {sop_class}, Modality {_safe_token(dicom_modality, upper=True) or '?'}) "
                "is a screenshot or photograph, not an acquisition (set ingest.allow_secondary_capture to take them)",
            )
        dicom_modality = "OT"
    if not dicom_modality:
        raise Rejected("modality_not_allowed", "the DICOM names no Modality (0008,0060), so it is not known to be clinical imaging")
    if dicom_modality not in ALLOWED_DICOM_MODALITIES and not (dicom_modality == "OT" and cfg.allow_secondary_capture):
        what = " (a Secondary Capture: a photograph or screenshot, not an acquisition)" if sop_class.startswith(_SECONDARY_CAPTURE) else ""
        raise Rejected(
            "modality_not_allowed",
            f"modality {_safe_token(dicom_modality, upper=True) or '?'}{what} is not on the clinical allow-list "
            f"({', '.join(sorted(ALLOWED_DICOM_MODALITIES))})",
        )
    modality = ALLOWED_DICOM_MODALITIES.get(dicom_modality, "other")
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES" and not cfg.allow_burned_in:
        raise Rejected(
            "burned_in_annotation",
            "BurnedInAnnotation is YES: identifying text may be part of the pixels "
            "(set ingest.allow_burned_in to take such images after checking them)",
        )

    # --- capture what is needed from identifying attributes, then scrub before anything else ----
    try:
        patient = _first_text(ds, "PatientID", "StudyInstanceUID", "SOPInstanceUID") or "unknown"
        sop_uid = _first_text(ds, "SOPInstanceUID") or _first_text(getattr(ds, "file_meta", None) or {}, "MediaStorageSOPInstanceUID")
        sequence = _guess_sequence(ds) if str(ds.get("Modality", "")).strip().upper() == "MR" else None
        phi_removed = DicomScrub(keyed, tuple(cfg.dicom_retain))(ds, patient)
    except Rejected:
        raise
    except Exception as e:  # noqa: BLE001
        raise Rejected("unreadable", f"the DICOM header could not be de-identified ({type(e).__name__})") from None

    # --- pixel data, transfer syntax, size cap (all before decoding) -----------------------------
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise Rejected("no_pixel_data", f"the {dicom_modality} object carries no Pixel Data (7FE0,0010)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise Rejected("invalid_value", f"Rows/Columns are {rows}x{cols}: the image has no size")
    n_frames = _int(ds.get("NumberOfFrames"), 1)
    indices = images.evenly_spaced(n_frames, max_frames)
    if rows * cols * len(indices) > images.MAX_PIXELS:
        raise Rejected(
            "image_too_large",
            f"{rows}x{cols} x {len(indices)} frame(s) = {rows * cols * len(indices):,} pixels, "
            f"over the cap of {images.MAX_PIXELS:,}",
        )
    samples = max(1, _int(ds.get("SamplesPerPixel"), 1))
    bytes_per_sample = max(1, (_int(ds.get("BitsAllocated"), 8) + 7) // 8)
    decoded = rows * cols * samples * bytes_per_sample  # one frame: frames are decoded one at a time
    if decoded > cfg.max_decoded_bytes:
        raise Rejected(
            "oversized",
            f"one {rows}x{cols} frame decodes to {decoded:,} bytes ({samples} sample(s) of {bytes_per_sample} byte(s)), "
            f"over ingest.max_decoded_bytes = {cfg.max_decoded_bytes:,}",
        )
    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsuid:
        raise Rejected("unsupported_transfer_syntax", "the file meta information names no Transfer Syntax UID")
    decoder = _decoder_for(tsuid)
    ts_name = str(tsuid.name)

    bits_stored = _int(ds.get("BitsStored"), 0) or _int(ds.get("BitsAllocated"), 8)
    keep16 = bool(cfg.keep_16bit) and bits_stored > 8
    frames: list[np.ndarray] = []
    for idx in indices:
        arr, info = _decode(decoder, ds, idx, ts_name)
        # Shrink by an integer stride before any float work (LUTs, windowing): a 7900^2 frame would
        # otherwise become several 500 MB float64 copies. Rescale and windowing are per-pixel, so
        # they commute with subsampling; the final bilinear resize keeps the image quality.
        arr = images.prereduce(arr, cfg.max_side)
        try:
            out = _display(arr, info, ds, idx, keep16, bits_stored)
        except Exception as e:  # noqa: BLE001 - a palette without its LUT, a text RescaleSlope, a short LUT
            raise Rejected("decode_error", f"the pixels could not be mapped for display ({type(e).__name__}: "
                           f"{_short(e, 120)})") from None
        frames.append(images.resize_max_side(out, cfg.max_side))

    # --- de-identified metadata ----------------------------------------------------------------
    body_part = _body_part(ds)
    view = _safe_token(ds.get("ViewPosition"), upper=True) or None
    laterality = _laterality(ds)
    plane = _plane(ds) if modality in ("ct", "mri", "nuclear") else None
    image_key = keyed.token("dicom-image", sop_uid or _pixel_digest(ds), str(rows), str(cols), str(n_frames), length=24)
    meta: dict[str, Any] = {
        "modality": modality,
        "dicom_modality": dicom_modality,
        "body_part": body_part,
        "view": view,
        "laterality": laterality,
        "plane": plane,
        "sequence": sequence,
        "rows": rows,
        "columns": cols,
        "n_frames": n_frames,
        "pixel_spacing": _pixel_spacing(ds),
        "transfer_syntax": ts_name,
        "bits_stored": bits_stored,
    }
    return DicomImage(
        frames=frames,
        modality=modality,
        dicom_modality=dicom_modality,
        body_part=body_part,
        view=view,
        laterality=laterality,
        plane=plane,
        sequence=sequence,
        patient=patient,
        image_key=image_key,
        transfer_syntax=ts_name,
        bits_stored=bits_stored,
        phi_removed=list(phi_removed),
        meta=meta,
        frame_indices=indices,
        n_frames=n_frames,
    )


# --- reading checks ---------------------------------------------------------------------------------


def _is_truncated(ds: Any, size: int | None, caught: list) -> bool:
    """pydicom reads a cut-short file without complaint; find the element that runs past the end."""
    if any("End of file reached" in str(w.message) or "before delimiter" in str(w.message) for w in caught):
        return True
    if size is None:
        return False
    end = 0
    for d in (getattr(ds, "file_meta", None), ds):
        if d is None:
            continue
        for tag in list(d.keys()):
            raw = d.get_item(tag)
            tell, length, value = getattr(raw, "value_tell", None), getattr(raw, "length", None), getattr(raw, "value", None)
            if tell is None or length is None:
                continue
            if length == _UNDEFINED:
                if isinstance(value, bytes | bytearray):
                    end = max(end, tell + len(value) + 8)
                continue
            if isinstance(value, bytes | bytearray) and len(value) < length:
                return True
            if tell + length > size:
                return True
            end = max(end, tell + length)
    # A cut sequence delimiter puts the end past the file; an element header cut in the middle
    # leaves 1-7 bytes pydicom silently ignores.
    return bool(end) and (end > size or 0 < size - end < 8)


def _decoder_for(tsuid: Any) -> Any:
    from pydicom.pixels import get_decoder

    name = str(tsuid.name)
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise Rejected(
            "unsupported_transfer_syntax",
            f"no decoder handles transfer syntax {name!r} ({tsuid}); the pylibjpeg plugins and python-gdcm "
            "cover JPEG, JPEG-LS, JPEG 2000 and RLE, but not this one",
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise Rejected(
            "unsupported_transfer_syntax",
            f"transfer syntax {name!r} needs a decoder that is not installed ({missing}): {_DECODER_HINT}",
        )
    return decoder


def _decode(decoder: Any, ds: Any, index: int, ts_name: str) -> tuple[np.ndarray, dict[str, Any]]:
    from pydicom.pixels import as_pixel_options

    try:
        arr, info = decoder.as_array(ds, index=index, validate=True, raw=False, **as_pixel_options(ds))
    except NotImplementedError as e:
        raise Rejected("unsupported_transfer_syntax", f"{ts_name}: {_short(e)}; {_DECODER_HINT}") from None
    except (RuntimeError, ValueError, AttributeError, KeyError, TypeError, OSError, MemoryError) as e:
        msg = str(e)
        if "missing dependencies" in msg or "no decoding plugins" in msg.lower() or "plugins are missing" in msg:
            raise Rejected("unsupported_transfer_syntax", f"{ts_name}: {_short(e)}; {_DECODER_HINT}") from None
        if "less than expected" in msg or "insufficient" in msg.lower():
            raise Rejected("truncated_image", f"the pixel data is shorter than Rows x Columns x frames: {_short(e)}") from None
        raise Rejected("corrupt_image", f"the {ts_name} pixel data could not be decoded (corrupt or cut short): {_short(e)}") from None
    return np.asarray(arr), dict(info or {})


def _short(e: BaseException, n: int = 240) -> str:
    text = " ".join(str(e).split())
    text, _ = scrub_text(text)
    return text if len(text) <= n else text[: n - 3] + "..."


# --- pixels -------------------------------------------------------------------------------------------


def _display(arr: np.ndarray, info: dict[str, Any], ds: Any, index: int, keep16: bool, bits_stored: int) -> np.ndarray:
    """Decoded frame -> uint8/uint16 grey or uint8 RGB, the way a viewer would show it."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space

    pi = str(info.get("photometric_interpretation") or ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    if pi == "PALETTE COLOR" and arr.ndim == 2:
        rgb = apply_color_lut(arr, ds)
        if rgb.dtype != np.uint8:
            desc = ds.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 16]
            lut_bits = _int(desc[2] if len(desc) > 2 else 16, 16)
            rgb = (rgb.astype(np.uint32) >> max(lut_bits - 8, 0)).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb)
    if arr.ndim == 3:  # colour (samples per pixel 3)
        if pi.startswith("YBR_FULL"):
            arr = convert_color_space(arr, pi, "RGB")
        if arr.dtype != np.uint8:
            shift = max(_int(info.get("bits_stored"), bits_stored) - 8, 0)
            arr = (arr.astype(np.int64) >> shift).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)

    # Grey: Modality LUT (per-frame functional group first), then VOI window, then MONOCHROME1.
    slope, intercept = _functional(ds, index, "PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept"))
    if slope is not None or intercept is not None:
        values = arr.astype(np.float64) * float(slope if slope is not None else 1.0) + float(intercept or 0.0)
        rescaled = True
    else:
        values = np.asarray(apply_modality_lut(arr, ds))
        rescaled = values.dtype != arr.dtype or not np.array_equal(values, arr)
    center, width = _functional(ds, index, "FrameVOILUTSequence", ("WindowCenter", "WindowWidth"))
    if center is None or width is None:
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    center, width = _first_float(center), _first_float(width)
    if center is not None and width is not None and width > 1:
        out = images.window(values, center, width, keep16=keep16)
    elif bits_stored <= 8 and not rescaled and arr.dtype == np.uint8:
        out = arr  # 8-bit data without a VOI window is shown as stored
    else:
        out = images.window(values, keep16=keep16)
    if pi == "MONOCHROME1":
        out = (np.iinfo(out.dtype).max - out).astype(out.dtype)
    return np.ascontiguousarray(out)


def _pixel_digest(ds: Any) -> str:
    for kw in _PIXEL_KEYWORDS:
        if kw in ds:
            import hashlib

            return "pixels:" + hashlib.sha256(bytes(ds[kw].value or b"")).hexdigest()
    return "no-pixels"


# --- metadata (after scrubbing; coded values only) ----------------------------------------------------


def _functional(ds: Any, index: int, seq: str, keys: tuple[str, ...]) -> tuple[Any, ...]:
    """Values from an enhanced object's per-frame, then shared functional groups (None when absent)."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for g in groups:
        items = g.get(seq)
        if items:
            item = items[0]
            vals = tuple(item.get(k) for k in keys)
            if any(v is not None and v != "" for v in vals):
                return tuple(None if v == "" else v for v in vals)
    return tuple(None for _ in keys)


def _first_float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        if not isinstance(v, str | bytes) and hasattr(v, "__len__"):
            if len(v) == 0:
                return None
            v = v[0]
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _int(v: Any, default: int) -> int:
    try:
        return int(v) if v not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _first_text(ds: Any, *keywords: str) -> str:
    for kw in keywords:
        try:
            v = ds.get(kw)
        except Exception:  # noqa: BLE001
            v = None
        if v is not None and str(v).strip():
            return str(v).strip()
    return ""


def _safe_token(v: Any, *, upper: bool = False) -> str:
    """A coded string (CS) reduced to [A-Za-z0-9 ] and checked by the text scrubber; '' if unsafe."""
    if v is None:
        return ""
    if not isinstance(v, str) and hasattr(v, "__len__"):
        v = v[0] if len(v) else ""
    text = _NOT_TOKEN.sub(" ", str(v)[:256].replace("_", " ")).strip()
    text = " ".join(text.split())[:32]
    if not text:
        return ""
    _, touched = scrub_text(text)
    if touched or _DIGITS4.search(text):
        return ""
    return text.upper() if upper else text.lower()


def _body_part(ds: Any) -> str | None:
    """BodyPartExamined mapped onto DICOM's defined terms (vocab.BODY_PARTS); free text ("SMITH",
    "Chest for Dr X") is left out, never copied into a caption or an answer."""
    return vocab.body_part(ds.get("BodyPartExamined"))


def _laterality(ds: Any) -> str | None:
    for kw in ("ImageLaterality", "Laterality", "FrameLaterality"):
        v = str(ds.get(kw, "") or "").strip().upper()
        if v in ("L", "R", "B"):
            return v
    return None


def _orientation(ds: Any) -> list[float] | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        (iop,) = _functional(ds, 0, "PlaneOrientationSequence", ("ImageOrientationPatient",))
    try:
        vals = [float(x) for x in iop] if iop is not None else None
    except (TypeError, ValueError):
        return None
    return vals if vals and len(vals) == 6 and all(math.isfinite(x) for x in vals) else None


def _plane(ds: Any) -> str | None:
    """The acquisition plane from the slice normal (row x column direction cosines)."""
    iop = _orientation(ds)
    if iop is None:
        return None
    normal = np.cross(np.array(iop[:3]), np.array(iop[3:]))
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        return None
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) / np.linalg.norm(normal) < 0.6:
        return None  # markedly oblique: no honest single answer
    return ("sagittal", "coronal", "axial")[axis]


def _pixel_spacing(ds: Any) -> list[float] | None:
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if ps is None:
        (ps,) = _functional(ds, 0, "PixelMeasuresSequence", ("PixelSpacing",))
    try:
        vals = [round(float(x), 6) for x in ps] if ps is not None else None
    except (TypeError, ValueError):
        return None
    return vals if vals and len(vals) == 2 and all(math.isfinite(x) and x > 0 for x in vals) else None


# --- MR sequence (read BEFORE scrubbing: descriptions are free text the scrub removes) --------------

_CONTRAST = {"T1": "T1", "T2": "T2", "PROTON_DENSITY": "PD", "FLAIR": "FLAIR", "DIFFUSION": "DWI", "T2_STAR": "T2*"}
# Look-around needs Python's `re`: these see at most 4 descriptions of <= 128 characters each.
_NOT_TOKEN = linear(r"[^A-Za-z0-9 ]+")
_DIGITS4 = linear(r"\d{4,}")
_SEPARATORS = linear(r"[_\-/]+")
_SEQUENCE_RULES: list[tuple[str, BoundedPattern]] = [
    ("FLAIR", bounded(r"FLAIR|DARK ?FLUID", 600)),
    ("ADC", bounded(r"(?<![A-Z0-9])ADC(?![A-Z0-9])|APPARENT DIFF", 600)),
    ("DWI", bounded(r"(?<![A-Z0-9])DWI|DIFFUSION|(?<![A-Z0-9])DIFF(?![A-Z])|(?<![A-Z0-9])TRACE(?![A-Z])|EP2D DIFF", 600)),
    ("SWI", bounded(r"(?<![A-Z0-9])SWI(?![A-Z0-9])|(?<![A-Z0-9])SWAN(?![A-Z0-9])|SUSCEPTIBILITY", 600)),
    ("T2*", bounded(r"T2 ?\*|T2 ?STAR", 600)),
    ("T1", bounded(r"(?<![A-Z0-9])T1(?![0-9])|MPRAGE|MP RAGE|(?<![A-Z0-9])SPGR(?![A-Z0-9])|(?<![A-Z0-9])BRAVO(?![A-Z0-9])|T1W", 600)),
    ("T2", bounded(r"(?<![A-Z0-9])T2(?![0-9])|T2W", 600)),
    ("PD", bounded(r"(?<![A-Z0-9])PD(?![A-Z0-9])|PROTON DENSITY", 600)),
]


def _guess_sequence(ds: Any) -> str | None:
    """A normalised MR contrast token; only the token leaves this function, never the text."""
    contrast = str(ds.get("AcquisitionContrast", "") or "").strip().upper()
    if contrast in _CONTRAST:
        return _CONTRAST[contrast]
    texts = []
    for kw in ("SeriesDescription", "ProtocolName", "SequenceName", "PulseSequenceName"):
        v = ds.get(kw)
        if v:
            texts.append(_SEPARATORS.sub(" ", str(v)[:128].upper()))
    joined = " | ".join(texts)
    for token, pattern in _SEQUENCE_RULES:
        if pattern.search(joined):
            return token
    # Classic spin-echo weighting from TR/TE when nothing names the contrast.
    scanning = {str(x).upper() for x in _as_list(ds.get("ScanningSequence"))}
    tr, te = _first_float(ds.get("RepetitionTime")), _first_float(ds.get("EchoTime"))
    if "SE" in scanning and not scanning & {"IR", "EP"} and tr and te:
        if tr < 1000 and te < 40:
            return "T1"
        if tr >= 2000 and te >= 80:
            return "T2"
        if tr >= 2000 and te < 40:
            return "PD"
    return None


def _as_list(v: Any) -> list[Any]:
    if v is None or v == "":
        return []
    if isinstance(v, str | bytes):
        return [v]
    try:
        return list(v)
    except TypeError:
        return [v]

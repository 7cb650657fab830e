"""Per-record checks of the QC step: the "map" phase, one Arrow batch of shard rows at a time.

`check_batch` turns a batch of shard rows into one result row per record: the metadata columns the
Great Expectations suite validates (`expectations.py`), the first image or text problem found (a
reason code from `QC_REASONS`), and the hashes the duplicate search needs after the map phase
(`dedup.py`). The same function runs in the local engine and inside Ray Data's `map_batches`.

Image checks (each image of a record, input and output): decodable; stored as 8-bit grey, 16-bit
grey or 8-bit RGB; the size the row declares is the size of the pixels (the minimum/maximum side
itself is a GE expectation on the declared size, so a row is judged once); not near-constant
(`blank_std`: the standard deviation of the pixels as a fraction of the full range, so a black
background around anatomy is fine and only a truly flat frame fails); not saturated (the fraction
of pixels at the top of the range); aspect ratio within `max_aspect`.

Text checks: every turn non-blank and at most `max_turn_chars`; no residual PHI (the ingest
scrubber's own detector, `privacy.detect`, so QC finds exactly what ingest should have replaced); no mojibake
(U+FFFD, control characters, UTF-8 read as Latin-1); the language tag agrees with the script of
the text.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image as PILImage

from ..config import QCConfig
from ..data import schema
from ..data.privacy import detect as detect_phi
from ..data.patterns import linear
from ..data.schema import IMAGE_TOKEN
from . import dedup

# The reason codes live with the one quarantine schema (data/schema.py); QC_REASONS is re-exported.
QC_REASONS = schema.QC_REASONS

GOOD_MODES = {"L": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "RGB": 8}
MOJIBAKE = linear(r"\x{fffd}|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|[ÃÂ][\x{80}-\x{bf}]|â€[\x{80}-\x{bf}™œ\x{9d}]")
LANG_TAG = r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})?$"
CAPTION_TASKS = {"caption", "report"}
VQA_TASKS = {"vqa_closed", "vqa_open"}

# Expected script per language tag (the ones the sources produce; others are not judged).
_SCRIPT_OF_LANG = {
    **dict.fromkeys(("en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "tr", "id", "vi"), "latin"),
    **dict.fromkeys(("ru", "uk", "bg", "sr", "be"), "cyrillic"),
    "zh": "cjk",
    "ar": "arabic",
    "fa": "arabic",
    "he": "hebrew",
    "el": "greek",
}


def script_of(text: str) -> str | None:
    """The dominant script of the letters in `text` (None with fewer than 4 letters)."""
    counts: dict[str, int] = {}
    for ch in text:
        if not ch.isalpha():
            continue
        o = ord(ch)
        if o < 0x250:
            s = "latin"
        elif 0x370 <= o < 0x400:
            s = "greek"
        elif 0x400 <= o < 0x530:
            s = "cyrillic"
        elif 0x590 <= o < 0x600:
            s = "hebrew"
        elif 0x600 <= o < 0x700:
            s = "arabic"
        elif 0x3040 <= o < 0xA000 or 0xAC00 <= o < 0xD7B0 or 0xF900 <= o < 0xFB00:
            s = "cjk"
        else:
            s = "other"
        # One CJK character carries about a word: weigh it like a few Latin letters.
        counts[s] = counts.get(s, 0) + (3 if s == "cjk" else 1)
    if sum(counts.values()) < 4:
        return None
    return max(counts, key=counts.get)  # type: ignore[arg-type]


# --- images --------------------------------------------------------------------------------------


class ImageFailure(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode(png: bytes) -> tuple[np.ndarray, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(png)) as im:
                im.load()
                mode = im.mode
                arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - any decoder failure is the same verdict for QC
        raise ImageFailure("corrupt_image", f"cannot decode: {type(e).__name__}: {e}") from None
    return arr, mode


def image_stats(arr: np.ndarray, mode: str) -> dict[str, float]:
    full = 65535.0 if arr.dtype == np.uint16 or mode.startswith("I;16") else 255.0
    a = arr.astype(np.float32)
    return {"std": float(a.std() / full), "saturated": float(np.mean(a >= full)), "full": full}


def check_image(img: dict[str, Any], cfg: QCConfig, which: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode and check one image row; raises ImageFailure with the first problem."""
    arr, mode = decode(img["bytes"])
    if mode not in GOOD_MODES:
        raise ImageFailure("unsupported_bit_depth", f"{which} is PIL mode {mode}; expected L, I;16 or RGB")
    h, w = arr.shape[:2]
    if (h, w) != (img["height"], img["width"]):
        raise ImageFailure("size_mismatch", f"{which} decodes to {w}x{h} but the record says {img['width']}x{img['height']}")
    stats = image_stats(arr, mode)
    if stats["std"] < cfg.blank_std:
        raise ImageFailure("blank_image", f"{which} pixel std is {stats['std']:.4f} of the range (< {cfg.blank_std})")
    if stats["saturated"] >= cfg.saturated_fraction:
        raise ImageFailure("saturated_image", f"{which} has {stats['saturated']:.0%} of pixels at the maximum")
    aspect = max(h, w) / max(1, min(h, w))
    if aspect > cfg.max_aspect:
        raise ImageFailure("extreme_aspect_ratio", f"{which} is {w}x{h} (aspect {aspect:.1f} > {cfg.max_aspect})")
    return arr, stats


# --- text ----------------------------------------------------------------------------------------


def check_text(message: list[dict[str, str]], lang: str, cfg: QCConfig) -> tuple[str, str] | None:
    """(reason, detail) of the first text problem, or None. Details never quote the text."""
    for n, turn in enumerate(message, 1):
        value = turn.get("value") or ""
        bare = value.replace(IMAGE_TOKEN, "").strip()
        if not bare and not (turn.get("from") == "human" and IMAGE_TOKEN in value):
            return "text_length", f"turn {n} is blank"
        if len(value) > cfg.max_turn_chars:
            return "text_length", f"turn {n} has {len(value)} characters (> {cfg.max_turn_chars})"
    for n, turn in enumerate(message, 1):
        value = turn.get("value") or ""
        if m := MOJIBAKE.search(value):
            return "mojibake", f"turn {n} has {m.group()!r} at character {m.start()}"
        if spans := detect_phi(value):
            return "residual_phi", f"turn {n} holds a {spans[0].category} value at character {spans[0].start}"
    expected = _SCRIPT_OF_LANG.get((lang or "").split("-")[0])
    found = script_of(" ".join((t.get("value") or "").replace(IMAGE_TOKEN, " ") for t in message))
    if expected and found and found != expected:
        return "language_mismatch", f"tagged {lang!r} but the text is mostly {found} script"
    return None


def answer_text(message: list[dict[str, str]]) -> str | None:
    gpt = [t.get("value") or "" for t in message if t.get("from") == "gpt"]
    return gpt[-1].strip() if gpt else None


def caption_text(sub_task: str, message: list[dict[str, str]]) -> str | None:
    """The caption a length bound applies to: the answer of caption/report, the prompt of t2i."""
    if sub_task in CAPTION_TASKS:
        return answer_text(message)
    if sub_task == "t2i":
        human = [t.get("value") or "" for t in message if t.get("from") == "human"]
        return human[0].replace(IMAGE_TOKEN, "").strip() if human else None
    return None


def message_text(message: list[dict[str, str]]) -> str:
    return "\n".join((t.get("value") or "").replace(IMAGE_TOKEN, " ") for t in message)


def row_key(row: dict[str, Any]) -> str:
    """The record's id; a row without one gets a content hash (GE then quarantines it)."""
    if row.get("id"):
        return str(row["id"])
    blob = json.dumps([row.get("dataset"), row.get("source_uri"), row.get("message")], sort_keys=True, default=str)
    return "noid:" + hashlib.sha1(blob.encode()).hexdigest()[:20]


# --- the map phase -------------------------------------------------------------------------------

RESULT_SCHEMA = pa.schema(
    [
        ("_key", pa.string()),
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("modality", pa.string()),
        ("main_task_type", pa.string()),
        ("sub_task_type", pa.string()),
        ("task", pa.string()),
        ("split", pa.string()),
        ("lang", pa.string()),
        ("license", pa.string()),
        ("patient_key", pa.string()),
        ("turn_roles", pa.string()),
        ("n_image_tokens", pa.int32()),
        ("n_input_img", pa.int32()),
        ("n_output_img", pa.int32()),
        ("img_min_side", pa.int32()),
        ("img_max_side", pa.int32()),
        ("caption_len", pa.int32()),
        ("vqa_answer_len", pa.int32()),
        ("text_len", pa.int32()),
        ("check_reason", pa.string()),
        ("check_detail", pa.string()),
        ("img_pixel_hash", pa.list_(pa.binary())),
        ("img_phash", pa.list_(pa.uint64())),
        ("img_thumb", pa.list_(pa.binary())),
        ("text_hash", pa.string()),
        ("leak_sig", pa.list_(pa.uint32())),
    ]
)

INPUT_COLUMNS = [f.name for f in schema.RECORD_SCHEMA if f.name not in ("phi_removed", "labels", "source_uri")] + [
    "source_uri"
]


def _none_if_blank(v: Any) -> Any:
    return None if v is None or (isinstance(v, str) and not v.strip()) else v


def check_row(row: dict[str, Any], cfg: QCConfig) -> dict[str, Any]:
    message = row.get("message") or []
    sub = row.get("sub_task_type") or ""
    images = list(row.get("input_img") or []) + list(row.get("output_img") or [])
    sides = [s for i in images for s in (i["height"], i["width"])]
    cap = caption_text(sub, message)
    ans = answer_text(message) if sub in VQA_TASKS else None
    out: dict[str, Any] = {
        "_key": row_key(row),
        **{k: _none_if_blank(row.get(k)) for k in ("id", "dataset", "modality", "main_task_type", "sub_task_type",
                                                     "split", "lang", "license", "patient_key")},
        "task": f"{row.get('main_task_type')}/{row.get('sub_task_type')}",
        "turn_roles": ",".join(t.get("from") or "?" for t in message),
        "n_image_tokens": sum((t.get("value") or "").count(IMAGE_TOKEN) for t in message),
        "n_input_img": len(row.get("input_img") or []),
        "n_output_img": len(row.get("output_img") or []),
        "img_min_side": min(sides) if sides else None,
        "img_max_side": max(sides) if sides else None,
        "caption_len": len(cap) if cap is not None else None,
        "vqa_answer_len": len(ans) if ans is not None else None,
        "text_len": sum(len(t.get("value") or "") for t in message),
        "check_reason": None,
        "check_detail": None,
        "img_pixel_hash": [],
        "img_phash": [],
        "img_thumb": [],
        "text_hash": hashlib.sha1(dedup.normalise_text(message_text(message)).encode()).hexdigest(),
        "leak_sig": None,
    }
    failure: tuple[str, str] | None = None
    for n, img in enumerate(images):
        which = f"input image {n + 1}" if n < out["n_input_img"] else f"output image {n + 1 - out['n_input_img']}"
        try:
            arr, _ = check_image(img, cfg, which)
        except ImageFailure as e:
            failure = failure or (e.reason, e.detail)
            out["img_pixel_hash"].append(hashlib.blake2b(img["bytes"], digest_size=16).digest())
            out["img_phash"].append(0)
            out["img_thumb"].append(b"")
            continue
        out["img_pixel_hash"].append(dedup.pixel_hash(arr))
        out["img_phash"].append(dedup.phash(arr))
        out["img_thumb"].append(dedup.thumbnail(arr, cfg.thumbnail_side))
    if failure is None:
        failure = check_text(message, row.get("lang") or "", cfg)
    if failure is not None:
        out["check_reason"], out["check_detail"] = failure
    if sub in cfg.text_leak_tasks:
        text = message_text(message)
        if len(text.strip()) >= cfg.text_leak_min_chars:
            out["leak_sig"] = dedup.minhash(text, cfg.minhash_perm).tolist()
    return out


def check_batch(batch: pa.Table | pa.RecordBatch, cfg: QCConfig) -> pa.Table:
    """The map phase over one batch of shard rows (any subset of the record columns' order)."""
    rows = batch.to_pylist()
    return pa.Table.from_pylist([check_row(r, cfg) for r in rows], schema=RESULT_SCHEMA)

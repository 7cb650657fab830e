"""Helpers the public-dataset adapters share: every one turns user-file trouble into a `Rejected`
with a stable reason code (field checks, text/JSON/CSV reading, a per-path image cache, modality
spelling)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import images
from ..patterns import linear
from ..privacy import scrub_json
from ..schema import MODALITIES, Image, Rejected, is_utf8
from .base import Context

def text_field(entry: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    """`entry[name]` as stripped text; missing/empty -> `missing_field` (or None when optional)."""
    value = entry.get(name) if isinstance(entry, Mapping) else None
    if isinstance(value, float) and math.isnan(value):
        value = None
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Rejected("missing_field", f"field {name!r} is missing or empty")
        return None
    if isinstance(value, dict | list):
        raise Rejected("invalid_value", f"field {name!r} should be text, not a JSON {type(value).__name__}")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def scrub_labels(labels: dict[str, Any]) -> dict[str, Any]:
    """Labels hold source text (answers, findings, keys): scrubbed like the message (ctx.record
    scrubs them again; the text is cached, so the second pass costs a lookup)."""
    return scrub_json(labels)[0]


def under(prefix: str, name: str) -> str:
    """`prefix/name`, refusing an absolute `name` (it would otherwise silently become relative)."""
    name = str(name).strip()
    if not name:
        raise Rejected("missing_field", "the record names no image path")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise Rejected("path_escape", f"image path {name!r} is absolute; paths must be relative to the input folder")
    return f"{prefix.rstrip('/')}/{name}" if prefix else name


def read_text(root: Path, rel: str) -> str:
    """A UTF-8 text file under root (BOM tolerated); symlink escapes, empty and non-UTF-8 files rejected."""
    data = images.read_bytes(images.safe_path(root, rel))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Rejected("invalid_encoding", f"{rel} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


# Parsing limits for untrusted JSON/CSV: beyond them a document or line is quarantined, not parsed.
JSON_MAX_DEPTH = 64  # our layouts nest 3-4 deep; Python's parser itself recurses ~1000 deep
JSON_MAX_INT_DIGITS = 40  # ids and sizes; 4300+ digits is what makes int() raise
JSONL_MAX_LINE_BYTES = 16 << 20
# CSV: a field over the csv module's limit (131,072 characters) is a `malformed_csv` row (iter_csv).


def parse_json(text: str, where: str) -> Any:
    """`json.loads` with depth and integer-size limits; anything hostile -> `malformed_json`."""
    depth = _json_depth(text)
    if depth > JSON_MAX_DEPTH:
        raise Rejected("malformed_json", f"{where} nests {depth} levels deep, over the limit of {JSON_MAX_DEPTH}")
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as e:
        raise Rejected("malformed_json", f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except _TooManyDigits as e:
        raise Rejected("malformed_json", f"{where} holds an integer of {e.args[0]} digits, over the limit of "
                       f"{JSON_MAX_INT_DIGITS}") from None
    except RecursionError:
        raise Rejected("malformed_json", f"{where} nests too deeply to be parsed") from None


class _TooManyDigits(ValueError):
    pass


def _bounded_int(s: str) -> int:
    if len(s.lstrip("-")) > JSON_MAX_INT_DIGITS:
        raise _TooManyDigits(len(s.lstrip("-")))
    return int(s)


def _json_depth(text: str) -> int:
    """Maximum bracket depth outside strings: strings blanked by a linear-time RE2 pass, then the
    depth is a cumulative sum over the remaining brackets (checked before the recursive parser runs)."""
    if "[" not in text and "{" not in text:
        return 0
    bare = _JSON_STRING.sub('""', text).encode("utf-8", "surrogatepass")
    arr = np.frombuffer(bare, dtype=np.uint8)
    steps = np.isin(arr, _OPEN).astype(np.int32) - np.isin(arr, _CLOSE).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


_JSON_STRING = linear(r'"(?:[^"\\]|\\.)*"')
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)


def load_json(root: Path, rel: str) -> Any:
    return parse_json(read_text(root, rel), rel)


def load_json_list(root: Path, rel: str) -> list:
    """A JSON file that must hold a list of questions (SLAKE, VQA-RAD, OmniMedVQA); anything else is
    `malformed_json`."""
    doc = load_json(root, rel)
    if not isinstance(doc, list):
        raise Rejected("malformed_json", f"{rel} should hold a JSON list of questions, not a {type(doc).__name__}")
    return doc


def split_from_path(rel: str) -> str | None:
    """The split a file's name or folders spell (`data/validation-0000.parquet` -> val), if any."""
    p = Path(rel)
    tokens = [t for t in _NAME_SEPARATORS.split(p.name.removesuffix("".join(p.suffixes))[:512]) if t]
    for token in tokens[:1] + list(reversed(p.parent.parts)) + tokens[1:]:
        if split := Context.normalise_split(token):
            return split
    return None


_NAME_SEPARATORS = linear(r"[-_. ]+")


def _not_utf8(cell: str) -> bool:
    return not is_utf8(cell)  # surrogate escapes stand for bytes that were not UTF-8


def iter_csv(root: Path, rel: str, delimiter: str = ",") -> Iterator[tuple[str, dict[str, str] | Rejected]]:
    """Rows of a CSV with a header, as (item, row-dict) or (item, Rejected) — one entry per row.

    Bytes that are not UTF-8 are caught per row (`invalid_encoding`), rows whose field count does
    not match the header are `malformed_csv`; blank lines are not items and are skipped.
    """
    try:
        data = images.read_bytes(images.safe_path(root, rel))
    except Rejected as e:
        yield rel, e
        return
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    last_error_line = -1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            item = f"{rel}:{reader.line_num}"
            if reader.line_num == last_error_line:  # the reader cannot move past this line
                yield item, Rejected("malformed_csv", f"{item}: {e}; the rest of the file could not be parsed")
                return
            last_error_line = reader.line_num
            yield item, Rejected("malformed_csv", f"{item}: {e}")
            continue
        item = f"{rel}:{reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            if any(_not_utf8(c) for c in row):
                yield rel, Rejected("invalid_encoding", f"the header of {rel} is not valid UTF-8; no row could be read")
                return
            header = [c.strip() for c in row]
            continue
        if any(_not_utf8(c) for c in row):
            yield item, Rejected("invalid_encoding", f"row {item} is not valid UTF-8")
        elif len(row) != len(header):
            yield item, Rejected("malformed_csv", f"row {item} has {len(row)} fields, the header has {len(header)}")
        else:
            yield item, dict(zip(header, row, strict=True))


def csv_entries(root: Path, rel: str) -> list[tuple[str, None, tuple[str, dict[str, str] | Rejected]]]:
    """Every row of a CSV, enumerated before any is processed, as `Context.each` entries
    (item, None, (item, row or its Rejected))."""
    return [(item, None, (item, row)) for item, row in iter_csv(root, rel)]


def count_csv_rows(path: Path) -> int:
    with open(path, "rb") as fh:
        return max(0, sum(1 for line in fh if line.strip()) - 1)


class ImageCache:
    """Decode each image path once per `read()` (many questions share one image).

    Failures are remembered too, so every question on a broken image gets the same quarantine reason
    without reading the file again. Bounded by `max_bytes` of PNG (least recently used goes first).
    """

    def __init__(self, root: Path, max_side: int, *, max_bytes: int = 512 << 20):
        self.root = root
        self.max_side = max_side
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Image, list[str]] | Rejected] = OrderedDict()
        self._bytes = 0

    def load(self, rel: str, extra_identifiers: tuple[str, ...] = ()) -> tuple[Image, list[str]]:
        """The image at `rel` (path scrubbed of IDs) and what the scrubbing touched."""
        hit = self._items.get(rel)
        if hit is None:
            try:
                # The path stays as read: ctx.record replaces its identifying components by keyed
                # pseudonyms (the one place that holds the key).
                hit = (images.load_image_file(self.root, rel, self.max_side), [])
            except Rejected as e:
                hit = e
            self._put(rel, hit)
        else:
            self._items.move_to_end(rel)
        if isinstance(hit, Rejected):
            raise Rejected(hit.reason, hit.detail)
        return hit

    def put_bytes(self, key: str, hit: tuple[Image, list[str]] | Rejected) -> None:
        self._put(key, hit)

    def get(self, key: str) -> tuple[Image, list[str]] | Rejected | None:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def _put(self, key: str, hit: tuple[Image, list[str]] | Rejected) -> None:
        self._items[key] = hit
        self._bytes += len(hit[0].png) if isinstance(hit, tuple) else 0
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old[0].png) if isinstance(old, tuple) else 0


def load_images(cache: ImageCache, rels: list[str], extra_identifiers: tuple[str, ...] = ()) -> tuple[list[Image], list[str]]:
    imgs, touched = [], []
    for rel in rels:
        img, t = cache.load(rel, extra_identifiers)
        imgs.append(img)
        touched += t
    return imgs, touched


# --- modality vocabulary ---------------------------------------------------------------------------

_MODALITY_ALIASES = {
    "x-ray": "xray", "x ray": "xray", "xray": "xray", "cr": "xray", "dx": "xray", "radiograph": "xray",
    "radiography": "xray", "plain film": "xray", "cxr": "xray", "mammography": "xray", "mg": "xray",
    "ct": "ct", "cta": "ct", "computed tomography": "ct",
    "mri": "mri", "mr": "mri", "magnetic resonance": "mri", "magnetic resonance imaging": "mri",
    "us": "ultrasound", "ultrasound": "ultrasound", "sonography": "ultrasound", "echo": "ultrasound",
    "nm": "nuclear", "pt": "nuclear", "pet": "nuclear", "spect": "nuclear", "nuclear medicine": "nuclear",
    "xa": "angiography", "angio": "angiography", "dsa": "angiography",
    "op": "fundus", "cfp": "fundus", "fundus photography": "fundus",
    "pathology": "histology", "histopathology": "histology", "sm": "histology", "microscopy": "histology",
    "ihc": "histology", "es": "endoscopy", "dermoscopy": "dermatology", "derm": "dermatology",
    "ot": "other", "text": "none",
}


def normalise_modality(value: Any) -> str | None:
    """A source's modality spelling -> one of schema.MODALITIES, or None when it is not recognised."""
    if value is None:
        return None
    v = " ".join(str(value).strip().lower()[:200].split())
    if v in MODALITIES:
        return v
    return _MODALITY_ALIASES.get(v)


# Keyword patterns for free text (captions, questions). Acronyms are matched as whole words; "MR",
# "PET", "SPECT" and "OCT" only in capitals (lower case they are ordinary words), "US" never.
_MODALITY_WORDS: list[tuple[str, Any]] = [
    ("ct", linear(r"(?i:\b(?:ct|cta|hrct|cect|ncct|computed tomogra\w*|computeri[sz]ed tomogra\w*)\b)")),
    ("mri", linear(r"(?i:\b(?:mri|mra|mrcp|magnetic resonance|t[12][- ]?weighted|t[12]w|flair|"
                       r"diffusion[- ]weighted)\b)")),
    ("mri", linear(r"\bMR\b")),
    ("xray", linear(r"(?i:\b(?:x-?rays?|radiographs?|radiography|radiographic|cxr|plain films?|chest films?|"
                        r"mammogra\w*|fluoroscop\w*|orthopantomogra\w*)\b)")),
    ("ultrasound", linear(r"(?i:\b(?:ultraso\w*|sonogra\w*|echocardiogra\w*|doppler)\b)")),
    ("nuclear", linear(r"(?i:\b(?:scintigra\w*|bone scan|positron emission)\b)")),
    ("nuclear", linear(r"\b(?:PET|SPECT)\b")),  # capitals only: "pet" is an animal
    ("angiography", linear(r"(?i:\b(?:angiogra\w*|arteriogra\w*|venogra\w*)\b)")),
    ("fundus", linear(r"(?i:\bfundus\b)")),
    ("histology", linear(r"(?i:\b(?:histolog\w*|histopatholog\w*|h&e|hematoxylin|haematoxylin|"
                             r"immunohistochem\w*|micrograph\w*)\b)")),
    ("endoscopy", linear(r"(?i:\b(?:endoscop\w*|colonoscop\w*|gastroscop\w*)\b)")),
    ("oct", linear(r"\b(?:optical coherence tomography|OCT)\b")),
]


def modalities_in(text: str) -> set[str]:
    found = {mod for mod, pattern in _MODALITY_WORDS if pattern.search(text or "")}
    if found & {"ct", "mri"}:
        found.discard("angiography")  # CT / MR angiography are CT / MR
    if "nuclear" in found:
        found -= {"ct", "mri"}  # PET-CT, SPECT/CT, PET-MR: the functional modality
    if "endoscopy" in found and "ultrasound" in found:
        found.discard("endoscopy")  # endoscopic ultrasound
    return found


def modality_from_text(text: str, default: str = "other") -> str:
    """The one modality a caption/question names, else `default` (none or several named)."""
    found = modalities_in(text)
    return found.pop() if len(found) == 1 else default

"""De-identification at ingest: keyed pseudonyms, DICOM header scrubbing, report-text scrubbing.

Every pseudonym, record id, UID remap and date shift is an HMAC-SHA256 under a secret key that
lives outside the repository. An unkeyed hash would be reversible for guessable identifiers (MRNs
are short sequential numbers), so there is deliberately no fallback constant.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import deid
from .patterns import bounded

KEY_ENV = "UNIMEDVL_SECRET_KEY"  # hex or any string
KEY_FILE_ENV = "UNIMEDVL_SECRET_FILE"
DEFAULT_KEY_FILE = Path("~/.config/unimedvl/secret.key")


def load_key() -> bytes:
    """The de-identification key: $UNIMEDVL_SECRET_KEY, else the key file (created on first use)."""
    if value := os.environ.get(KEY_ENV):
        return value.encode()
    path = Path(os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        print(
            f"unimedvl: created a new de-identification key at {path} (keep it secret and back it up:"
            f" pseudonyms and ids are derived from it; set {KEY_FILE_ENV} or {KEY_ENV} to use another)",
            file=sys.stderr,
        )
    return path.read_text().strip().encode()


@dataclass(frozen=True)
class Keyed:
    """Keyed hashing for one ingest run."""

    key: bytes

    def digest(self, *parts: str) -> bytes:
        # surrogatepass: a file name that is not UTF-8 (os.walk hands it over with surrogate
        # escapes) still gets its stable pseudonym instead of an encoding error.
        return hmac.new(self.key, "\x1f".join(parts).encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def token(self, *parts: str, length: int = 16) -> str:
        return self.digest(*parts).hex()[:length]

    def record_id(self, source: str, source_id: str) -> str:
        return self.token("record", source, source_id, length=24)

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 - a handful of Keyed objects per run
    def patient_key(self, source: str, patient: str) -> str:
        return "pt-" + self.token("patient", source, patient, length=16)

    def uid(self, original: str) -> str:
        # "2.25." + a 128-bit integer is the DICOM-sanctioned form of a UUID-derived UID (PS3.5 B.2).
        return "2.25." + str(int.from_bytes(self.digest("uid", original)[:16], "big"))

    def date_shift_days(self, patient: str) -> int:
        # Shift back by 1..3650 days; one shift per patient keeps intervals between studies intact.
        return -(1 + int.from_bytes(self.digest("dateshift", patient)[:4], "big") % 3650)

    def fraction(self, *parts: str) -> float:
        """A deterministic number in [0, 1) derived from `parts`; used for splits."""
        return int.from_bytes(self.digest("fraction", *parts)[:8], "big") / 2**64


def split_for(keyed: Keyed, group: str, fractions: dict[str, float]) -> str:
    """Deterministic split for a patient/volume/report group, so one group never straddles splits."""
    return _split_for(keyed, group, tuple(sorted(fractions.items())))


@functools.lru_cache(maxsize=1 << 16)
def _split_for(keyed: Keyed, group: str, fraction_items: tuple[tuple[str, float], ...]) -> str:
    fractions = dict(fraction_items)
    total = sum(fractions.values())
    x = keyed.fraction("split", group) * total
    for name in ("train", "val", "test"):
        x -= fractions.get(name, 0.0)
        if x < 0:
            return name
    return "train"


# --- text and paths ------------------------------------------------------------------------------

# The one text scrubber (unimedvl.data.deid): `scrub_text(text)` -> (text with [NAME], [DATE]...
# placeholders, categories touched); `scrub_text(text, mode="drop")` removes the values instead
# (the server's door). `detect(text)` gives the spans (QC's residual-PHI check).
scrub_text = deid.scrub_text
detect = deid.detect


def scrub_json(value: Any) -> tuple[Any, list[str]]:
    """`scrub_text` over every string inside a JSON-able value (labels, metadata), keys included."""
    touched: list[str] = []
    return _scrub_value(value, touched), touched


def _scrub_value(value: Any, touched: list[str]) -> Any:
    if isinstance(value, str):
        text, t = scrub_text(value)
        if t:
            touched += t
        return text
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = _scrub_value(k, touched) if isinstance(k, str) else k
            out[key] = v if v is None or isinstance(v, bool | int | float) else _scrub_value(v, touched)
        return out
    if isinstance(value, list | tuple):
        return [v if v is None or isinstance(v, bool | int | float) else _scrub_value(v, touched) for v in value]
    return value


_LETTERS = str.maketrans("0123456789abcdef", "ghijklmnopqrstuv")
# Separators that split a stored path or URI into components: folders, `file#fragment`, `file:line`.
_SEPARATORS = bounded(r"([/#:=])", 4096)
_EXTENSION = bounded(r"(.+?)((?:\.[A-Za-z][A-Za-z0-9]{0,4}){1,2})", 512)
_ID_RUN = bounded(r"\d{5,}", 512)


def component_token(keyed: Keyed, part: str, kind: str = "p") -> str:
    """A path component's keyed pseudonym: letters only (a run of digits would read as an ID)."""
    return kind + "-" + keyed.token("path", part, length=12).translate(_LETTERS)


def scrub_path(rel_path: str, extra_identifiers: tuple[str, ...] = (), keyed: Keyed | None = None) -> tuple[str, list[str]]:
    """A relative path or URI with its structure kept and every component that is not a plain
    file-system token (it holds a name, an ID, a date: whatever `detect` finds, a 5+ digit run, or
    one of `extra_identifiers`) replaced: by its keyed pseudonym when `keyed` is given (the same
    component always gets the same token), else by a placeholder. The extension is kept."""
    cleaned, touched = _scrub_path_cached(str(rel_path), tuple(extra_identifiers), keyed)
    return cleaned, list(touched)


@functools.lru_cache(maxsize=1 << 16)
def _scrub_path_cached(rel_path: str, extra_identifiers: tuple[str, ...], keyed: Keyed | None) -> tuple[str, tuple[str, ...]]:
    touched: set[str] = set()
    out = []
    for piece in _SEPARATORS.split(rel_path.replace("\\", "/")[:4096]):
        if not piece or _SEPARATORS.fullmatch(piece) or piece in (".", ".."):
            out.append(piece)
            continue
        m = _EXTENSION.fullmatch(piece)
        stem, ext = (m.group(1), m.group(2)) if m else (piece, "")
        words = stem.replace("_", " ").replace("^", " ").replace("-", " ").replace(".", " ")
        spans = deid.detect(stem) or deid.detect(words)
        hits = {f"path:{s.category}" for s in spans}
        if _ID_RUN.search(stem):
            hits.add("path:id")
        if any(i and len(i) >= 3 and i.lower() in piece.lower() for i in extra_identifiers):
            hits.add("path:identifier")
        if hits:
            touched |= hits
            out.append((component_token(keyed, stem) if keyed is not None else "[REDACTED]") + ext)
        else:
            out.append(piece)
    return "".join(out), tuple(sorted(touched))

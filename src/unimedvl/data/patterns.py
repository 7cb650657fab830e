"""The only two ways a pattern may meet untrusted text: RE2 (linear time) or a length bound.

Python's `re` backtracks: a crafted 64 KB token makes a harmless-looking e-mail pattern run for
seconds, an hour at 1 MB. `linear` compiles with google-re2 (no backreferences or look-around, and
time linear in the input). `bounded` keeps `re` for the few patterns that need look-around, on
inputs cut to `max_chars` first (DICOM LO/SH values are at most 64 characters), so their worst case
is a constant. `tests/unit/test_deid.py` checks that every pattern in the data package is one of
the two.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.max_mem = 64 << 20  # the combined scrubber pattern's DFA; RE2 falls back to NFA beyond it
_OPTIONS.log_errors = False  # a bad pattern raises; RE2 must not also print to stderr


_NO_CAPTURE = re2.Options()
_NO_CAPTURE.max_mem = 256 << 20
_NO_CAPTURE.log_errors = False
_NO_CAPTURE.never_capture = True


def linear(pattern: str, *, capture: bool = True) -> Any:
    """An RE2 pattern (inline flags such as `(?i:...)` instead of `re` flags). Without `capture`
    RE2 stays on its DFA, ~30x faster for a big alternation whose groups are not needed."""
    return re2.compile(pattern, _OPTIONS if capture else _NO_CAPTURE)


class BoundedPattern:
    """A `re` pattern that only ever sees the first `max_chars` characters of its input."""

    def __init__(self, pattern: str, max_chars: int, flags: int = 0):
        self.pattern = re.compile(pattern, flags)
        self.max_chars = int(max_chars)

    def search(self, text: str) -> re.Match[str] | None:
        return self.pattern.search(text[: self.max_chars])

    def match(self, text: str) -> re.Match[str] | None:
        return self.pattern.match(text[: self.max_chars])

    def fullmatch(self, text: str) -> re.Match[str] | None:
        return self.pattern.fullmatch(text) if len(text) <= self.max_chars else None

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        return self.pattern.finditer(text[: self.max_chars])

    def sub(self, repl: Any, text: str) -> str:
        return self.pattern.sub(repl, text[: self.max_chars])

    def split(self, text: str) -> list[str]:
        return self.pattern.split(text[: self.max_chars])


def bounded(pattern: str, max_chars: int, flags: int = 0) -> BoundedPattern:
    return BoundedPattern(pattern, max_chars, flags)


def is_safe(obj: Any) -> bool:
    """Whether `obj` is a pattern this module made (what the engine test asserts)."""
    return isinstance(obj, BoundedPattern) or type(obj).__module__.startswith("re2")

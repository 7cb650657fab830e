"""What every source adapter gets (a `Context`) and what it yields (records or quarantine items)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ...config import IngestConfig
from .. import vocab
from ..privacy import Keyed, scrub_json, scrub_path, scrub_text, split_for
from ..patterns import linear
from ..schema import SPLITS, SUB_TO_MAIN, Image, Quarantine, Record, Rejected, Turn, clean_text, text_problem

Item = Record | Quarantine


class Source(Protocol):
    """A source module exposes NAME, NEEDS_INPUT and `read(root, ctx)`.

    It may also expose `count(root, ctx) -> int` for the progress bar's total: the number of items
    it will yield, or, when it sets `PROGRESS_BY_UNITS = True`, the number of input units (files,
    volumes) it reads, calling `ctx.unit_done()` after each one (one DICOM file yields many records).
    """

    NAME: str
    NEEDS_INPUT: bool

    def read(self, root: Path | None, ctx: Context) -> Iterator[Item]: ...


# Split names as public datasets spell them -> ours.
SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val", "validate": "val",
    "test": "test", "testing": "test", "tst": "test",
}


@dataclass
class Context:
    source: str
    keyed: Keyed
    cfg: IngestConfig
    step: str = "ingest"
    on_unit: Callable[[int], None] | None = None
    _seen_ids: set[str] = field(default_factory=set)

    def unit_done(self, n: int = 1) -> None:
        """Report that `n` input units were read (drives the progress bar when `count` exists)."""
        if self.on_unit is not None:
            self.on_unit(n)

    # --- quarantine ---------------------------------------------------------------------------
    def reject(self, item: str, reason: str, detail: str, source_id: str | None = None) -> Quarantine:
        # A quarantine line must always be writable: text that is not valid UTF-8 (a lone surrogate
        # from a file name or a JSON escape) is made so first, and a scrubber failure costs the
        # detail, never the line.
        item, detail = clean_text(str(item)), clean_text(str(detail))
        try:
            safe_item, _ = scrub_path(item, keyed=self.keyed)
        except Exception:  # noqa: BLE001 - see above
            safe_item = "[ITEM]"
        try:
            # A path quoted in a detail ("image file 'Smith_John/x.png' does not exist") is named by
            # its pseudonymous form, like the item itself; an absolute path never appears at all.
            detail = _QUOTED_PATH.sub(lambda m: "'" + self._safe_path(m.group(1)) + "'", detail)
            safe_detail, _ = scrub_text(detail)
        except Exception as e:  # noqa: BLE001 - see above
            safe_detail = f"(the detail could not be de-identified: {type(e).__name__})"
        rid = self.keyed.record_id(self.source, source_id) if source_id is not None else None
        return Quarantine(step=self.step, source=self.source, item=safe_item, reason=reason,
                          detail=safe_detail, id=rid)

    def _safe_path(self, path: str) -> str:
        # Every quoted string goes through scrub_path, a bare word too: a file named 'Smith_John' has no
        # separator or dot, and scrub_text alone does not see the name in it. Plain words come back as they are.
        if path.startswith(("/", "\\", "~")) or (len(path) > 1 and path[1] == ":"):
            return "<an absolute path>"
        return scrub_path(path, keyed=self.keyed)[0]

    def rejected(self, item: str, err: Rejected, source_id: str | None = None) -> Quarantine:
        return self.reject(item, err.reason, err.detail, source_id)

    def failed(self, item: str, err: BaseException, source_id: str | None = None) -> Quarantine:
        """Any exception raised while one item was read, decoded, scrubbed or built -> its quarantine line."""
        reason, detail = classify_failure(err)
        return self.reject(item, reason, detail, source_id)

    def attempt(self, item: str, fn: Callable[..., Any], *args: Any) -> tuple[Any, Quarantine | None]:
        """`fn(*args)` for a step that is not an item (loading a file of items): (value, None), or
        (None, the quarantine line for `item`) when it raises."""
        try:
            return fn(*args), None
        except Exception as e:  # noqa: BLE001 - same guard as `each`
            return None, self.failed(item, e)

    def each(self, entries: Iterable[tuple[str, str | None, Any]],
             process: Callable[[Any], Item | Iterable[Item] | None]) -> Iterator[Item]:
        """The one per-item guard every adapter runs its items through.

        `entries` are (item name, source id or None, payload), enumerated before any is processed;
        `process(payload)` returns the item's record(s) or quarantine line(s). Whatever it raises
        (a `Rejected`, a decoder's bug, a RecursionError from a hostile JSON value) becomes one
        quarantine line for that item, and the next item is processed. An item's records are
        collected before they are yielded, so a failure half-way never leaves half an item behind.
        """
        for item, source_id, payload in entries:
            try:
                out = process(payload)
                results = [] if out is None else [out] if isinstance(out, Record | Quarantine) else list(out)
            except Exception as e:  # noqa: BLE001 - the point of the guard: one item, one line
                yield self.failed(item, e, source_id)
                continue
            yield from results

    # --- splits -------------------------------------------------------------------------------
    def split_of(self, group: str) -> str:
        """Deterministic split for a patient / volume / report group of this source."""
        return split_for(self.keyed, f"{self.source}/{group}", self.cfg.split_fractions)

    @staticmethod
    def normalise_split(value: Any) -> str | None:
        return SPLIT_ALIASES.get(str(value).strip().lower()) if value is not None else None

    # --- records ------------------------------------------------------------------------------
    def record(
        self,
        *,
        source_id: str,
        patient: str,
        sub_task: str,
        modality: str,
        license: str,
        source_uri: str,
        message: list[tuple[str, str]],
        input_img: list[Image] = (),  # type: ignore[assignment]
        output_img: list[Image] = (),  # type: ignore[assignment]
        split: str | None = None,
        lang: str = "en",
        labels: dict[str, Any] | None = None,
        dataset: str | None = None,
        phi_removed: list[str] = (),  # type: ignore[assignment]
        scrub: bool = True,
    ) -> Record:
        """Build a record: keyed id and pseudonym, split by patient group, text and path scrubbed.

        Raises `Rejected` when a field is missing or out of its set, so the caller quarantines it.
        """
        if sub_task not in SUB_TO_MAIN:
            raise Rejected("invalid_value", f"task {sub_task!r} is not one of {sorted(SUB_TO_MAIN)}")
        if split is not None and split not in SPLITS:
            raise Rejected("invalid_value", f"split {split!r} is not one of {SPLITS}")
        touched = list(phi_removed)
        turns = []
        for role, value in message:
            if value is None or not str(value).strip():
                raise Rejected("missing_field", f"the {'question' if role == 'human' else 'answer'} text is empty")
            text = str(value)
            if scrub:
                text, t = scrub_text(text)
                touched += t
            turns.append(Turn(role, text))
        uri, t = scrub_path(source_uri, keyed=self.keyed)
        touched += t
        if labels is not None:  # labels are source text (answers, findings, keys): always scrubbed
            labels, t = scrub_json(labels)
            touched += [x.replace("text:", "labels:") for x in t]
        scrubbed_images = []
        for img in [*input_img, *output_img]:
            path, t = scrub_path(img.path, keyed=self.keyed)
            touched += t
            scrubbed_images.append(replace(img, path=path) if path != img.path else img)
        input_img, output_img = scrubbed_images[: len(input_img)], scrubbed_images[len(input_img):]
        rec = Record(
            id=self.keyed.record_id(self.source, source_id),
            dataset=vocab.dataset_slug(dataset or self.source, self.source),
            modality=modality,
            main_task_type=SUB_TO_MAIN[sub_task],
            sub_task_type=sub_task,
            split=split or self.split_of(patient),
            lang=lang,
            license=vocab.spdx(license),
            source_uri=uri,
            patient_key=self.keyed.patient_key(self.source, patient),
            message=turns,
            input_img=list(input_img),
            output_img=list(output_img),
            phi_removed=sorted(set(touched)),
            labels=labels,
        )
        if problems := rec.problems():
            raise Rejected("invalid_value", "; ".join(problems))
        if problem := text_problem(rec):
            raise Rejected("invalid_text", problem)
        if rec.id in self._seen_ids:
            raise Rejected("invalid_value", f"source id {source_id!r} occurs twice in this source")
        self._seen_ids.add(rec.id)
        return rec


def guess_lang(text: str) -> str:
    """Cheap script-based language tag: enough to separate SLAKE's Chinese questions from English."""
    if any("\u4e00" <= ch <= "\u9fff" for ch in text):
        return "zh"
    if any("\u0400" <= ch <= "\u04ff" for ch in text):
        return "ru"
    return "en"


_QUOTED_PATH = linear(r"'([^'\n]{1,1000})'")


def classify_failure(err: BaseException) -> tuple[str, str]:
    """A stable quarantine reason and a short, scrubbable detail (with the exception class) for `err`."""
    if isinstance(err, Rejected):
        return err.reason, err.detail
    name = type(err).__name__
    if isinstance(err, UnicodeError):
        return "invalid_text", f"text is not well-formed UTF-8 ({name})"
    if isinstance(err, RecursionError):
        return "malformed_json", f"the value is nested too deeply to be read ({name})"
    if isinstance(err, MemoryError):
        return "oversized", f"the item needs more memory than is available ({name})"
    if isinstance(err, OSError):
        why = "file name too long" if err.errno == errno.ENAMETOOLONG else (err.strerror or "I/O error")
        return "unreadable", f"the file could not be read: {why} ({name})"
    return "decode_error", f"the item could not be processed ({name}: {_first_line(err)})"


def _first_line(err: BaseException, n: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= n else text[: n - 3] + "..."

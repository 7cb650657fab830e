"""GMAI-MMBench (Chen et al., NeurIPS 2024 D&B): multiple-choice medical VQA, as VLMEvalKit distributes it.

Layout, checked against open-compass/VLMEvalKit (commit e8e78f05, August 2026):
`vlmeval/dataset/image_mcq.py`, class `GMAIMMBenchDataset`, downloads `GMAI-MMBench_VAL.tsv` and
`GMAI_mm_bench_TEST_part_1.tsv` .. `_part_11.tsv`, reads them as tab-separated tables (pandas'
dialect: a header row, fields with tabs, quotes or newlines in double quotes) and groups results by
the `split` column and by `clinical VQA task`, `department` and `perceptual granularity`; its parent
`ImageMCQDataset.build_prompt` takes the choices from the columns `A`, `B`, ... that are not empty
and an optional `hint`; `answer` is the correct letter. `vlmeval/dataset/image_base.py` decodes
`image` as base64, and an `image` of at most 64 characters is the `index` of another row whose image
it shares; a meta-only TSV has `image_path` instead (`vlmeval/smp/file.py`, `localize_df`, writes
`X_local.tsv` with absolute `image_path`s: skipped beside `X.tsv`; alone, its rows are
`path_escape`). Published users of the VAL file also read `category` and `modality` (the MMBench
family has `l2-category`). Column names are matched case-insensitively (VLMEvalKit lower-cases
them), except the choice letters. Only TSVs with "gmai" in their name are read: VLMEvalKit keeps
every benchmark's TSV in one LMUData folder.

Records: `vqa_closed`, split from the `split` column (VAL -> val, TEST -> test), else from the file
name (`..._VAL.tsv`, `..._TEST_part_N.tsv`), else test. The human turn lists the choices and the
answer is `L: text` (sources/_mcq.py), so evaluation scores it by option letter. Licence Apache-2.0
(the Hugging Face cards of OpenGVLab/GMAI-MMBench and VLMEval/GMAI-MMBench).

The VAL file is 9 GB, so files are streamed row by row (never read whole) and each row is bounded
before it is parsed: a line longer than the base64 of an `ingest.max_decoded_bytes` image (plus
1 MiB for the other columns) is `oversized` without being held in memory. Images referred to by
index are resolved from the decoded-image cache (bounded); a row referring to a later row waits
until the end of its file.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import images
from ..schema import Image, Quarantine, Record, Rejected, is_utf8
from . import _mcq
from ._common import ImageCache, scrub_labels, split_from_path, text_field, under
from .base import Context

NAME = "gmai_mmbench"
NEEDS_INPUT = True
LICENSE = "Apache-2.0"
REF_MAX_CHARS = 64  # VLMEvalKit: an image cell this short is another row's index
ROW_SLACK = 1 << 20  # bytes a row may hold beside its image
# Metadata columns kept in the labels (lower-cased name -> label key).
META = {"category": "category", "l2-category": "l2_category", "modality": "source_modality",
        "clinical vqa task": "clinical_vqa_task", "department": "department",
        "perceptual granularity": "perceptual_granularity", "original task": "original_task"}
_OVERSIZED = "\x1funimedvl-oversized-line\x1f"


def _files(root: Path) -> list[str]:
    """The GMAI TSVs under `root`. VLMEvalKit keeps every benchmark's TSV in one LMUData folder, so only
    names with "gmai" in them are read; `X_local.tsv` (VLMEvalKit's copy of `X.tsv` with the images
    moved out to absolute paths) is skipped beside its original."""
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tsv")
                   if "gmai" in p.name.lower() and not p.is_dir())
    names = set(found)
    return [f for f in found if not (f.endswith("_local.tsv") and f.removesuffix("_local.tsv") + ".tsv" in names)]


@dataclass
class _File:
    rel: str
    split: str | None
    by_index: dict[str, str] = field(default_factory=dict)  # row index -> cache key of its decoded image
    deferred: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    final: bool = False


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    files = _files(root)
    if not files:
        yield ctx.reject(".", "missing_file", "no GMAI *.tsv file in the input folder (VLMEvalKit's "
                         "GMAI-MMBench_VAL.tsv or GMAI_mm_bench_TEST_part_N.tsv)")
        return
    cache = ImageCache(root, ctx.cfg.max_side)
    seen: dict[str, str] = {}  # split/index -> the item that used it first
    line_cap = ctx.cfg.max_decoded_bytes * 4 // 3 + ROW_SLACK
    for rel in files:
        f = _File(rel, split_from_path(rel))
        for item, row in _rows(root, rel, line_cap):
            if isinstance(row, Rejected):
                yield ctx.rejected(item, row)
                continue
            yield from ctx.each([(item, None, (item, row))], lambda p, f=f: _record(ctx, cache, seen, f, *p))
        f.final = True
        yield from ctx.each([(item, None, (item, row)) for item, row in f.deferred],
                            lambda p, f=f: _record(ctx, cache, seen, f, *p))


def count(root: Path, ctx: Context) -> int | None:
    """Lines after each header (a progress total: a quoted field spanning lines counts more than once)."""
    try:
        total = 0
        for rel in _files(root):
            n, last = 0, b"\n"
            with open(images.safe_path(root, rel), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    n += chunk.count(b"\n")
                    last = chunk[-1:]
            total += max(0, n + (last != b"\n") - 1)
        return total
    except Exception:  # noqa: BLE001 - progress total only
        return None


# --- streaming the TSV ------------------------------------------------------------------------------


def _lines(fh, cap: int) -> Iterator[str]:
    """The file's lines, each at most `cap` characters: a longer one is skipped in chunks (never held
    whole) and stands as a marker line that the row reader turns into an `oversized` row."""
    while True:
        line = fh.readline(cap + 1)
        if not line:
            return
        if len(line) > cap and not line.endswith("\n"):
            while (rest := fh.readline(1 << 20)) and not rest.endswith("\n"):
                pass
            yield _OVERSIZED + "\n"
            continue
        yield line


def _rows(root: Path, rel: str, cap: int) -> Iterator[tuple[str, dict[str, str] | Rejected]]:
    """(item, row) or (item, Rejected) per data row of one TSV, streamed."""
    try:
        path = images.safe_path(root, rel)
        fh = open(path, encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115 - closed below
    except Rejected as e:
        yield rel, e
        return
    except OSError as e:
        yield rel, Rejected("unreadable", f"{rel} could not be opened: {e.strerror or type(e).__name__}")
        return
    with fh:
        # strict: a stray quote that would swallow the rows after it is an error here, not a silent merge
        reader = csv.reader(_lines(fh, cap), delimiter="\t", strict=True)
        header: list[str] | None = None
        last_error_line = -1
        while True:
            try:
                row = _next(reader, cap)
            except StopIteration:
                return
            except csv.Error as e:
                item = f"{rel}:{reader.line_num}"
                stuck = reader.line_num == last_error_line
                last_error_line = reader.line_num
                yield item, Rejected("malformed_csv", f"{item}: {e}" + ("; the rest of the file could not be parsed"
                                                                         if stuck else ""))
                if stuck:
                    return
                continue
            except OSError as e:
                yield f"{rel}:{reader.line_num}", Rejected("unreadable", f"{rel}: reading stopped: {e.strerror or e}")
                return
            item = f"{rel}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if any(_OVERSIZED in cell for cell in row):
                yield item, Rejected("oversized", f"row {item} is longer than {cap:,} bytes: its image would be larger "
                                     "than ingest.max_decoded_bytes allows")
                continue
            if header is None:
                if not all(is_utf8(c) for c in row):
                    yield rel, Rejected("invalid_encoding", f"the header of {rel} is not valid UTF-8; no row could be read")
                    return
                header = [c.strip().removeprefix("\ufeff") for c in row]
                continue
            if not all(is_utf8(c) for c in row):
                yield item, Rejected("invalid_encoding", f"row {item} is not valid UTF-8")
            elif len(row) != len(header):
                yield item, Rejected("malformed_csv", f"row {item} has {len(row)} fields, the header has {len(header)}")
            else:
                yield item, dict(zip(header, row, strict=True))


def _next(reader, cap: int) -> list[str]:
    # The csv module's field limit is process-wide: raised only for this one parse step.
    old = csv.field_size_limit(max(cap, csv.field_size_limit()))
    try:
        return next(reader)
    finally:
        csv.field_size_limit(old)


# --- one row ----------------------------------------------------------------------------------------


def _record(ctx: Context, cache: ImageCache, seen: dict[str, str], f: _File, item: str,
            row: dict[str, str]) -> Record | None:
    cols = {k.strip().lower(): v for k, v in row.items() if k not in _mcq.LETTERS}
    index = text_field(cols, "index")
    raw_split = text_field(cols, "split", required=False)
    split = Context.normalise_split(raw_split) if raw_split else f.split or "test"
    if split is None:
        raise Rejected("invalid_value", f"split {raw_split!r} is not VAL or TEST")
    key = f"{split}/{index}"
    if not f.final and _waits(f, cols):
        f.deferred.append((item, row))  # refers to a later row's image: read at the end of the file
        return None
    if key in seen:
        raise Rejected("duplicate_id", f"index {index!r} of the {split} split was already used by {seen[key]}; the "
                       "later row is quarantined")
    seen[key] = item
    img = _image(ctx, cache, f, index, cols)
    question = text_field(cols, "question")
    hint = text_field(cols, "hint", required=False)
    choices = {k: _mcq.one_line(v) for k in _mcq.LETTERS if (v := text_field(row, k, required=False))}
    _mcq.require_choices(choices, "A..E")
    label = _mcq.letter(text_field(cols, "answer"), choices, "answer")
    human, gpt = _mcq.turns(f"Hint: {hint}\n{question}" if hint else question, choices, label)
    raw_modality = text_field(cols, "modality", required=False)
    return ctx.record(
        source_id=key,
        patient=ctx.keyed.token("image", hashlib.sha256(img.png).hexdigest()),
        sub_task="vqa_closed",
        modality=_mcq.benchmark_modality(raw_modality),
        license=LICENSE,
        source_uri=f"{f.rel}#index={index}",
        message=[("human", human), ("gpt", gpt)],
        input_img=[img],
        split=split,
        labels=scrub_labels(_mcq.labels(choices, label, **{
            label_key: text_field(cols, col, required=False) for col, label_key in META.items()})),
    )


def _cell(cols: dict[str, str]) -> str:
    return "".join((cols.get("image") or "").split())


def _waits(f: _File, cols: dict[str, str]) -> bool:
    """Whether the row's image is another row's that has not been read yet."""
    cell = _cell(cols)
    return 0 < len(cell) <= REF_MAX_CHARS and cell not in f.by_index


def _image(ctx: Context, cache: ImageCache, f: _File, index: str, cols: dict[str, str]) -> Image:
    """The row's image: base64 in `image`, another row's by index, or a file at `image_path`."""
    cell = _cell(cols)
    if not cell:
        path = text_field(cols, "image_path", required=False)
        if path is None:
            raise Rejected("missing_field", "field 'image' (base64) is missing or empty, and there is no 'image_path'")
        f.by_index[index] = under("", path)
        return cache.load(f.by_index[index])[0]
    if len(cell) <= REF_MAX_CHARS:
        target = f.by_index.get(cell)
        if target is None:
            raise Rejected("missing_field", f"the image cell refers to row index {cell!r}, which holds no image in "
                           f"{f.rel}")
        return _cached(cache, target)
    if cell.startswith("["):
        raise Rejected("invalid_value", "the image cell holds a list of images; one image per question is read")
    try:
        data = base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Rejected("invalid_base64", f"the image cell is not valid base64 ({type(e).__name__}: {e})") from None
    if not data:
        raise Rejected("invalid_base64", "the image cell decodes to no bytes")
    digest = "b64:" + hashlib.sha256(data).hexdigest()
    if cache.get(digest) is None:
        try:
            arr = images.decode_image(data, name=f"the image of row {index}", max_side=ctx.cfg.max_side)
            hit: tuple[Image, list[str]] | Rejected = (
                images.encode_png(images.resize_max_side(arr, ctx.cfg.max_side), path=f"{f.rel}#index={index}"), [])
        except Rejected as e:
            hit = e
        cache.put_bytes(digest, hit)
    f.by_index[index] = digest
    return _cached(cache, digest)


def _cached(cache: ImageCache, key: str) -> Image:
    hit: Any = cache.get(key)
    if hit is None:  # evicted, or a file path (image_path rows): a file is read again, base64 is gone
        if key.startswith("b64:"):
            raise Rejected("missing_field", "the row index this image cell refers to is too far back to be kept; "
                           "embed the image in the row")
        return cache.load(key)[0]
    if isinstance(hit, Rejected):
        raise Rejected(hit.reason, hit.detail)
    return hit[0]

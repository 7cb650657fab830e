"""PathVQA (He et al., 2020): pathology VQA, as the Hugging Face parquet export lays it out.

Layout: any `*.parquet` under the input folder (e.g. `data/train-00000-of-00002.parquet`,
`data/validation-*.parquet`, `data/test-*.parquet`) with columns `image` (a struct `{bytes, path}`
as `datasets` writes it, or raw bytes), `question`, `answer`.

The split comes from the file name. The patient group is a keyed token of the image bytes' hash, so
every question on one image shares a pseudonym. Yes/no answers are `vqa_closed`, the rest `vqa_open`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .. import images
from ..schema import IMAGE_TOKEN, Image, Quarantine, Record, Rejected
from .base import Context
from ._common import ImageCache, scrub_labels, split_from_path, text_field

NAME = "path_vqa"
NEEDS_INPUT = True
LICENSE = "MIT"
COLUMNS = ("image", "question", "answer")
YES_NO = {"yes", "no"}
BATCH_ROWS = 256


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet") if p.is_file())


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    files = _files(root)
    if not files:
        yield ctx.reject(".", "missing_file", "no *.parquet file under the input folder")
        return
    cache = ImageCache(root, ctx.cfg.max_side)
    for rel in files:
        split = split_from_path(rel)
        try:
            pf = pq.ParquetFile(images.safe_path(root, rel))
            present = [c for c in COLUMNS if c in pf.schema_arrow.names]
            total = pf.metadata.num_rows
        except Rejected as e:
            yield ctx.rejected(rel, e)
            continue
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            yield ctx.reject(rel, "unreadable", f"{rel} is not a readable parquet file: {e}")
            continue
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=present or None):
                cols = {c: batch.column(c).to_pylist() for c in present}
                entries = [(f"{rel}#{row + j}", f"{rel}#{row + j}", (row + j, {c: cols[c][j] for c in present}))
                           for j in range(batch.num_rows)]
                row += batch.num_rows
                yield from ctx.each(entries, lambda p, rel=rel, split=split:
                                    _record(ctx, cache, rel, p[0], split, p[1], f"{rel}#{p[0]}"))
        except Exception as e:  # noqa: BLE001 - a damaged row group: account for the rows not read
            if row < total:
                yield ctx.reject(rel, "unreadable", f"{rel}: rows {row}..{total - 1} could not be read: {e}")


def count(root: Path, ctx: Context) -> int | None:
    try:
        return sum(pq.ParquetFile(root / rel).metadata.num_rows for rel in _files(root))
    except Exception:  # noqa: BLE001 - progress total only
        return None


def _record(ctx: Context, cache: ImageCache, rel: str, row: int, split: str | None, entry: dict[str, Any],
            source_id: str) -> Record:
    question = text_field(entry, "question")
    answer = text_field(entry, "answer")
    img, touched, group = _image(ctx, cache, rel, row, entry.get("image"))
    return ctx.record(
        source_id=source_id,
        patient=group,
        sub_task="vqa_closed" if answer.lower() in YES_NO else "vqa_open",
        modality="histology",
        license=LICENSE,
        source_uri=f"{rel}#row={row}",
        message=[("human", f"{IMAGE_TOKEN}\n{question}"), ("gpt", answer)],
        input_img=[img],
        split=split,
        labels=scrub_labels({"answer": answer}),
        phi_removed=touched,
    )


def _image(ctx: Context, cache: ImageCache, rel: str, row: int, value: Any) -> tuple[Image, list[str], str]:
    """Decode the image cell (struct {bytes, path} or raw bytes) once per distinct image."""
    data, name = None, ""
    if isinstance(value, dict):
        data, name = value.get("bytes"), str(value.get("path") or "")
    elif isinstance(value, bytes | bytearray):
        data = value
    elif isinstance(value, str):
        name = value
    if data is not None and not isinstance(data, bytes | bytearray):
        raise Rejected("invalid_value", f"the image cell holds a {type(data).__name__}, not image bytes")
    if data is None and name:
        # A path-only cell: an image file inside the input folder.
        img, touched = cache.load(name)
        return img, touched, ctx.keyed.token("image", hashlib.sha256(img.png).hexdigest())
    if data is None:
        raise Rejected("missing_field", "field 'image' is missing or empty")
    label = f"{rel}#{row}"
    data = bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    hit = cache.get(digest)
    if hit is None:
        try:
            arr = images.decode_image(data, name=label, max_side=ctx.cfg.max_side)
            hit = (images.encode_png(images.resize_max_side(arr, ctx.cfg.max_side), path=name or label), [])
        except Rejected as e:
            hit = e
        cache.put_bytes(digest, hit)
    if isinstance(hit, Rejected):
        raise Rejected(hit.reason, hit.detail)
    return hit[0], hit[1], ctx.keyed.token("image", digest)

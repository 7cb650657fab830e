"""IU X-ray (Demner-Fushman et al., 2016; Open-i) in the R2Gen layout.

Layout: `annotation.json` = `{"train": [...], "val": [...], "test": [...]}`, each entry
`{"id", "report", "image_path": [...], "split"}`, and `images/<image_path>`.

Each entry becomes one `report` record: all its views as input (one `<image>` each), the report as
the answer. The R2Gen split is kept. The patient group is the id before the first "_"
(`CXR2384_IM-0942` -> `CXR2384`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..schema import IMAGE_TOKEN, Quarantine, Record, Rejected
from .base import Context
from ._common import ImageCache, load_images, load_json, text_field, under

NAME = "iu_xray"
NEEDS_INPUT = True
LICENSE = "CC BY-NC-ND 4.0"
ANNOTATION = "annotation.json"
IMAGE_DIR = "images"


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    doc, bad = ctx.attempt(ANNOTATION, _load, root)
    if bad is not None:
        yield bad
        return
    cache = ImageCache(root, ctx.cfg.max_side)
    items: list[tuple[str, str | None, Any]] = []
    for key in sorted(doc):
        entries = doc[key]
        if not isinstance(entries, list):
            yield ctx.reject(f"{ANNOTATION}#{key}", "malformed_json", f"{key!r} should hold a list of studies")
            continue
        for i, entry in enumerate(entries):
            source_id = entry.get("id") if isinstance(entry, dict) and isinstance(entry.get("id"), str) else None
            items.append((f"{ANNOTATION}#{key}/{i}", source_id, (key, entry)))
    yield from ctx.each(items, lambda p: _entry(ctx, cache, *p))


def _load(root: Path) -> dict:
    doc = load_json(root, ANNOTATION)
    if not isinstance(doc, dict):
        raise Rejected("malformed_json", f"{ANNOTATION} should map split names to lists, not be a {type(doc).__name__}")
    return doc


def _entry(ctx: Context, cache: ImageCache, key: str, entry: Any) -> Record:
    if not isinstance(entry, dict):
        raise Rejected("malformed_json", f"entry is a JSON {type(entry).__name__}, not an object")
    return _record(ctx, cache, key, entry, text_field(entry, "id"))


def count(root: Path, ctx: Context) -> int | None:
    try:
        doc = load_json(root, ANNOTATION)
        return sum(len(v) for v in doc.values() if isinstance(v, list))
    except Exception:  # noqa: BLE001 - progress total only
        return None


def _record(ctx: Context, cache: ImageCache, key: str, entry: dict[str, Any], source_id: str) -> Record:
    report = text_field(entry, "report")
    paths = entry.get("image_path")
    if isinstance(paths, str):
        paths = [paths]
    if not paths or not isinstance(paths, list):
        raise Rejected("missing_field", "field 'image_path' is missing or empty")
    rels = [under(IMAGE_DIR, text_field({"image_path": p}, "image_path")) for p in paths]
    raw_split = text_field(entry, "split", required=False) or key
    split = Context.normalise_split(raw_split)
    if split is None:
        raise Rejected("invalid_value", f"split {raw_split!r} is not train, val or test")
    imgs, touched = load_images(cache, rels)
    view = "these chest X-ray views" if len(imgs) > 1 else "this chest X-ray"
    return ctx.record(
        source_id=source_id,
        patient=source_id.split("_", 1)[0],
        sub_task="report",
        modality="xray",
        license=LICENSE,
        source_uri=f"{ANNOTATION}#{source_id}",
        message=[("human", f"{IMAGE_TOKEN}\n" * len(imgs) + f"Write the radiology report for {view}."),
                 ("gpt", report)],
        input_img=imgs,
        split=split,
        phi_removed=touched,
    )

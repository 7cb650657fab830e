"""A generic image folder described by a CSV, and the helpers the public-dataset adapters share.

Layout: a CSV (`metadata.csv`, or the single `*.csv` in the folder) with the columns

    image      path of the image, relative to the folder            (required)
    text       the answer / caption / report / generation prompt    (required)
    task       caption | report | vqa_open | vqa_closed | t2i        (default caption)
    question   the human turn (required for vqa_open / vqa_closed)
    split      train | val | test (dataset spellings like validation are accepted)
    modality   one of schema.MODALITIES (common spellings like X-Ray, MR, US are accepted)
    patient    patient / group key for splitting (default: the image path)
    id, lang, license                                                (optional)

For `t2i` the image is the output: human turn = `text` (the prompt), gpt turn a fixed sentence.

"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..schema import IMAGE_TOKEN, MODALITIES, Quarantine, Record, Rejected
from .base import Context, guess_lang
from ._common import ImageCache, count_csv_rows, csv_entries, normalise_modality, text_field

NAME = "imagefolder"
NEEDS_INPUT = True
LICENSE = "unknown (user-supplied data: check its terms before training on it)"

DEFAULT_CSV = "metadata.csv"
TASKS_ALLOWED = ("caption", "report", "vqa_open", "vqa_closed", "t2i")
PROMPTS = {
    "caption": "Describe this image.",
    "report": "Write a report for this image.",
}
T2I_REPLY = "Here is the generated image."


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    try:
        rel = _find_csv(root)
    except Rejected as e:
        yield ctx.rejected(".", e)
        return
    cache = ImageCache(root, ctx.cfg.max_side)
    yield from ctx.each(csv_entries(root, rel), lambda p: _row(root, ctx, cache, rel, *p))


def _row(root: Path, ctx: Context, cache: ImageCache, rel: str, item: str, row: Mapping[str, Any] | Rejected) -> Record:
    if isinstance(row, Rejected):
        raise row
    source_id = text_field(row, "id", required=False) or item
    try:
        return _record(root, ctx, cache, rel, item, row, source_id)
    except Exception as e:  # noqa: BLE001 - quarantined by the guard, under the row's id
        return ctx.failed(item, e, source_id)


def count(root: Path, ctx: Context) -> int | None:
    try:
        return count_csv_rows(root / _find_csv(root))
    except Exception:  # noqa: BLE001 - the progress bar total is a nicety, never a failure
        return None


def _find_csv(root: Path) -> str:
    if (root / DEFAULT_CSV).is_file():
        return DEFAULT_CSV
    found = sorted(p.name for p in root.glob("*.csv") if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise Rejected("missing_file", f"no {DEFAULT_CSV} (or other *.csv) in the input folder")
    raise Rejected("missing_file", f"no {DEFAULT_CSV} and {len(found)} other CSV files ({', '.join(found[:5])}): "
                   f"name the one to read {DEFAULT_CSV}")


def _record(root: Path, ctx: Context, cache: ImageCache, rel: str, item: str, row: Mapping[str, Any],
            source_id: str) -> Record:
    image_rel = text_field(row, "image")
    text = text_field(row, "text")
    task = (text_field(row, "task", required=False) or "caption").lower()
    if task not in TASKS_ALLOWED:
        raise Rejected("invalid_value", f"task {task!r} is not one of {TASKS_ALLOWED}")
    split = None
    if raw_split := text_field(row, "split", required=False):
        split = Context.normalise_split(raw_split)
        if split is None:
            raise Rejected("invalid_value", f"split {raw_split!r} is not train, val or test")
    modality = "other"
    if raw_mod := text_field(row, "modality", required=False):
        modality = normalise_modality(raw_mod)
        if modality is None or modality == "none":
            raise Rejected("invalid_value", f"modality {raw_mod!r} is not one of {MODALITIES[:-1]}")
    question = text_field(row, "question", required=task in ("vqa_open", "vqa_closed"))
    img, touched = cache.load(image_rel)
    if task == "t2i":
        message = [("human", text), ("gpt", T2I_REPLY)]
        inputs, outputs = [], [img]
    else:
        message = [("human", f"{IMAGE_TOKEN}\n{question or PROMPTS[task]}"), ("gpt", text)]
        inputs, outputs = [img], []
    lang = text_field(row, "lang", required=False) or guess_lang(f"{question or ''} {text}")
    return ctx.record(
        source_id=source_id,
        patient=text_field(row, "patient", required=False) or image_rel,
        sub_task=task,
        modality=modality,
        license=text_field(row, "license", required=False) or LICENSE,
        source_uri=f"{rel}#{image_rel}",
        message=message,
        input_img=inputs,
        output_img=outputs,
        split=split,
        lang=lang,
        phi_removed=touched,
    )


# =================================================================================================
# Shared helpers (used by the other public-dataset adapters)
# =================================================================================================



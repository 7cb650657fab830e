"""SLAKE (Liu et al., ISBI 2021): bilingual (English/Chinese) medical VQA, as distributed.

Layout: `train.json`, `validation.json` (the original release calls it `validate.json`),
`test.json`, each a JSON list of questions, and `imgs/<img_name>`. Fields:
`img_id, img_name, question, answer, q_lang, location, modality, answer_type, content_type,
base_type, triple, qid`.

The dataset's split is kept. Chinese questions are kept with `lang="zh"` (the training mixture picks
languages; ingest does not drop any). `img_id` is the patient group: every question on one image
shares a pseudonym.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..schema import IMAGE_TOKEN, Quarantine, Record, Rejected
from .base import Context, guess_lang
from ._common import ImageCache, load_json, load_json_list, normalise_modality, scrub_labels, text_field, under

NAME = "slake"
NEEDS_INPUT = True
LICENSE = "CC BY 4.0"
IMAGE_DIR = "imgs"


def _split_files(root: Path) -> list[tuple[str, str]]:
    out = []
    for p in sorted(root.glob("*.json")):
        if p.is_file() and (split := Context.normalise_split(p.stem)):
            out.append((p.name, split))
    return out


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    files = _split_files(root)
    if not files:
        yield ctx.reject(".", "missing_file", "no train.json / validation.json / test.json in the input folder")
        return
    cache = ImageCache(root, ctx.cfg.max_side)
    entries: list[tuple[str, str | None, tuple]] = []
    for rel, split in files:
        doc, bad = ctx.attempt(rel, load_json_list, root, rel)
        if bad is not None:
            yield bad
            continue
        for i, entry in enumerate(doc):
            source_id = f"{split}/{entry.get('qid', f'#{i}')}" if isinstance(entry, dict) else None
            entries.append((f"{rel}#{i}", source_id, (rel, split, entry, source_id)))
    yield from ctx.each(entries, lambda p: _record(ctx, cache, *p))


def count(root: Path, ctx: Context) -> int | None:
    try:
        return sum(len(x) for rel, _ in _split_files(root) if isinstance(x := load_json(root, rel), list))
    except Exception:  # noqa: BLE001 - progress total only
        return None


def _record(ctx: Context, cache: ImageCache, rel: str, split: str, entry: Any, source_id: str | None) -> Record:
    if not isinstance(entry, dict):
        raise Rejected("malformed_json", f"entry is a JSON {type(entry).__name__}, not an object")
    img_name = text_field(entry, "img_name")
    question = text_field(entry, "question")
    answer = text_field(entry, "answer")
    img, touched = cache.load(under(IMAGE_DIR, img_name))
    answer_type = (text_field(entry, "answer_type", required=False) or "").upper()
    lang = (text_field(entry, "q_lang", required=False) or guess_lang(question)).lower()
    raw_modality = text_field(entry, "modality", required=False)
    modality = normalise_modality(raw_modality) or "other"
    parent = Path(img_name).parent.as_posix()
    patient = text_field(entry, "img_id", required=False) or (parent if parent != "." else img_name)
    return ctx.record(
        source_id=source_id or "",
        patient=patient,
        sub_task="vqa_closed" if answer_type == "CLOSED" else "vqa_open",
        modality=modality if modality != "none" else "other",
        license=LICENSE,
        source_uri=f"{rel}#qid={entry.get('qid')}",
        message=[("human", f"{IMAGE_TOKEN}\n{question}"), ("gpt", answer)],
        input_img=[img],
        split=split,
        lang=lang,
        labels=scrub_labels({
            "answer": answer,
            "answer_type": answer_type or None,
            "location": text_field(entry, "location", required=False),
            "content_type": text_field(entry, "content_type", required=False),
        }),
        phi_removed=touched,
    )

"""VQA-RAD (Lau et al., Scientific Data 2018), as distributed on OSF.

Layout: `VQA_RAD Dataset Public.json` (a JSON list) and `VQA_RAD Image Folder/<image_name>`.
Fields include `qid, image_name, image_organ, question, answer, answer_type (CLOSED/OPEN),
question_type, phrase_type (freeform/para/test_freeform/test_para)`.

Split: the published benchmark split is kept (`test_*` phrase types are test); the other questions
go to val or train by image. The official split puts some images in both test and train questions;
that is the benchmark as published, kept here, and QC reports the overlap.

Modality: the release does not give it (`image_organ` is the body part). It is inferred per image
from what its questions establish (an answer that names a modality, or "Is this a CT?" answered
yes), else "other".
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..schema import IMAGE_TOKEN, Quarantine, Record, Rejected
from .base import Context
from ._common import ImageCache, load_json, load_json_list, modalities_in, scrub_labels, text_field, under

NAME = "vqa_rad"
NEEDS_INPUT = True
LICENSE = "CC0 1.0"
JSON_NAME = "VQA_RAD Dataset Public.json"
IMAGE_DIRS = ("VQA_RAD Image Folder", "VQA_RAD_Image_Folder", "images")
YES_NO = {"yes", "no"}


def _json_file(root: Path) -> str:
    if (root / JSON_NAME).is_file():
        return JSON_NAME
    found = sorted(p.name for p in root.glob("*.json") if p.is_file())
    if len(found) == 1:
        return found[0]
    raise Rejected("missing_file", f"no {JSON_NAME!r} in the input folder")


def _image_dir(root: Path) -> str:
    return next((d for d in IMAGE_DIRS if (root / d).is_dir()), IMAGE_DIRS[0])


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    rel, entries = JSON_NAME, None

    def load() -> list:
        nonlocal rel
        rel = _json_file(root)
        return load_json_list(root, rel)

    entries, bad = ctx.attempt(JSON_NAME, load)
    if bad is not None:
        yield bad
        return
    image_dir = _image_dir(root)
    modality = _modality_per_image(entries)
    cache = ImageCache(root, ctx.cfg.max_side)
    items = []
    for i, entry in enumerate(entries):
        source_id = None
        if isinstance(entry, dict):
            source_id = str(entry["qid"]) if entry.get("qid") not in (None, "") else f"#{i}"
        items.append((f"{rel}#{i}", source_id, (entry, source_id)))
    yield from ctx.each(items, lambda p: _record(ctx, cache, rel, image_dir, p[0], p[1], modality))


def count(root: Path, ctx: Context) -> int | None:
    try:
        entries = load_json(root, _json_file(root))
        return len(entries) if isinstance(entries, list) else None
    except Exception:  # noqa: BLE001 - progress total only
        return None


def _record(ctx: Context, cache: ImageCache, rel: str, image_dir: str, entry: Any, source_id: str | None,
            modality: dict[str, str]) -> Record:
    if not isinstance(entry, dict):
        raise Rejected("malformed_json", f"entry is a JSON {type(entry).__name__}, not an object")
    image_name = text_field(entry, "image_name")
    question = text_field(entry, "question")
    answer = text_field(entry, "answer")
    img, touched = cache.load(under(image_dir, image_name))
    answer_type = (text_field(entry, "answer_type", required=False) or "").upper()
    if answer_type not in ("OPEN", "CLOSED"):
        answer_type = "CLOSED" if answer.lower() in YES_NO else "OPEN"
    phrase_type = (text_field(entry, "phrase_type", required=False) or "").lower()
    if phrase_type.startswith("test"):
        split = "test"
    else:
        split = "val" if ctx.split_of(image_name) == "val" else "train"
    return ctx.record(
        source_id=source_id or "",
        patient=image_name,
        sub_task="vqa_closed" if answer_type == "CLOSED" else "vqa_open",
        modality=modality.get(image_name, "other"),
        license=LICENSE,
        source_uri=f"{rel}#qid={entry.get('qid')}",
        message=[("human", f"{IMAGE_TOKEN}\n{question}"), ("gpt", answer)],
        input_img=[img],
        split=split,
        labels=scrub_labels({
            "answer": answer,
            "answer_type": answer_type,
            "organ": text_field(entry, "image_organ", required=False),
            "question_type": text_field(entry, "question_type", required=False),
            "phrase_type": phrase_type or None,
        }),
        phi_removed=touched,
    )


def _modality_per_image(entries: list[Any]) -> dict[str, str]:
    """Votes per image from what its questions establish; the image gets the modality with most votes."""
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            image = text_field(entry, "image_name")
            question = text_field(entry, "question")
            answer = text_field(entry, "answer")
        except Rejected:
            continue
        asked = modalities_in(question)
        said = modalities_in(answer)
        if answer.lower() == "yes" and len(asked) == 1:
            votes[image][next(iter(asked))] += 2  # "Is this a CT scan?" - "yes"
        elif answer.lower() == "no":
            for mod in asked:
                votes[image][mod] -= 2  # "Is this an MRI?" - "no"
        elif len(said) == 1:
            votes[image][next(iter(said))] += 2  # "What modality is this?" - "CT"
        elif len(asked) == 1:
            votes[image][next(iter(asked))] += 1  # "Where is the mass on this CT?" presupposes it
    out = {}
    for image, counter in votes.items():
        ranked = [(n, mod) for mod, n in counter.items() if n > 0]
        if ranked:
            ranked.sort(key=lambda x: (-x[0], x[1]))
            if len(ranked) == 1 or ranked[0][0] > ranked[1][0]:
                out[image] = ranked[0][1]
    return out

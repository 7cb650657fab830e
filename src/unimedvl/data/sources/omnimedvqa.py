"""OmniMedVQA (Hu et al., CVPR 2024): a multiple-choice medical VQA benchmark, as distributed.

Layout, checked against the publishers' own material (December 2026):

* the Hugging Face card of `foreverbeliever/OmniMedVQA` (its "Filesystem Hierarchy": `Images/<Dataset>/...`
  and `QA_information/Open-access/` + `QA_information/Restricted-access/`, one JSON file per source
  dataset, e.g. `ACRIMA.json`), and
* the loaders of OpenGVLab/Multi-Modality-Arena, `MedicalEval/` (commit bd2999a):
  `Question-answering_Score/task_datasets/medical_datasets.py` and `utils/medicalqa.py` read each file
  as a JSON list of items with `question`, `gt_answer`, `image_path` and `option_A`, `option_B`,
  optional `option_C`, `option_D`; the scorer counts an item right when the chosen option's text
  equals `gt_answer` (the answer is an option's text, not a letter). Published items also carry
  `question_id` (e.g. `ACRIMA_0000`), `question_type`, `modality_type` and `dataset`;
  `image_path` is relative to the dataset root (`Images/ACRIMA/Im553_g_ACRIMA.png`).

The folder is read as `QA_information/` (the release) or `QA information/` (as some copies name it);
the input may be the dataset root or the folder holding `OmniMedVQA/`. Restricted-access items name
images of the original datasets, which the release does not ship: put them under the root at the
`image_path` given, or they are quarantined as `missing_file`. One published item spells
`modality` instead of `modality_type`; both are read.

It is a test-only benchmark: every item is a `vqa_closed` record in the `test` split. The human turn
lists the choices and the answer is `L: text` (sources/_mcq.py), so evaluation scores it by option
letter. The licence is `LicenseRef-unknown`: the release has no licence of its own and asks users to
follow each source dataset's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..schema import Quarantine, Record, Rejected
from . import _mcq
from ._common import ImageCache, load_json, load_json_list, scrub_labels, text_field, under
from .base import Context

NAME = "omnimedvqa"
NEEDS_INPUT = True
LICENSE = "LicenseRef-unknown"
QA_DIRS = ("QA_information", "QA information")
OPTIONS = ("A", "B", "C", "D", "E")  # A-D published; E read if a later release adds it


def _base(root: Path) -> tuple[Path, Path] | None:
    """(dataset root, QA folder) under `root` or `root/OmniMedVQA`, None when neither holds one."""
    for base in (root, root / "OmniMedVQA"):
        for name in QA_DIRS:
            if (base / name).is_dir():
                return base, base / name
    return None


def _files(root: Path) -> tuple[Path, list[str]] | None:
    found = _base(root)
    if found is None:
        return None
    base, qa = found
    # Not only regular files: a FIFO or a symlink out named *.json is one quarantine line, not a silent skip.
    files = sorted(p.relative_to(base).as_posix() for p in qa.rglob("*.json") if not p.is_dir())
    return base, files


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    found = _files(root)
    if found is None or not found[1]:
        yield ctx.reject(".", "missing_file", "no QA_information/ folder with *.json files in the input folder "
                         "(the OmniMedVQA release: QA_information/Open-access/<dataset>.json and Images/)")
        return
    base, files = found
    cache = ImageCache(base, ctx.cfg.max_side)
    first: dict[str, str] = {}  # question_id -> the item that used it first
    for rel in files:
        doc, bad = ctx.attempt(rel, load_json_list, base, rel)
        if bad is not None:
            yield bad
            continue
        entries = []
        for i, entry in enumerate(doc):
            qid = entry.get("question_id") if isinstance(entry, dict) else None
            sid = str(qid) if isinstance(qid, str | int) and not isinstance(qid, bool) else None
            entries.append((f"{rel}#{i}", sid, (rel, f"{rel}#{i}", entry)))
        yield from ctx.each(entries, lambda p: _record(ctx, cache, first, *p))


def count(root: Path, ctx: Context) -> int | None:
    try:
        found = _files(root)
        if found is None:
            return 0
        base, files = found
        return sum(len(x) for rel in files if isinstance(x := load_json(base, rel), list))
    except Exception:  # noqa: BLE001 - progress total only
        return None


def _record(ctx: Context, cache: ImageCache, first: dict[str, str], rel: str, item: str, entry: Any) -> Record:
    if not isinstance(entry, dict):
        raise Rejected("malformed_json", f"entry is a JSON {type(entry).__name__}, not an object")
    qid = text_field(entry, "question_id")
    if qid in first:
        raise Rejected("duplicate_id", f"question_id {qid!r} was already used by {first[qid]}; the later item is "
                       "quarantined")
    first[qid] = item
    question = text_field(entry, "question")
    answer = text_field(entry, "gt_answer")
    image_path = text_field(entry, "image_path")
    choices = {k: _mcq.one_line(v) for k in OPTIONS if (v := text_field(entry, f"option_{k}", required=False))}
    _mcq.require_choices(choices, "option_A..option_D")
    label = _mcq.label_of_text(answer, choices, "gt_answer")
    img, touched = cache.load(under("", image_path))
    raw_modality = text_field(entry, "modality_type", required=False) or text_field(entry, "modality", required=False)
    human, gpt = _mcq.turns(question, choices, label)
    access = next((p for p in Path(rel).parts[1:-1] if p.lower().endswith("-access")), None)
    return ctx.record(
        source_id=qid,
        patient=image_path,  # every question on one image shares a pseudonym
        sub_task="vqa_closed",
        modality=_mcq.benchmark_modality(raw_modality),
        license=LICENSE,
        source_uri=f"{rel}#question_id={qid}",
        message=[("human", human), ("gpt", gpt)],
        input_img=[img],
        split="test",
        labels=scrub_labels(_mcq.labels(
            choices, label,
            question_type=text_field(entry, "question_type", required=False),
            modality_type=raw_modality,
            source_dataset=text_field(entry, "dataset", required=False),
            access=access.lower() if access else None,
        )),
        phi_removed=touched,
    )

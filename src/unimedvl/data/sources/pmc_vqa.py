"""PMC-VQA (Zhang et al., 2023): multiple-choice VQA on PubMed Central figures, as distributed.

Layout: `train.csv` / `test.csv` (also `train_2.csv`, `test_2.csv`, `test_clean.csv` of later
releases) with columns `Figure_path, Question, Answer, Choice A, Choice B, Choice C, Choice D,
Answer_label` (optionally `Caption`), and the figures under the folder itself, `images/` or
`figures/`. `Figure_path` is tried in that order.

Every row is a `vqa_closed` record: the human turn lists the choices, the answer is e.g.
"B: Computed tomography". The split is the file's (train*.csv -> train, test*.csv -> test). The
patient group is the article (`PMC1234567` of `PMC1234567_F1.jpg`), so one paper's figures share it.
Modality is "other" unless the caption (else the question and answer) names exactly one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from .. import images
from ..patterns import linear
from ..schema import Quarantine, Record, Rejected
from . import _mcq
from .base import Context
from ._common import (
    ImageCache,
    count_csv_rows,
    csv_entries,
    modality_from_text,
    scrub_labels,
    split_from_path,
    text_field,
    under,
)

NAME = "pmc_vqa"
NEEDS_INPUT = True
LICENSE = "CC BY-SA 4.0"
IMAGE_DIRS = ("", "images", "figures")
LETTERS = ("A", "B", "C", "D")
_PREFIX = linear(r"^\s*\(?([A-D])\s*[:.)]\s*")


def _files(root: Path) -> list[tuple[str, str]]:
    out = []
    for p in sorted(root.glob("*.csv")):
        if p.is_file() and (split := split_from_path(p.name)) in ("train", "val", "test"):
            out.append((p.name, split))
    return out


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    files = _files(root)
    if not files:
        yield ctx.reject(".", "missing_file", "no train.csv / test.csv in the input folder")
        return
    cache = ImageCache(root, ctx.cfg.max_side)
    resolved: dict[str, str] = {}
    for rel, split in files:
        yield from ctx.each(csv_entries(root, rel),
                            lambda p, split=split: _row(root, ctx, cache, resolved, split, *p))


def _row(root: Path, ctx: Context, cache: ImageCache, resolved: dict[str, str], split: str, item: str,
         row: Mapping[str, str] | Rejected) -> Record | Quarantine:
    if isinstance(row, Rejected):
        return ctx.rejected(item, row)
    try:
        return _record(root, ctx, cache, resolved, item, split, row)
    except Exception as e:  # noqa: BLE001 - quarantined under the row's id
        return ctx.failed(item, e, item)


def count(root: Path, ctx: Context) -> int | None:
    try:
        return sum(count_csv_rows(root / rel) for rel, _ in _files(root))
    except Exception:  # noqa: BLE001 - progress total only
        return None


def _resolve(root: Path, figure: str, resolved: dict[str, str]) -> str:
    """Figure_path relative to the folder, images/ or figures/ (first that exists)."""
    if figure in resolved:
        return resolved[figure]
    for prefix in IMAGE_DIRS:
        rel = under(prefix, figure)
        try:
            images.safe_path(root, rel)
        except Rejected as e:
            if e.reason != "missing_file":
                raise
            continue
        resolved[figure] = rel
        return rel
    raise Rejected("missing_file", f"figure {figure!r} is not in the input folder, images/ or figures/")


def _choices(row: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for letter in LETTERS:
        text = text_field(row, f"Choice {letter}", required=False)
        m = _PREFIX.match(text or "")
        if text and m and m.group(1) == letter:  # "A:CT scan" -> "CT scan"
            text = text[m.end():].strip()
        if text:
            out[letter] = text
    return out


def _record(root: Path, ctx: Context, cache: ImageCache, resolved: dict[str, str], item: str, split: str,
            row: Mapping[str, str]) -> Record:
    figure = text_field(row, "Figure_path")
    question = text_field(row, "Question")
    choices = _choices(row)
    if len(choices) < 2:
        raise Rejected("missing_field", f"fewer than two of the fields {', '.join(f'Choice {x}' for x in LETTERS)} are given")
    label = (text_field(row, "Answer_label", required=False) or "").upper()
    answer_text = text_field(row, "Answer", required=False)
    if not label and answer_text:  # releases without Answer_label: "B", "B:CT scan" or the choice's text
        if answer_text.strip().upper() in LETTERS:
            label = answer_text.strip().upper()
        else:
            wanted = _PREFIX.sub("", answer_text).strip().lower()
            label = next((k for k, v in choices.items() if v.strip().lower() == wanted), "")
    if not label:
        raise Rejected("missing_field", "field 'Answer_label' is missing or empty (and 'Answer' matches no choice)")
    if label not in choices:
        raise Rejected("invalid_value", f"Answer_label {label!r} is not one of the given choices {sorted(choices)}")
    img, touched = cache.load(_resolve(root, figure, resolved))
    human, gpt = _mcq.turns(question, choices, label)
    caption = text_field(row, "Caption", required=False)
    return ctx.record(
        source_id=item,
        patient=Path(figure).name.split("_", 1)[0],
        sub_task="vqa_closed",
        modality=modality_from_text(caption or f"{question} {choices[label]}"),
        license=LICENSE,
        source_uri=f"{item}#{figure}",
        message=[("human", human), ("gpt", gpt)],
        input_img=[img],
        split=split,
        labels=scrub_labels({"answer": choices[label], "answer_label": label,
                             **{f"choice_{k}": v for k, v in choices.items()}}),
        phi_removed=touched,
    )

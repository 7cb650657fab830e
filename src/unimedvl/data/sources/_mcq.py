"""Multiple-choice questions (PMC-VQA, OmniMedVQA, GMAI-MMBench): one way to write the choices into
the question turn and the answer, so the evaluator's option-letter rule (`options` / `option_letter`
in evaluate/understanding.py) reads every such source alike: the human turn lists one `L: text` line
per choice, the answer is `L: text`, and the labels carry `answer_label` and each `choice_L`.
"""

from __future__ import annotations

from typing import Any

from ..schema import IMAGE_TOKEN, Rejected
from ._common import modality_from_text, normalise_modality

LETTERS = ("A", "B", "C", "D", "E")
INSTRUCTION = "Answer with the letter and text of the correct choice."


def one_line(text: str) -> str:
    """A choice on one line: the evaluator reads one option per line, so a newline inside a choice
    would cut it in two."""
    return " ".join(str(text).split())


def turns(question: str, choices: dict[str, str], label: str, *, images: int = 1) -> tuple[str, str]:
    """(human turn, answer) of a multiple-choice item; `images` placeholders lead the question."""
    options = "\n".join(f"{k}: {v}" for k, v in choices.items())
    human = f"{IMAGE_TOKEN}\n" * images + f"{question}\nChoices:\n{options}\n{INSTRUCTION}"
    return human, f"{label}: {choices[label]}"


def labels(choices: dict[str, str], label: str, **extra: Any) -> dict[str, Any]:
    """The ground truth evaluation reads (answer text and letter, each choice) plus source metadata."""
    out: dict[str, Any] = {"answer": choices[label], "answer_label": label,
                           **{f"choice_{k}": v for k, v in choices.items()}}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _key(text: str) -> str:
    return one_line(text).casefold().rstrip(".").strip()


def label_of_text(answer: str, choices: dict[str, str], field: str) -> str:
    """The letter of the choice whose text is `answer`: exact first (OmniMedVQA's own scorer compares
    `gt_answer` to the option string), then ignoring case, spacing and a final full stop. An answer
    that is no choice, or that two choices spell alike, is `invalid_value`."""
    exact = [k for k, v in choices.items() if v == answer.strip()]
    if len(exact) == 1:
        return exact[0]
    loose = [k for k, v in choices.items() if _key(v) == _key(answer)]
    if len(loose) == 1:
        return loose[0]
    if loose:
        raise Rejected("invalid_value", f"{field} matches more than one choice ({', '.join(loose)}), so the "
                       "correct letter is ambiguous")
    raise Rejected("invalid_value", f"{field} is not the text of any of the choices {', '.join(choices)}")


def letter(value: str, choices: dict[str, str], field: str) -> str:
    """A letter answer (`B`, `b`, `(B)`, `B.`) that must name one of the given choices."""
    v = value.strip().strip("().:").strip().upper()
    if v not in LETTERS:
        # Not a letter: some exports write the choice's text instead.
        return label_of_text(value, choices, field)
    if v not in choices:
        raise Rejected("invalid_value", f"{field} {v!r} is not one of the given choices {', '.join(choices)}")
    return v


def require_choices(choices: dict[str, str], names: str) -> None:
    if len(choices) < 2:
        raise Rejected("missing_field", f"fewer than two of the fields {names} are given")


# Modality words of the benchmarks' own vocabularies ("Microscopy Images", "Dermoscopy", "Digital
# Photography", "CT(Computed Tomography)") that the common alias table does not spell.
_EXTRA_MODALITY = (
    ("dermoscop", "dermatology"), ("dermatolog", "dermatology"), ("endoscop", "endoscopy"),
    ("colonoscop", "endoscopy"), ("microscop", "histology"), ("patholog", "histology"),
    ("cytolog", "histology"), ("fundus", "fundus"), ("ultraso", "ultrasound"), ("x-ray", "xray"),
    ("xray", "xray"), ("optical coherence", "oct"), ("mammogra", "xray"), ("angiogra", "angiography"),
)


def benchmark_modality(value: Any) -> str:
    """A benchmark's modality label -> one of schema.MODALITIES ("other" when it names none)."""
    if value is None or not str(value).strip():
        return "other"
    text = str(value)[:200]
    mod = normalise_modality(text)
    if mod and mod != "none":
        return mod
    mod = modality_from_text(text, default="")
    if mod:
        return mod
    low = text.lower()
    return next((m for key, m in _EXTRA_MODALITY if key in low), "other")

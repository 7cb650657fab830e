"""Scoring answers to questions: LLaVA-Med's rules, with the normalisation spelled out.

No LLM judge exists offline, so answers are scored by rule (named per question type in
docs/metrics.md):

* closed (yes/no) questions: the prediction's first yes/no word against the reference's; a
  prediction with neither is wrong (never counted as "no");
* closed multiple-choice questions (options A-E in the question): the option letter the prediction
  names, or the option whose text it states, against the reference letter or text;
* open questions: normalised exact match, and token recall (the share of the reference's tokens
  present in the prediction; LLaVA-Med's open-set "recall").

Normalisation: lower case, unicode punctuation removed, articles (a, an, the) dropped, whitespace
collapsed, so "Yes." == "yes" and "The left lung" == "left lung".
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_ARTICLES = {"a", "an", "the"}
_YES = {"yes", "yeah", "true", "present", "positive"}
_NO = {"no", "not", "false", "absent", "negative", "none"}
_OPTION = re.compile(r"(?:^|\n)\s*\(?([A-E])[\).:]\s*(.+)")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def tokens(text: str) -> list[str]:
    return normalise(text).split()


def yes_no(text: str) -> str | None:
    """'yes' / 'no' from the first yes/no word of an answer, None when it has none."""
    for w in tokens(text):
        if w in _YES:
            return "yes"
        if w in _NO:
            return "no"
    return None


def options(question: str) -> dict[str, str]:
    """{letter: normalised option text} of a multiple-choice question ("A. left" lines or "(B) right")."""
    return {m.group(1): normalise(m.group(2)) for m in _OPTION.finditer(question or "")}


def option_letter(answer: str, opts: dict[str, str]) -> str | None:
    raw = (answer or "").strip()
    m = re.match(r"^\(?([A-Ea-e])(?:[\).:]|\s|$)", raw)
    if m and m.group(1).upper() in opts:
        return m.group(1).upper()
    norm = normalise(raw)
    for letter, text in opts.items():
        if text and norm == text:
            return letter
    for letter, text in opts.items():  # "the answer is left" names one option's text
        if text and re.search(rf"\b{re.escape(text)}\b", norm) and sum(
                bool(re.search(rf"\b{re.escape(t)}\b", norm)) for t in opts.values() if t) == 1:
            return letter
    return None


def is_closed(question: str, reference: str) -> bool:
    return yes_no(reference) is not None and len(tokens(reference)) <= 3 or bool(options(question))


def closed_correct(prediction: str, reference: str, question: str = "") -> bool:
    """The closed-set rule: option letter where the question lists options, else yes/no."""
    opts = options(question)
    if opts:
        want = option_letter(reference, opts)
        got = option_letter(prediction, opts)
        return want is not None and got == want
    want = yes_no(reference)
    return want is not None and yes_no(prediction) == want


def open_exact(prediction: str, reference: str) -> bool:
    return normalise(prediction) == normalise(reference) and bool(normalise(reference))


def open_recall(prediction: str, reference: str) -> float:
    """Share of the reference's tokens (with multiplicity) found in the prediction."""
    ref = Counter(tokens(reference))
    if not ref:
        return 0.0
    pred = Counter(tokens(prediction))
    return sum(min(c, pred[t]) for t, c in ref.items()) / sum(ref.values())


def majority_answers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The most common normalised answer per question type, from (question type, answer) pairs."""
    by: dict[str, Counter] = {}
    for qtype, ans in pairs:
        by.setdefault(qtype, Counter())[normalise(ans)] += 1
    return {q: c.most_common(1)[0][0] for q, c in by.items()}

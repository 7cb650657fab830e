"""Report metrics: BLEU-1..4 and ROUGE-L from the maintained reference libraries, METEOR reported as
unavailable, and finding-level precision / recall / F1 from a rule-based labeler.

* BLEU: `sacrebleu` corpus BLEU (13a tokeniser, lower-cased) with max n-gram order 1..4, 0-100.
* ROUGE-L: `rouge-score` F-measure with its Porter stemmer, mean over reports, 0-1.
* METEOR needs NLTK's WordNet data, which cannot be downloaded here: `unavailable`, never 0.
* The labeler follows CheXpert's rule-based design (mention, then negation and uncertainty in the
  same clause) over the phantom findings vocabulary. Negation cues before a mention ("no effusion",
  "without pleural effusion", "the heart is not enlarged") or after it ("... is not seen") make it
  absent; uncertainty cues ("possible effusion", "cannot be excluded") make it uncertain, which
  counts as not asserted for precision / recall. No NLP model is needed, so it runs offline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .schema import FINDINGS, Metric

MENTIONS: dict[str, tuple[str, ...]] = {
    "nodule": (r"nodul\w*", r"mass(?:es)?"),
    "consolidation": (r"consolidat\w*", r"airspace opacit\w*", r"airspace disease"),
    "effusion": (r"effusions?", r"pleural fluid"),
    "pneumothorax": (r"pneumothora\w*",),
    "cardiomegaly": (r"cardiomegaly", r"(?:heart|cardiac silhouette|cardiac shadow)\b[^.;]{0,20}?\benlarged",
                     r"enlarged (?:heart|cardiac)"),
    "lesion": (r"lesions?",),
}
_NEG_BEFORE = re.compile(r"\b(no|not|without|negative for|free of|absence of|rather than|ruled out)\b")
_NEG_AFTER = re.compile(r"^[^.;]{0,30}?\b(is|are)?\s*(not (seen|identified|present|visible|enlarged)|absent|resolved|ruled out)\b")
_UNCERTAIN = re.compile(r"\b(possible|possibly|probable|probably|may|might|maybe|suspicious for|suspected|"
                        r"questionable|cannot be excluded|can not be excluded|not excluded|likely|suggest\w*|"
                        r"concerning for|versus|vs)\b")
_CLAUSES = re.compile(r"[.;\n]+|\bbut\b|\bhowever\b")


@dataclass(frozen=True)
class Label:
    positive: frozenset[str]
    negative: frozenset[str]
    uncertain: frozenset[str]


def label_report(text: str) -> Label:
    """Which findings a report asserts, rules out, or leaves uncertain (a finding asserted in one
    clause and ruled out in another counts as asserted: a report naming it at all is taken at its word)."""
    pos: set[str] = set()
    neg: set[str] = set()
    unc: set[str] = set()
    for clause in _CLAUSES.split((text or "").lower()):
        for finding, pats in MENTIONS.items():
            for pat in pats:
                for m in re.finditer(rf"\b{pat}", clause):
                    before, after = clause[: m.start()], clause[m.end():]
                    if _NEG_BEFORE.search(before) or _NEG_AFTER.search(after) or re.search(r"\bnot\b", m.group(0)):
                        neg.add(finding)
                    elif _UNCERTAIN.search(before) or _UNCERTAIN.search(after):
                        unc.add(finding)
                    else:
                        pos.add(finding)
    return Label(frozenset(pos), frozenset(neg - pos), frozenset(unc - pos))


def finding_prf(predictions: Sequence[str], references: Sequence[set[str]]) -> tuple[int, int, int, list[float]]:
    """Micro counts (tp, fp, fn) over reports and each report's F1 (for the bootstrap)."""
    tp = fp = fn = 0
    per: list[float] = []
    for pred, ref in zip(predictions, references, strict=True):
        got = set(label_report(pred).positive) & set(FINDINGS)
        a, b, c = len(got & ref), len(got - ref), len(ref - got)
        tp, fp, fn = tp + a, fp + b, fn + c
        per.append(1.0 if a + b + c == 0 else 2 * a / (2 * a + b + c))
    return tp, fp, fn, per


def bleu(predictions: Sequence[str], references: Sequence[str], order: int) -> float:
    from sacrebleu.metrics import BLEU

    return float(BLEU(max_ngram_order=order, lowercase=True, effective_order=order < 4)
                 .corpus_score(list(predictions), [list(references)]).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [float(scorer.score(r, p)["rougeL"].fmeasure) for p, r in zip(predictions, references, strict=True)]


def meteor() -> Metric:
    return Metric.unavailable("METEOR needs NLTK's WordNet data, which cannot be installed offline here")


def report_metrics(predictions: Sequence[str], references: Sequence[str], ref_findings: Sequence[set[str] | None],
                   min_n: int, n_boot: int, seed: int, prefix: str = "report") -> dict[str, Metric]:
    """BLEU-1..4, ROUGE-L, METEOR and (where reference findings are known) finding P/R/F1."""
    import numpy as np

    from .stats import metric

    out: dict[str, Metric] = {}
    n = len(predictions)
    if n < min_n:
        for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"):
            out[f"{prefix}.{k}"] = Metric.insufficient(n, min_n, "reports")
    else:
        rng = np.random.default_rng(seed)
        idx = [rng.integers(0, n, n) for _ in range(min(n_boot, 200))]  # corpus BLEU is costly per resample
        for k in range(1, 5):
            value = bleu(predictions, references, k)
            boots = [bleu([predictions[i] for i in ix], [references[i] for i in ix], k) for ix in idx]
            ci = (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))) if boots else None
            out[f"{prefix}.bleu{k}"] = Metric.ok(value, n, ci)
        out[f"{prefix}.rouge_l"] = metric(rouge_l(predictions, references), min_n, n_boot, seed, "reports")
    if prefix == "report":
        out["report.meteor"] = meteor()
        known = [(p, r) for p, r in zip(predictions, ref_findings, strict=True) if r is not None]
        if len(known) < min_n:
            for k in ("precision", "recall", "f1"):
                out[f"report.finding.{k}"] = Metric.insufficient(len(known), min_n, "reports with known findings")
        else:
            preds, refs = [p for p, _ in known], [r for _, r in known]
            tp, fp, fn, _ = finding_prf(preds, refs)

            def micro(ix):
                t, f_, n_, _ = finding_prf([preds[i] for i in ix], [refs[i] for i in ix])
                return t, f_, n_

            rng = np.random.default_rng(seed + 1)
            boots = [micro(rng.integers(0, len(preds), len(preds))) for _ in range(min(n_boot, 300))]
            for key, fn_ in (("precision", lambda t, f_, n_: t / (t + f_) if t + f_ else 0.0),
                             ("recall", lambda t, f_, n_: t / (t + n_) if t + n_ else 0.0),
                             ("f1", lambda t, f_, n_: 2 * t / (2 * t + f_ + n_) if t + f_ + n_ else 0.0)):
                vals = [fn_(*b) for b in boots]
                ci = (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))) if vals else None
                out[f"report.finding.{key}"] = Metric.ok(fn_(tp, fp, fn), len(preds), ci)
    return out

"""The text metric families of one evaluation run (see `run.py`; the image families are in `imaging.py`):
each reads the run's state, asks the model through `sampling`, scores with `understanding` / `report` /
`stats`, and stores Metrics, plot rows and worst examples on it. Question text and images never reach a
log; examples go only into the HTML report of the run's own output folder."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np

from . import understanding as U
from .schema import FINDINGS, Metric
from .stats import auroc_metric, mcnemar_exact

CLOSED_TASKS = ("vqa_closed",)
OPEN_TASKS = ("vqa_open",)


def _slug(s: str) -> str:
    import re

    return re.sub(r"[^a-z0-9_\-]+", "_", (s or "unknown").lower()).strip("_") or "unknown"


def _pvalue(p: float, n: int) -> Metric:
    return Metric.ok(p, n)


def _majority(ev, rows_test: list[dict[str, Any]]) -> list[str]:
    """The most common training answer of each test question's type (by the closed rule's reading)."""
    from .run import _qtype, _rows, _turns

    train = _rows(ev.data_dir, "train", CLOSED_TASKS + OPEN_TASKS, images=False)
    table = U.majority_answers([(_qtype(r), _turns(r)[1]) for r in train])
    overall = U.majority_answers([("all", _turns(r)[1]) for r in train]).get("all", "yes")
    return [table.get(_qtype(r), overall) for r in rows_test]


def understanding(ev) -> None:
    from .run import _labels, _rows, _subsample, _turns

    min_n = ev.min_n
    # --- real test split -------------------------------------------------------------------------
    closed = _subsample(_rows(ev.data_dir, "test", CLOSED_TASKS), ev.cfg.max_test_items, ev.seed)
    open_ = _subsample(_rows(ev.data_dir, "test", OPEN_TASKS), ev.cfg.max_test_items, ev.seed + 1)
    mt = ev.cfg.sampling.max_new_tokens
    for family, rows in (("closed", closed), ("open", open_)):
        if not rows:
            for k in (("accuracy", "blind.accuracy", "majority.accuracy") if family == "closed"
                      else ("exact", "recall", "blind.exact", "majority.exact")):
                ev.put(f"vqa.{family}.{k}", Metric.insufficient(0, min_n, f"{family} questions in the test split"))
            continue
        ctxs = [ev.ctx(r) for r in rows]
        from .sampling import blind

        preds = ev.answers(ctxs, mt, f"vqa {family}")
        blind_preds = ev.answers([blind(c) for c in ctxs], mt, f"vqa {family} blind")
        major = _majority(ev, rows)
        qs = [_turns(r)[0] for r in rows]
        refs = [_turns(r)[1] for r in rows]
        if family == "closed":
            ok = np.array([U.closed_correct(p, a, q) for p, a, q in zip(preds, refs, qs, strict=True)])
            okb = np.array([U.closed_correct(p, a, q) for p, a, q in zip(blind_preds, refs, qs, strict=True)])
            okm = np.array([U.closed_correct(p, a, q) for p, a, q in zip(major, refs, qs, strict=True)])
            ev.mean("vqa.closed.accuracy", ok, "closed questions")
            ev.mean("vqa.closed.blind.accuracy", okb, "closed questions")
            ev.mean("vqa.closed.majority.accuracy", okm, "closed questions")
            if len(ok) >= min_n:
                ev.put("vqa.closed.mcnemar_p", _pvalue(mcnemar_exact(ok, okb)[0], len(ok)))
            ev.plots["confusion"] = _confusion(preds, refs)
            score, name = ok, "accuracy"
        else:
            ok = np.array([U.open_exact(p, a) for p, a in zip(preds, refs, strict=True)])
            rec = np.array([U.open_recall(p, a) for p, a in zip(preds, refs, strict=True)])
            ev.mean("vqa.open.exact", ok, "open questions")
            ev.mean("vqa.open.recall", rec, "open questions")
            ev.mean("vqa.open.blind.exact", [U.open_exact(p, a) for p, a in zip(blind_preds, refs, strict=True)], "open questions")
            ev.mean("vqa.open.majority.exact", [U.open_exact(p, a) for p, a in zip(major, refs, strict=True)], "open questions")
            score, name = ok, "exact"
        bars = []
        for by, field in (("source", "dataset"), ("modality", "modality"), ("lang", "lang")):
            groups: dict[str, list[float]] = defaultdict(list)
            for r, s in zip(rows, score, strict=True):
                groups[_slug(r[field])].append(float(s))
            for g, vals in sorted(groups.items()):
                if by == "lang" and g == "en":
                    continue  # en is the headline number; other languages are reported apart
                ev.mean(f"vqa.{family}.by_{by}.{g}.{name}", vals, f"{family} questions")
                bars.append({"family": family, "by": by, "group": g, "value": float(np.mean(vals)), "n": len(vals)})
        ev.plots.setdefault("by_group", []).extend(bars)
        _worst(ev, f"vqa.{family}", rows, preds, refs, score)
    # --- benchmark finding-presence questions ----------------------------------------------------
    bench = _bench_rows(ev)
    finding = [r for r in bench if _labels(r)["benchmark"]["kind"] == "finding"]
    ctxs = [ev.ctx(r) for r in finding]
    from .sampling import blind

    preds, margins = ev.yes_no_answers(ctxs, 8, "finding questions")
    blind_preds, blind_margins = ev.yes_no_answers([blind(c) for c in ctxs], 8, "finding questions blind")
    refs = [_turns(r)[1] for r in finding]
    truth = [_labels(r)["task"]["answer"] == "yes" for r in finding]
    ev.put("vqa.finding.margin_auroc", auroc_metric(truth, margins, min_n, ev.n_boot, ev.seed, "finding questions"))
    ev.put("vqa.finding.blind.margin_auroc", auroc_metric(truth, blind_margins, min_n, ev.n_boot, ev.seed, "finding questions"))
    ok = np.array([U.closed_correct(p, a) for p, a in zip(preds, refs, strict=True)], dtype=bool)
    okb = np.array([U.closed_correct(p, a) for p, a in zip(blind_preds, refs, strict=True)], dtype=bool)
    major = _majority(ev, finding)
    okm = np.array([U.closed_correct(p, a) for p, a in zip(major, refs, strict=True)], dtype=bool)
    ev.finding_correct = {r["id"]: bool(o) for r, o in zip(finding, ok, strict=True)}  # the pointing game's set
    ev.mean("vqa.finding.accuracy", ok, "finding questions")
    ev.mean("vqa.finding.blind.accuracy", okb, "finding questions")
    ev.mean("vqa.finding.majority.accuracy", okm, "finding questions")
    if len(ok) >= min_n:
        p, n01, n10 = mcnemar_exact(ok, okb)
        ev.put("vqa.finding.mcnemar_p", _pvalue(p, len(ok)))
        ev.images["mcnemar_finding"] = {"model_right_blind_wrong": n01, "model_wrong_blind_right": n10}
    kinds = [_labels(r)["task"]["finding"] for r in finding]
    for f in FINDINGS:
        vals = [float(o) for o, k in zip(ok, kinds, strict=True) if k == f]
        ev.mean(f"vqa.finding.by_finding.{f}.accuracy", vals, f"{f} questions")
        sel = [i for i, k in enumerate(kinds) if k == f]
        ev.put(f"vqa.finding.by_finding.{f}.margin_auroc", auroc_metric([truth[i] for i in sel], [margins[i] for i in sel],
                                                                        min_n, ev.n_boot, ev.seed, f"{f} questions"))
        ev.plots.setdefault("by_group", []).append({"family": "finding", "by": "finding", "group": f,
                                                    "value": float(np.mean(vals)) if vals else 0.0, "n": len(vals)})
    ev.plots["confusion_finding"] = _confusion(preds, refs)
    _worst(ev, "vqa.finding", finding, preds, refs, ok)
    # --- benchmark open questions ----------------------------------------------------------------
    bopen = [r for r in bench if _labels(r)["benchmark"]["kind"] == "open"]
    preds = ev.answers([ev.ctx(r) for r in bopen], mt, "benchmark open")
    refs = [_turns(r)[1] for r in bopen]
    ex = np.array([U.open_exact(p, a) for p, a in zip(preds, refs, strict=True)])
    ev.mean("vqa.benchmark_open.exact", ex, "open questions")
    ev.mean("vqa.benchmark_open.recall", [U.open_recall(p, a) for p, a in zip(preds, refs, strict=True)], "open questions")
    by: dict[str, list[float]] = defaultdict(list)
    for r, e in zip(bopen, ex, strict=True):
        by[_slug(_labels(r)["task"]["question"])].append(float(e))
    for q, vals in sorted(by.items()):
        ev.mean(f"vqa.benchmark_open.by_qtype.{q}.exact", vals, f"{q} questions")


def _confusion(preds: list[str], refs: list[str]) -> list[dict[str, Any]]:
    """One row per question (DVC's confusion template counts rows): the reference and predicted yes/no."""
    return [{"actual": U.yes_no(a) or "other", "predicted": U.yes_no(p) or "other", "count": 1}
            for p, a in zip(preds, refs, strict=True)]


def _worst(ev, family: str, rows, preds, refs, score) -> None:
    """The lowest-scoring items (first by score, then by order) for the report's worst-examples table."""
    from .run import _turns

    order = np.argsort(np.asarray(score, dtype=float), kind="stable")[: ev.cfg.worst_examples]
    for i in order:
        r = rows[int(i)]
        ev.examples[family].append({"id": r["id"], "source": r["dataset"], "question": _turns(r)[0].replace("<image>", "").strip(),
                                    "reference": refs[int(i)], "prediction": preds[int(i)], "score": float(score[int(i)])})


def _bench_rows(ev) -> list[dict[str, Any]]:
    if "bench_rows" not in ev.images:
        from ..data.shards import read_table

        ev.images["bench_rows"] = read_table(ev.bench_dir).to_pylist()
    return ev.images["bench_rows"]


def reports(ev) -> None:
    from .report import label_report, report_metrics
    from .run import _labels, _rows, _subsample, _turns

    bench = [r for r in _bench_rows(ev) if _labels(r)["benchmark"]["kind"] == "report"]
    real = _subsample(_rows(ev.data_dir, "test", ("report",)), ev.cfg.max_test_items, ev.seed + 2)
    mt = ev.cfg.report_max_new_tokens
    pb = ev.answers([ev.ctx(r) for r in bench], mt, "benchmark reports")
    pr = ev.answers([ev.ctx(r) for r in real], mt, "test reports")
    rb = [_turns(r)[1] for r in bench]
    rr = [_turns(r)[1] for r in real]
    fb = [set(_labels(r)["task"].get("findings", [])) for r in bench]
    fr = [set(label_report(t).positive) for t in rr]
    m = report_metrics(pb + pr, rb + rr, fb + fr, ev.min_n, ev.n_boot, ev.seed)
    for k, v in m.items():
        ev.put(k, v)
    for prefix, p, r in (("report.benchmark", pb, rb), ("report.real", pr, rr)):
        sub = report_metrics(p, r, [None] * len(p), ev.min_n, ev.n_boot, ev.seed, prefix=prefix)
        ev.put(f"{prefix}.bleu4", sub[f"{prefix}.bleu4"])
        ev.put(f"{prefix}.rouge_l", sub[f"{prefix}.rouge_l"])
    from .report import rouge_l

    if pb + pr:
        scores = rouge_l(pb + pr, rb + rr)
        _worst(ev, "report", bench + real, pb + pr, rb + rr, scores)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


__all__ = ["reports", "understanding"]

"""benchmark, judge, evaluate as KFP steps: artefacts in, the library functions the CLI verbs and DVC
stages call (`evaluate.benchmark.build_benchmark`, `evaluate.judge.train_judge`,
`evaluate.run.evaluate`), typed artefacts out (the contract's metric keys on a `Metrics` artefact,
the closed-VQA confusion matrix as `ClassificationMetrics`, the report as one HTML file)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .params import effective, resolve
from .steps import enter_run, inline_html, write_metrics


def benchmark_step(dataset, values: dict[str, Any], params_override: str, run_id: str) -> dict[str, Any]:
    from ..evaluate.benchmark import build_benchmark

    enter_run(run_id)
    m = build_benchmark(dataset.path, effective(resolve(values, params_override)))
    dataset.metadata.update({"items": m.get("accepted"), "kinds": m.get("benchmark", {}).get("kinds", {})})
    return m


def judge_step(data, model, metrics, values: dict[str, Any], params_override: str, run_id: str) -> dict[str, Any]:
    from ..evaluate.judge import JudgeError, train_judge

    enter_run(run_id)
    out = Path(model.path)
    m = train_judge(out, effective(resolve(values, params_override)), data.path, metrics_path=out.parent / f".{out.name}.metrics.json")
    write_metrics(metrics, {"auroc": m.get("auroc"), "wall_s": m.get("wall_s")})
    model.metadata.update({"passes": bool(m.get("passes"))})
    if not m.get("passes"):
        raise JudgeError(f"the judge's held-out AUROC {m.get('auroc')} is below evaluate.judge.min_auroc for some finding: "
                         "raise evaluate.judge.phantoms or epochs (params_override)")
    return m


def confusion(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[int]]]:
    """DVC confusion rows ({actual, predicted} per item) -> (categories, matrix[actual][predicted])."""
    counts = Counter((str(r["actual"]), str(r["predicted"])) for r in rows)
    cats = sorted({a for a, _ in counts} | {p for _, p in counts})
    return cats, [[counts[(a, p)] for p in cats] for a in cats]


def evaluate_step(model, data, benchmark, judge, results, metrics, report, confusion_matrix, values: dict[str, Any],
                  params_override: str, run_id: str) -> dict[str, Any]:
    """Score stage3's model; `results` gets metrics.json (the evaluate -> promote contract) and plots/."""
    from ..evaluate.run import EvaluateError, evaluate

    enter_run(run_id)
    out = Path(results.path)
    result = evaluate(model.path, data.path, benchmark.path, judge.path, out, effective(resolve(values, params_override)))
    if result.computed() == 0:
        raise EvaluateError(f"no metric could be computed: see the reasons in {out / 'metrics.json'}")
    ok = {k: m.value for k, m in result.metrics.items() if m.status.value == "ok" and m.value is not None}
    write_metrics(metrics, ok)
    Path(report.path).write_text(inline_html(out / "report" / "index.html"), encoding="utf-8")
    rows = json.loads((out / "plots" / "confusion.json").read_text()) if (out / "plots" / "confusion.json").exists() else []
    if rows:
        cats, matrix = confusion(rows)
        confusion_matrix.log_confusion_matrix(cats, matrix)
    else:
        confusion_matrix.metadata["status"] = "unavailable: no closed VQA items were scored"
    Path(confusion_matrix.path).write_text(json.dumps({"rows": len(rows)}) + "\n")  # a file, so the task can cache
    results.metadata.update({"schema_version": result.schema_version, "computed": result.computed(),
                             "of": len(result.metrics)})
    return {"computed": result.computed(), "of": len(result.metrics)}


def ablation_step(data, benchmark, judge, autoencoder, table, metrics, values: dict[str, Any], params_override: str,
                  run_id: str) -> list[dict[str, Any]]:
    """The synergy ablation (KFP only, `run_ablation`): `evaluate.synergy.run_ablation`, the same function as
    `unimedvl evaluate --ablation`; its table is the Markdown artefact, its mean deltas the Metrics. Its
    training and evaluation runs log under their own MLflow parent (key `<run id>:ablation`)."""
    from ..evaluate.synergy import run_ablation

    enter_run(f"{run_id}:ablation" if run_id else "")
    params = effective(resolve(values, params_override))
    doc = Path(table.path)
    # Seeds and the step cap: pipeline.ablation (the smoke profile's is one seed, a few steps).
    rows = run_ablation(Path(data.path), Path(benchmark.path), Path(judge.path), Path(autoencoder.path),
                        doc.parent / f".{doc.name}-work", params, doc=doc)
    write_metrics(metrics, {f"{r['baseline']}.{r['metric']}": r["mean"] for r in rows})
    return rows

"""register and promote as KFP steps: the registry functions the CLI verbs and DVC stages call
(`promote.registry.register`, `promote.promotion.promote`), with their file locations pointed at the
task's artefacts instead of the repository folders dvc.yaml uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .params import effective, params_file, resolve
from .steps import enter_run, write_metrics


def _with_paths(values: dict[str, Any], params_override: str, register: dict[str, str], promote: dict[str, str] | None = None):
    params = effective(resolve(values, params_override))
    update = {"register": params.register.model_copy(update=register)}
    if promote:
        update["promote"] = params.promote.model_copy(update=promote)
    return params.model_copy(update=update)


def register_step(model, results, data, version, values: dict[str, Any], params_override: str, run_id: str) -> dict[str, Any]:
    from ..promote.registry import register

    enter_run(run_id)
    Path(version.path).parent.mkdir(parents=True, exist_ok=True)
    params = _with_paths(values, params_override, {"model_dir": model.path, "eval_metrics": str(Path(results.path) / "metrics.json"),
                                                   "data_dir": data.path, "output": version.path})
    # stage3's MLflow run (the one that logged the model folder) rides on its Model artefact.
    summary = register(params, params_file(), run_id=model.metadata.get("run_id"))
    version.metadata.update({k: summary[k] for k in ("name", "version", "model_uri", "run_id") if k in summary})
    return summary


def promote_step(version, results, data, benchmark, judge, decision, card, metrics, values: dict[str, Any],
                 params_override: str, run_id: str) -> dict[str, Any]:
    from ..promote import promotion

    enter_run(run_id)
    out = Path(decision.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = _with_paths(values, params_override,
                         {"eval_metrics": str(Path(results.path) / "metrics.json"), "data_dir": data.path, "output": version.path},
                         {"decision": str(out), "model_card": card.path, "audit_log": str(out.parent / "audit.jsonl"),
                          "local_overlay": str(out.parent / "overlay"), "benchmark_dir": benchmark.path, "judge_dir": judge.path})
    # On the cluster with a GitOps repository: the overlay change is pushed there as a review branch.
    result = (promotion.promote_and_push if params.pipeline.gitops.repo_url else promotion.promote)(params, params_file())
    gates = {f"gate.{g['gate']}": 1.0 if g["passed"] else 0.0 for g in result["gates"]}
    write_metrics(metrics, {"passed": 1.0 if result["passed"] else 0.0, **gates})
    decision.metadata.update({"passed": bool(result["passed"]), "version": result["candidate"]["version"],
                              "mode": result["mode"], "aliases": json.dumps(result["aliases"])})
    return result

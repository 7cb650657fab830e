"""Promotion gates over metric keys of `eval/metrics.json`, and the licence gate.

A gate fails when its metric (or its baseline) is absent or not `ok`: an uncomputable metric never
promotes a model. The regression check compares with the incumbent only on identical evaluation
inputs (test data, benchmark, judge, protocol, sampling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import GateConfig


@dataclass
class GateResult:
    gate: str
    passed: bool
    metric: str | None = None
    value: float | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)  # each {rule, threshold, passed, other}
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ok(metrics, key: str) -> tuple[float | None, str | None]:
    m = metrics.metrics.get(key)
    if m is None:
        return None, f"{key} is not in eval/metrics.json"
    if m.status.value != "ok" or m.value is None:
        return None, f"{key} has status {m.status.value}" + (f" ({m.reason})" if m.reason else "")
    return float(m.value), None


def check_gate(gate: GateConfig, metrics, incumbent_metrics=None, incumbent_note: str | None = None) -> GateResult:
    value, why = _ok(metrics, gate.metric)
    res = GateResult(gate=gate.metric, metric=gate.metric, value=value, passed=False)
    if why:
        res.reason = why
        return res
    if gate.min is not None:
        res.checks.append({"rule": "min", "threshold": gate.min, "passed": value >= gate.min})
    if gate.baseline is not None:
        base, why = _ok(metrics, gate.baseline)
        if why:
            res.checks.append({"rule": f"baseline {gate.baseline}", "threshold": None, "passed": False, "reason": why})
        else:
            res.checks.append({"rule": f"baseline {gate.baseline} + margin {gate.margin:g}", "threshold": base + gate.margin,
                               "baseline": base, "passed": value >= base + gate.margin})
    if gate.max_regression is not None:
        if incumbent_metrics is None:
            if incumbent_note:  # an incumbent exists but no comparable numbers: do not promote blind
                res.checks.append({"rule": "max_regression", "threshold": None, "passed": False, "reason": incumbent_note})
        else:
            inc, why = _ok(incumbent_metrics, gate.metric)
            if why:
                res.checks.append({"rule": "max_regression", "threshold": None, "passed": True,
                                   "reason": f"incumbent: {why}; nothing to regress from"})
            else:
                res.checks.append({"rule": f"incumbent {inc:.6g} - max_regression {gate.max_regression:g}",
                                   "threshold": inc - gate.max_regression, "incumbent": inc,
                                   "passed": value >= inc - gate.max_regression})
    res.passed = all(c["passed"] for c in res.checks)
    failed = [c for c in res.checks if not c["passed"]]
    if failed:
        res.reason = "; ".join(
            c.get("reason") or f"{gate.metric} = {value:.6g} < {c['threshold']:.6g} ({c['rule']})" for c in failed)
    return res


def licence_gate(commercial: bool, licences: list[str], non_commercial: bool) -> GateResult:
    """A model trained on non-commercial (or unknown-licence) sources never goes to a commercial environment."""
    res = GateResult(gate="licence", passed=True, checks=[{"rule": "commercial environment", "threshold": None,
                                                           "passed": True, "licences": licences}])
    if commercial and non_commercial:
        res.passed = False
        res.checks[0]["passed"] = False
        res.reason = (f"the environment is commercial and the training data include non-commercial or unknown "
                      f"licences ({', '.join(licences) or 'unknown'})")
    return res

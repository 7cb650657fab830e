"""The eval/metrics.json contract: validation, round trip, the generated docs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from unimedvl.evaluate.schema import (
    EvalMetrics,
    Metric,
    Status,
    is_known_key,
    load_metrics,
    render_docs,
    save_metrics,
)

ROOT = Path(__file__).resolve().parents[2]


def test_docs_metrics_md_is_fresh():
    assert (ROOT / "docs" / "metrics.md").read_text() == render_docs(), (
        "docs/metrics.md is stale: python -m unimedvl.evaluate.schema > docs/metrics.md")


def test_round_trip_and_value(tmp_path):
    m = EvalMetrics(metrics={
        "vqa.closed.accuracy": Metric.ok(0.75, 40, (0.6, 0.88)),
        "report.meteor": Metric.unavailable("needs WordNet"),
        "generation.domain_fd.xray": Metric.insufficient(10, 64),
    })
    p = save_metrics(m, tmp_path / "eval" / "metrics.json")
    back = load_metrics(p)
    assert back == m
    assert back.value("vqa.closed.accuracy") == 0.75
    assert back.value("report.meteor") is None and back.value("missing.key") is None
    assert back.computed() == 1
    raw = json.loads(p.read_text())
    assert raw["schema_version"] == 1 and raw["metrics"]["report.meteor"]["status"] == "unavailable"


def test_rejects_fake_numbers_and_unknown_keys():
    with pytest.raises(ValidationError, match="no value"):
        Metric(value=0.0, status=Status.unavailable, reason="x")
    with pytest.raises(ValidationError, match="needs a reason"):
        Metric(status=Status.insufficient_samples)
    with pytest.raises(ValidationError, match="finite"):
        Metric(value=float("nan"), n=3)
    with pytest.raises(ValidationError, match="not listed"):
        EvalMetrics(metrics={"vqa.made_up": Metric.ok(1.0, 1)})
    with pytest.raises(ValidationError, match="schema_version"):
        EvalMetrics(schema_version=2)


def test_placeholder_keys():
    assert is_known_key("generation.domain_fd.mri")
    assert is_known_key("vqa.closed.by_source.slake.accuracy")
    assert is_known_key("generation.faithfulness.effusion")
    assert not is_known_key("vqa.closed.by_source.accuracy")
    assert not is_known_key("generation.domain_fd")

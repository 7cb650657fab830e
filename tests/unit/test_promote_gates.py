"""Promotion gates and the overlay writer without a registry: every rule fails for its own reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unimedvl.config import GateConfig
from unimedvl.evaluate.schema import EvalMetrics, Metric, Status
from unimedvl.promote.gates import check_gate, licence_gate
from unimedvl.promote.gitops import OverlayError, check_storage_uri, render_local_overlay
from unimedvl.promote.lineage import is_non_commercial

REPO = Path(__file__).resolve().parents[2]


def metrics(**values) -> EvalMetrics:
    out = {}
    for key, v in values.items():
        k = key.replace("__", ".")
        out[k] = Metric(value=v, n=50) if v is not None else Metric(value=None, n=3, status=Status.insufficient_samples,
                                                                    reason="3 < min_n")
    return EvalMetrics(metrics=out)


GATE = GateConfig(metric="vqa.finding.accuracy", min=0.4, baseline="vqa.finding.blind.accuracy", margin=0.05,
                  max_regression=0.02)


def test_passes_when_every_rule_holds():
    r = check_gate(GATE, metrics(vqa__finding__accuracy=0.7, vqa__finding__blind__accuracy=0.5),
                   metrics(vqa__finding__accuracy=0.71))
    assert r.passed and r.reason is None and [c["passed"] for c in r.checks] == [True, True, True]


@pytest.mark.parametrize("cand, inc, why", [
    ({"vqa__finding__accuracy": 0.3, "vqa__finding__blind__accuracy": 0.1}, None, "0.3 < 0.4 (min)"),
    ({"vqa__finding__accuracy": 0.52, "vqa__finding__blind__accuracy": 0.5}, None, "0.52 < 0.55"),
    ({"vqa__finding__accuracy": 0.7, "vqa__finding__blind__accuracy": 0.5}, {"vqa__finding__accuracy": 0.8}, "incumbent 0.8"),
    ({"vqa__finding__accuracy": None, "vqa__finding__blind__accuracy": 0.5}, None, "status insufficient_samples (3 < min_n)"),
    ({"vqa__finding__accuracy": 0.7, "vqa__finding__blind__accuracy": None}, None, "vqa.finding.blind.accuracy has status"),
    ({"vqa__finding__blind__accuracy": 0.5}, None, "vqa.finding.accuracy is not in eval/metrics.json"),
], ids=["below-min", "below-baseline-margin", "regression", "metric-not-ok", "baseline-not-ok", "absent"])
def test_fails_naming_the_rule_and_numbers(cand, inc, why):
    r = check_gate(GATE, metrics(**cand), metrics(**inc) if inc else None)
    assert not r.passed and why in r.reason


def test_incumbent_without_comparable_numbers_fails():
    r = check_gate(GATE, metrics(vqa__finding__accuracy=0.9, vqa__finding__blind__accuracy=0.5), None,
                   "incumbent version 3 was evaluated on other inputs")
    assert not r.passed and "other inputs" in r.reason


def test_licence_gate():
    assert is_non_commercial("CC-BY-NC-ND-4.0") and is_non_commercial("LicenseRef-unknown") and not is_non_commercial("CC0-1.0")
    assert licence_gate(False, ["CC-BY-NC-ND-4.0"], True).passed
    r = licence_gate(True, ["CC-BY-NC-ND-4.0", "CC0-1.0"], True)
    assert not r.passed and "CC-BY-NC-ND-4.0" in r.reason
    assert licence_gate(True, ["CC0-1.0"], False).passed


def test_storage_uri_must_be_the_promoted_copy():
    good = "s3://unimedvl-models/unimedvl/4/"
    assert check_storage_uri(good, good) == good
    for bad in ("models:/unimedvl@staging", "mlflow-artifacts:/1/abc/artifacts/model", "s3://other/unimedvl/4/"):
        with pytest.raises(OverlayError, match="refusing"):
            check_storage_uri(bad, good)


def test_local_overlay_pins_the_version_and_leaves_the_committed_one(tmp_path):
    from unimedvl.manifests import check, kustomize_build

    committed = (REPO / "infra/overlays/staging/inferenceservice-patch.yaml").read_text()
    out = render_local_overlay(tmp_path / "overlay", REPO / "infra/overlays/staging", "unimedvl", "7",
                               "ghcr.io/unimedvl/unimedvl:0.2.0", "s3://unimedvl-models/unimedvl/7/")
    patch = yaml.safe_load((out / "inferenceservice-patch.yaml").read_text())
    assert patch["metadata"]["annotations"] == {"unimedvl.io/model-name": "unimedvl", "unimedvl.io/model-version": "7"}
    assert patch["spec"]["predictor"]["model"] == {"image": "ghcr.io/unimedvl/unimedvl:0.2.0",
                                                   "storageUri": "s3://unimedvl-models/unimedvl/7/"}
    docs = kustomize_build(out)
    check(docs)
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://unimedvl-models/unimedvl/7/"
    assert (REPO / "infra/overlays/staging/inferenceservice-patch.yaml").read_text() == committed


def test_boundaries_are_inclusive_and_the_result_carries_the_numbers():
    """Exactly at min, at baseline + margin and at incumbent - max_regression passes (>=, not >); the
    result names the gate and value, and the regression threshold is below the incumbent."""
    gate = GateConfig(metric="vqa.finding.accuracy", min=0.75, baseline="vqa.finding.blind.accuracy", margin=0.25, max_regression=0.25)
    r = check_gate(gate, metrics(vqa__finding__accuracy=0.75, vqa__finding__blind__accuracy=0.5), metrics(vqa__finding__accuracy=1.0))
    assert r.passed is True, r.checks
    assert (r.gate, r.metric, r.value) == ("vqa.finding.accuracy",) * 2 + (0.75,)
    assert [c["threshold"] for c in r.checks] == [0.75, 0.75, 0.75] and r.checks[2]["incumbent"] == 1.0
    below = check_gate(gate, metrics(vqa__finding__accuracy=0.74, vqa__finding__blind__accuracy=0.5), metrics(vqa__finding__accuracy=1.0))
    assert [c["passed"] for c in below.checks] == [False, False, False] and below.passed is False


def test_an_incumbent_whose_metric_is_not_ok_does_not_block():
    r = check_gate(GATE, metrics(vqa__finding__accuracy=0.7, vqa__finding__blind__accuracy=0.5),
                   metrics(vqa__finding__accuracy=None))
    assert r.passed and r.reason is None
    last = r.checks[-1]
    assert last["rule"] == "max_regression" and last["passed"] is True and "nothing to regress from" in last["reason"]


def test_licence_gate_result_names_itself():
    ok, bad = licence_gate(False, [], False), licence_gate(True, [], True)
    assert ok.gate == bad.gate == "licence" and ok.checks[0]["passed"] is True and bad.checks[0]["passed"] is False
    assert bad.passed is False and "licences (unknown)" in bad.reason  # no licence list: named as unknown


def test_gate_results_serialise_with_their_checks():
    """The promotion record stores `to_dict()`: the licence check names its rule and the licences, and a
    failed metric gate is False (not merely falsy) with its reason."""
    r = licence_gate(True, ["CC-BY-NC-ND-4.0", "LicenseRef-unknown"], True)
    assert r.to_dict() == {"gate": "licence", "passed": False, "metric": None, "value": None, "reason": r.reason,
                           "checks": [{"rule": "commercial environment", "threshold": None, "passed": False,
                                       "licences": ["CC-BY-NC-ND-4.0", "LicenseRef-unknown"]}]}
    assert "licences (CC-BY-NC-ND-4.0, LicenseRef-unknown)" in r.reason
    absent = check_gate(GATE, metrics(vqa__finding__blind__accuracy=0.5))
    assert absent.passed is False and absent.to_dict()["reason"] == "vqa.finding.accuracy is not in eval/metrics.json"


def test_every_check_record_has_its_rule_threshold_and_numbers():
    """The check records the promotion decision stores, exactly, for each way a rule can go; two failures
    are joined into one reason."""
    both_bad = check_gate(GATE, metrics(vqa__finding__accuracy=0.3, vqa__finding__blind__accuracy=None), None,
                          "incumbent version 3 was evaluated on other inputs")
    assert both_bad.checks == [
        {"rule": "min", "threshold": 0.4, "passed": False},
        {"rule": "baseline vqa.finding.blind.accuracy", "threshold": None, "passed": False,
         "reason": "vqa.finding.blind.accuracy has status insufficient_samples (3 < min_n)"},
        {"rule": "max_regression", "threshold": None, "passed": False, "reason": "incumbent version 3 was evaluated on other inputs"},
    ]
    assert both_bad.reason == ("vqa.finding.accuracy = 0.3 < 0.4 (min); vqa.finding.blind.accuracy has status "
                               "insufficient_samples (3 < min_n); incumbent version 3 was evaluated on other inputs")
    good = check_gate(GATE, metrics(vqa__finding__accuracy=0.7, vqa__finding__blind__accuracy=0.5),
                      metrics(vqa__finding__accuracy=None))
    assert good.checks[1] == {"rule": "baseline vqa.finding.blind.accuracy + margin 0.05", "threshold": 0.55,
                              "baseline": 0.5, "passed": True}
    assert good.checks[2] == {"rule": "max_regression", "threshold": None, "passed": True, "reason":
                              "incumbent: vqa.finding.accuracy has status insufficient_samples (3 < min_n); nothing to regress from"}
    assert good.to_dict()["checks"] == good.checks and good.to_dict()["passed"] is True

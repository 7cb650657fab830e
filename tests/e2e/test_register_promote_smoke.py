"""register -> promote on the shared smoke pipeline's real stage3 model and real evaluation (slow; the
lean twins are tests/integration/test_registry_promote.py): the embedded default's registry (MLflow
on SQLite), local promotion, the decision on real metric values, the overlay, the pyfunc flavour."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_register_and_promote_the_smoke_model(smoke_pipeline, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd
    import torch

    from unimedvl.evaluate.run import evaluate
    from unimedvl.manifests import check, kustomize_build
    from unimedvl.promote.promotion import promote
    from unimedvl.promote.registry import register
    from unimedvl.tracking import step_run

    p = smoke_pipeline
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    for k in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    torch.set_num_threads(1)
    metrics = evaluate(p["stage3"], p["qc"], p["benchmark"], p["judge"], tmp_path / "eval", p["params"],
                       log_to_mlflow=False, untrained_cache=tmp_path / "cache")
    tracking = p["params"].tracking.model_copy(update={"enabled": True, "uri": uri, "system_metrics": False})
    with step_run("stage3", tracking=tracking) as run:  # what stage3 logs with tracking on
        run.log_artifact(p["stage3"], "model")
    Path("models").mkdir()
    Path("models/stage3.metrics.json").write_text(json.dumps({"run_id": run.run_id}))
    params = p["params"].model_copy(update={
        "tracking": tracking,
        "register": p["params"].register.model_copy(update={"model_dir": str(p["stage3"]), "data_dir": str(p["qc"]),
                                                             "eval_metrics": str(tmp_path / "eval/metrics.json")}),
        "promote": p["params"].promote.model_copy(update={
            "overlay": str(repo / "infra/overlays/staging"), "benchmark_dir": str(p["benchmark"]),
            "judge_dir": str(p["judge"])}),  # the default gates of params.yaml
    })
    v = register(params, repo / "params.yaml")
    assert v["version"] == "1"
    for gate in params.promote.gates:  # the default gates use only metrics the embedded default computes
        for key in filter(None, (gate.metric, gate.baseline)):
            assert metrics.metrics[key].status.value == "ok", (key, metrics.metrics[key].reason)
    d = promote(params, repo / "params.yaml")
    g, gate = d["gates"][0], params.promote.gates[0]
    value, base = metrics.metrics[gate.metric].value, metrics.metrics[gate.baseline].value
    assert g["value"] == pytest.approx(value) and g["passed"] == (value >= base + gate.margin and value >= gate.min)
    assert d["mode"] == "local" and d["uploaded"] is False
    if d["passed"]:
        assert d["aliases"] == {"staging": "1"}
        check(kustomize_build("promote/overlay"))
        card = Path("promote/MODEL_CARD.md").read_text()
        assert "phantom" in card and gate.metric in card
        model = mlflow.pyfunc.load_model(f"models:/{params.register.model_name}@staging")
        out = model.predict(pd.DataFrame([{"task": "generate", "prompt": "chest radiograph", "steps": 2}]))
        assert out["image"][0][:4] == b"\x89PNG"
    else:  # a smoke model that does not beat itself blind is rejected, and nothing changes
        assert d["aliases"] == {} and not Path("promote/overlay").exists()
    assert os.path.exists("promote/audit.jsonl")

"""`unimedvl pipeline run-local`: the Kubeflow DAG through kfp.local gives the library's (and `dvc repro`'s)
results on the same params and key. The default run has the lean twin (the DAG's first steps, compared
with the shared smoke pipeline's); the whole DAG (minutes) and the dvc comparison are `slow`."""


# No `from __future__ import annotations`: KFP reads the lean pipeline's annotations as types.
import json
import os
import re
from pathlib import Path

import pytest

from tests.pipeline_fixture import PHANTOMS, SPLITS

REPO = Path(__file__).resolve().parents[2]
KEY = "kfp-local-test-key"  # the dvc comparison's
# The shared smoke pipeline's data (tests/pipeline_fixture.py: phantoms only, its splits), two training
# steps per stage and a small evaluation. The judge keeps the smoke profile's settings and the default
# gate (evaluate.judge.min_auroc 0.95), which they pass.
LEAN = {"train_profile": "smoke", "ingest_phantom_count": PHANTOMS, "autoencoder_steps": 3, "stage1_steps": 2,
        "stage2_steps": 2, "stage3_steps": 2, "run_ablation": True,
        "params_override": f"ingest:\n  sources: [{{name: phantom}}]\n  split_fractions: {json.dumps(SPLITS)}\n"
                           "evaluate:\n  max_test_items: 10\n"
                           "  benchmark: {finding_questions: 24, open_questions: 6, report_prompts: 6, generation_per_finding: 4,"
                           " counterfactual_pairs: 4, super_resolution_pairs: 4, cross_modal_pairs: 4}\n"}


def _run(root, arguments, smoke_pipeline, pipeline=None):
    """run-local with the shared smoke pipeline's de-identification key, so its ingest and qc shards can
    be compared with the library's."""
    from unimedvl.pipeline.local import run_local

    key = (smoke_pipeline["root"] / "secret.key").read_text().strip()
    env = {"UNIMEDVL_SECRET_KEY": key, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_local(root / "root", arguments, pipeline=pipeline), env
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def lean_pipeline():
    """The DAG's first steps, the same components and wiring helper, under the same exit handler: the
    default run's twin of the whole-DAG run below (which takes minutes)."""
    from kfp import dsl

    import components as C
    from pipelines.unimedvl import _task

    @dsl.pipeline(name="unimedvl-lean")
    def lean(train_profile: str = "smoke", ingest_phantom_count: int = PHANTOMS, params_override: str = ""):
        form = {**dict(locals()), "image": "unused", "gpu_image": "unused", "retries": 0,
                "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        with dsl.ExitHandler(C.close_run(run_id=form["run_id"])):
            ingest = _task(C.ingest, form)
            qc = _task(C.qc, form, ingested=ingest.outputs["dataset"])
            _task(C.heldout, form, data=qc.outputs["dataset"])
            _task(C.tokenizer, form, data=qc.outputs["dataset"])

    return lean


@pytest.fixture(scope="session")
def kfp_lean(tmp_path_factory, smoke_pipeline):
    args = {k: v for k, v in LEAN.items() if k in ("train_profile", "ingest_phantom_count", "params_override")}
    return _run(tmp_path_factory.mktemp("kfp-lean"), args, smoke_pipeline, lean_pipeline())


@pytest.fixture(scope="session")
def kfp_run(tmp_path_factory, smoke_pipeline):
    # With the ablation branch, at the smoke profile's budget (pipeline.ablation: one seed, capped steps).
    return _run(tmp_path_factory.mktemp("kfp"), LEAN, smoke_pipeline)


def shard_hashes(folder: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((folder / "manifest.json").read_text())["shards"]]


def check_same_shards(run, smoke_pipeline):
    from unimedvl.pipeline.params import effective, resolve

    params = effective(resolve({k: v for k, v in LEAN.items() if k.startswith(("ingest_", "train_"))}, LEAN["params_override"]))
    fixture = smoke_pipeline["params"]
    assert params.ingest == fixture.ingest and params.qc == fixture.qc
    assert shard_hashes(run / "ingest" / "dataset") == shard_hashes(smoke_pipeline["ingest"])
    assert shard_hashes(run / "qc" / "dataset") == shard_hashes(smoke_pipeline["qc"])
    assert shard_hashes(smoke_pipeline["qc"])


def parent_runs(run, env, expect):
    import mlflow

    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("unimedvl")
    out = json.loads((run / "ingest" / "executor_output.json").read_text())
    run_id = out["artifacts"]["dataset"]["artifacts"][0]["metadata"]["pipeline_run_id"]
    assert run_id
    for key, steps, one_parent in expect(run_id):
        parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`unimedvl.pipeline_key` = '{key}' and "
                                     "tags.`unimedvl.role` = 'pipeline'")
        # The ablation retrains each stage per variant: unimedvl.tracking opens a parent per repeat.
        assert (len(parents) == 1 if one_parent else parents) and all(p.info.status == "FINISHED" for p in parents), key
        children = [c for p in parents for c in client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{p.info.run_id}'")]
        assert {r.data.tags["unimedvl.step"] for r in children} >= steps, key


def test_components_under_kfp_local_match_the_library(kfp_lean, smoke_pipeline):
    """Lean twin: ingest -> qc -> heldout, tokenizer through kfp.local give the library's shards (same params,
    same key), a self-contained QC report, and the exit handler closes the MLflow parent run."""
    from unimedvl.model.tokenizer import load_tokenizer

    run, env = kfp_lean
    check_same_shards(run, smoke_pipeline)
    assert load_tokenizer(run / "tokenizer" / "model").vocab_size > 256
    assert json.loads((run / "heldout" / "metrics").read_text())["n"] > 0
    page = (run / "qc" / "report").read_text()
    assert "data:image/png;base64," in page and not re.search(r"""src=["'][^"':]+\.png""", page)
    parent_runs(run, env, lambda rid: [(rid, {"qc", "heldout", "tokenizer"}, True)])


@pytest.mark.slow
def test_run_local_matches_the_library_on_the_same_params_and_key(kfp_run, smoke_pipeline):
    run, env = kfp_run
    check_same_shards(run, smoke_pipeline)


@pytest.mark.slow
def test_run_local_model_folders_load_and_artefacts_render(kfp_run):
    from unimedvl.model.checkpoint import load_model
    from unimedvl.model.tokenizer import load_tokenizer

    run, env = kfp_run
    assert load_tokenizer(run / "tokenizer" / "model").vocab_size > 256
    for step in ("autoencoder", "stage1", "stage2", "stage3"):
        model, report = load_model(run / step / "model")
        assert report.ok, (step, report)
        lineage = json.loads((run / step / "model" / "lineage.json").read_text())
        assert lineage["extra"]["stage"] == step
        m = json.loads((run / step / "metrics").read_text())
        if step != "autoencoder":
            assert m["steps"] == 2.0 and m["heldout_end.loss"] > 0, (step, m)
    # evaluate: metrics.json validates against the evaluate -> promote contract; the Metrics artefact holds its
    # computed keys; the closed-VQA confusion matrix is a ClassificationMetrics artefact.
    from unimedvl.evaluate.schema import load_metrics

    contract = load_metrics(run / "evaluate" / "results" / "metrics.json")
    shown = json.loads((run / "evaluate" / "metrics").read_text())
    ok = {k: m.value for k, m in contract.metrics.items() if m.status.value == "ok"}
    assert ok and shown == pytest.approx(ok)
    out = json.loads((run / "evaluate" / "executor_output.json").read_text())
    cm = out["artifacts"]["confusion"]["artifacts"][0]["metadata"]
    assert cm.get("confusionMatrix", {}).get("rows") or cm.get("status", "").startswith("unavailable")
    assert "<html" in (run / "evaluate" / "report").read_text().lower()
    judged = json.loads((run / "judge" / "metrics").read_text())
    assert len([k for k in judged if k.startswith("auroc.")]) == 6 and all(v >= 0.95 for k, v in judged.items() if k.startswith("auroc."))
    # register made a model version over stage3's run; promote decided on it and wrote the model card.
    version = json.loads((run / "register" / "executor_output.json").read_text())["artifacts"]["version"]["artifacts"][0]["metadata"]
    assert version["name"] == "unimedvl" and int(version["version"]) >= 1
    decision = json.loads((run / "promote" / "decision").read_text())
    assert decision["candidate"]["version"] == version["version"] and isinstance(decision["passed"], bool)
    assert "unimedvl" in (run / "promote" / "card").read_text().lower()
    qc = json.loads((run / "qc" / "metrics").read_text())
    assert qc["accepted"] + qc["quarantined"] == qc["seen"] > 0
    page = (run / "qc" / "report").read_text()
    assert "data:image/png;base64," in page and not re.search(r"""src=["'][^"':]+\.png""", page)
    # The ablation branch ran (run_ablation=True): each variant trained and was evaluated on the smoke
    # profile's one seed, the table is the Markdown artefact and its mean deltas the Metrics.
    from unimedvl.pipeline.params import effective, resolve

    params = effective(resolve({"train_profile": "smoke"}, LEAN["params_override"]))
    cap = params.pipeline.ablation.max_steps  # the variants train the profile's stage steps, capped
    assert params.pipeline.ablation.seeds == (0,) and cap < params.stage3.steps
    table = (run / "ablation" / "table").read_text()
    assert "| `vqa.finding.accuracy` | understanding_only |" in table and f"Seeds 0; steps per stage as in params.yaml (capped at {cap})" in table
    for variant in ("unified", "generation_only", "understanding_only"):
        work = run / "ablation" / ".table-work" / f"{variant}-seed0"
        assert load_metrics(work / "eval" / "metrics.json").computed() > 0, variant
        assert json.loads((work / "checkpoints" / "stage3" / "result.json").read_text())["steps"] == cap, variant
    deltas = json.loads((run / "ablation" / "metrics").read_text())
    assert "understanding_only.vqa.finding.accuracy" in deltas
    # The exit handler closed the MLflow parent runs of this KFP run and of its ablation branch.
    parent_runs(run, env, lambda rid: [(rid, {"qc", "heldout", "tokenizer", "autoencoder", "stage1", "stage2", "stage3",
                                              "evaluate"}, True), (f"{rid}:ablation", {"stage1", "stage2", "stage3"}, False)])


@pytest.mark.slow
def test_run_local_smoke_profile_equals_dvc_repro(tmp_path):
    """The full smoke profile (packaged corpus + phantoms) through kfp.local and `dvc repro` with the
    same params and key: identical ingest and qc shards; loadable models."""
    from tests.pipeline_helpers import dvc_repro_smoke
    from unimedvl.model.checkpoint import load_model
    from unimedvl.pipeline.local import run_local

    dvc_dir = dvc_repro_smoke(tmp_path / "dvc", KEY, env_extra={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'dvc.db'}"})
    os.environ.update({"UNIMEDVL_SECRET_KEY": KEY, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'kfp.db'}"})
    try:
        run = run_local(tmp_path / "root", {"train_profile": "smoke", "ingest_phantom_count": 120},
                        params=dvc_dir / "params.yaml")
    finally:
        os.environ.pop("UNIMEDVL_SECRET_KEY", None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert shard_hashes(run / "ingest" / "dataset") == shard_hashes(dvc_dir / "data" / "ingest")
    assert shard_hashes(run / "qc" / "dataset") == shard_hashes(dvc_dir / "data" / "qc")
    for step in ("autoencoder", "stage1", "stage2", "stage3"):
        assert load_model(run / step / "model")[1].ok

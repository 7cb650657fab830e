"""The shared smoke pipeline (the `smoke_pipeline` session fixture in conftest.py).

Runs every step up to the evaluation inputs on the `smoke` profile, in a temporary folder, with the
same library functions the CLI and DVC stages call. A dict of paths comes back: `root`, `params`
(the resolved `Params`), `ingest`, `qc`, `models` (tokenizer, autoencoder, stage1-3 folders under it),
`stage3`, `benchmark`, `judge`, `judge_metrics`, `mlflow_uri`, `wall_s` per step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PHANTOMS = 640  # records: enough of every task in a few seconds
# a larger test share than the demo's, so the test split holds >= smoke min_n questions of each kind
SPLITS = {"train": 0.6, "val": 0.1, "test": 0.3}


def build_smoke_pipeline(root: Path) -> dict[str, Any]:
    import torch

    from unimedvl.config import SourceSpec, load_params
    from unimedvl.data.ingest import ingest
    from unimedvl.evaluate.benchmark import build_benchmark
    from unimedvl.evaluate.judge import train_judge
    from unimedvl.qc import run_qc
    from unimedvl.train.stages import resolve_params, run_stage

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "UNIMEDVL_RUN_ID", "UNIMEDVL_SECRET_FILE")}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["UNIMEDVL_RUN_ID"] = "smoke-pipeline-fixture"
    # A fixed test key: ids, and so row order and every figure the tests read, are the same in every
    # session (a fresh random key per session made the judge, and the tests on it, vary run to run).
    (root / "secret.key").write_text("smoke-pipeline-fixture-key-not-a-secret\n")  # pragma: allowlist secret
    os.environ["UNIMEDVL_SECRET_FILE"] = str(root / "secret.key")
    walls: dict[str, float] = {}
    try:
        params = resolve_params(load_params(REPO / "params.yaml"), "smoke")
        phantom = params.ingest.phantom.model_copy(update={"count": PHANTOMS})
        icfg = params.ingest.model_copy(update={"phantom": phantom, "sources": (SourceSpec(name="phantom"),),
                                                "split_fractions": SPLITS})
        # training's own MLflow runs are covered by the train tests; off here, they cost seconds per stage
        params = params.model_copy(update={"ingest": icfg,
                                           "tracking": params.tracking.model_copy(update={"enabled": False})})
        t = time.perf_counter()
        ingest(list(icfg.sources), root / "ingest", icfg)
        walls["ingest"] = time.perf_counter() - t
        t = time.perf_counter()
        run_qc(root / "ingest", root / "qc", params.qc, report_dir=root / "qc-report", metrics_path=root / "qc.json",
               log_to_mlflow=False)
        walls["qc"] = time.perf_counter() - t
        models = root / "models"
        for stage in ("tokenizer", "autoencoder", "stage1", "stage2", "stage3"):
            t = time.perf_counter()
            run_stage(stage, root / "qc", models / stage, params, profile="smoke", progress=False,
                      checkpoint_dir=root / "ck" / stage if stage.startswith("stage") else None)
            walls[stage] = time.perf_counter() - t
        t = time.perf_counter()
        build_benchmark(root / "benchmark", params)
        walls["benchmark"] = time.perf_counter() - t
        t = time.perf_counter()
        judge_metrics = train_judge(models / "judge", params, root / "qc")
        walls["judge"] = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"root": root, "params": params, "ingest": root / "ingest", "qc": root / "qc", "models": models,
            "stage3": models / "stage3", "benchmark": root / "benchmark", "judge": models / "judge",
            "judge_metrics": judge_metrics, "mlflow_uri": uri, "wall_s": walls}

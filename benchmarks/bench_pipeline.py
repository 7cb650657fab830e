"""What the Kubeflow orchestration costs: the whole pipeline on the smoke profile through kfp.local
(`unimedvl pipeline run-local`: each component a subprocess of this environment, artefacts passed
as on a cluster) against `dvc repro` of the same stages, params and key in a fresh copy of the
repository, one run each on this machine.

    nice -n 10 python benchmarks/bench_pipeline.py [--phantoms 640] [--packaged]

The data is the phantom source only (`--packaged` adds the packaged real corpus, several times
slower); the judge's gate is 0.5 on both sides (tests/pipeline_helpers.py says why). Both sides log to
their own MLflow SQLite store in a temp folder. Printed: both wall times, whether the ingest and qc
shards are byte-identical (sha256), and last `kfp.local/dvc time ratio: X` (goal X <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def hashes(folder: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((folder / "manifest.json").read_text())["shards"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phantoms", type=int, default=640)  # as tests/pipeline_fixture.py: every task family in each split
    ap.add_argument("--packaged", action="store_true", help="also ingest the packaged real corpus")
    args = ap.parse_args()
    from tests.pipeline_helpers import dvc_repro_smoke
    from unimedvl.pipeline.local import run_local

    key = "bench-pipeline-key"
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        work = dvc_repro_smoke(tmp / "dvc", key, args.phantoms, phantoms_only=not args.packaged,
                               env_extra={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'dvc.db'}"})
        dvc_s = time.perf_counter() - t0
        print(f"dvc repro (smoke, {args.phantoms} phantoms{' + packaged' if args.packaged else ''}): {dvc_s:.1f} s", flush=True)
        os.environ.update({"UNIMEDVL_SECRET_KEY": key, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'kfp.db'}"})
        t0 = time.perf_counter()
        run = run_local(tmp / "kfp", {"train_profile": "smoke", "ingest_phantom_count": args.phantoms},
                        params=work / "params.yaml")
        kfp_s = time.perf_counter() - t0
        print(f"kfp.local run-local (same params): {kfp_s:.1f} s", flush=True)
        same = (hashes(run / "ingest" / "dataset") == hashes(work / "data" / "ingest")
                and hashes(run / "qc" / "dataset") == hashes(work / "data" / "qc"))
        print(f"ingest and qc shards identical (sha256): {same}")
    print(f"kfp.local/dvc time ratio: {kfp_s / dvc_s:.2f}")


if __name__ == "__main__":
    main()

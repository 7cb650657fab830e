"""Steps/s of the full training path (Ray Train + data loader + MLflow logging, 1 worker) against a
bare single-process loop of the same model on the same batches, measured in one run.

    python benchmarks/bench_train.py                 # synthetic shards (64 px), tiny model
    python benchmarks/bench_train.py --data data/qc  # your QC'd shards
    python benchmarks/bench_train.py --threads 2     # the demo's worker: both cores, no prefetch thread

The bare loop gets its batches prebuilt in memory; the Ray path builds them live (PNG decode, resize,
tokenise, pack) and logs every step to MLflow (SQLite in a temp folder). Both use `--threads` torch
threads: with the default 1 a core is left for the Ray path's prefetch thread; where the step's threads
fill every core, as in the demo (`--threads 2` here), `train.data.prefetch_depth` builds batches in turn.
Printed: the loader's samples/s alone against the trainer's consumption (goal >= 5x), both mean step
times, and last `ray/bare step-time ratio: X` (goal X <= 1.15). Step times skip the first `--skip`
steps (warm-up) on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of both loops (the worker's cpus_per_worker)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tests.train_helpers import make_dataset, make_model_folder
    from unimedvl.config import Params
    from unimedvl.model.checkpoint import load_model
    from unimedvl.model.tokenizer import load_tokenizer
    from unimedvl.train.curriculum import apply_freezing
    from unimedvl.train.data import STAGE_IDS, MixtureLoader, ShardStore
    from unimedvl.train.loop import (
        EMA,
        TrainModule,
        make_optimizer,
        make_scheduler,
        step_generator,
        train_step,
    )
    from unimedvl.train.stages import run_stage, stage_spec

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data = args.data or make_dataset(tmp / "qc", per_task=24)
    folder = make_model_folder(data, tmp / "models" / "autoencoder")
    params = Params(train={"backend": "ray", "cpus_per_worker": args.threads, "heldout_samples": 4, "grid_steps": 2, "log_every": 1,
                           "checkpoint_every": 10**6},
                    stage1={"steps": args.steps, "max_tokens": args.max_tokens},
                    tracking={"uri": f"sqlite:///{tmp / 'mlflow.db'}"})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    spec = stage_spec(params, "stage1")

    # -- the loader alone ---------------------------------------------------------------------------
    tok = load_tokenizer(folder)
    model, _ = load_model(folder)
    loader = MixtureLoader(ShardStore(data), tok, spec, model.cfg, seed=params.train.seed)
    t = time.perf_counter()
    batches = [loader.batch(s) for s in range(args.steps)]
    load_s = time.perf_counter() - t
    samples = sum(b.samples for b in batches)
    loader_sps = samples / load_s

    # -- the bare loop ------------------------------------------------------------------------------
    apply_freezing(model, spec.frozen)
    module = TrainModule(model)
    opt = make_optimizer(model, spec)
    sched = make_scheduler(opt, spec, args.steps)
    ema = EMA(model, spec.ema_decay)
    bare = []
    for b in batches:
        t = time.perf_counter()
        train_step(module, b.packed, opt, sched, generator=step_generator(params.train.seed, STAGE_IDS["stage1"], b.step, 0),
                   grad_clip=spec.grad_clip, ema=ema, ema_model=model)
        bare.append(time.perf_counter() - t)

    # -- the full path: Ray Train + live loader + MLflow ---------------------------------------------
    t = time.perf_counter()
    run_stage("stage1", data, tmp / "models" / "stage1", params, checkpoint_dir=tmp / "ck", progress=False)
    total_ray = time.perf_counter() - t
    rows = [json.loads(x) for x in (tmp / "ck" / "losses.jsonl").read_text().splitlines()]
    ray = [r["step_time_s"] for r in rows]

    bare_t = statistics.mean(bare[args.skip :])
    ray_t = statistics.mean(ray[args.skip :])
    consume_sps = samples / args.steps / ray_t
    print(f"batches: {args.steps} x <= {args.max_tokens} tokens, {samples / args.steps:.1f} samples per batch")
    print(f"loader alone: {loader_sps:.1f} samples/s; trainer consumes {consume_sps:.1f} samples/s "
          f"(loader/trainer {loader_sps / consume_sps:.1f}x, goal >= 5x)")
    print(f"bare loop: {bare_t * 1000:.1f} ms/step; ray path: {ray_t * 1000:.1f} ms/step "
          f"(whole run_stage incl. Ray start, eval, save, grid: {total_ray:.1f} s)")
    print(f"ray/bare step-time ratio: {ray_t / bare_t:.3f}")


if __name__ == "__main__":
    main()

"""DeepSpeed ZeRO against DDP on two CPU workers (gloo, fp32), same data and initial weights: per-step
losses agree (ZeRO-2 within 1e-5 relative, ZeRO-3 within 1e-4), and ZeRO-3 trains through held-out
evaluation, the EMA and saving (which deadlocked when they ran on rank 0 alone), and resumes exactly
after a killed worker. Every ZeRO-3 parameter is partitioned (persistence threshold 0). These run
under Ray Train (`slow`); the default run has the lean twin: ZeRO-3 against DDP through the same
`train_worker`, its two ranks launched as plain processes (Ray Train's start costs ~10 s per job)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_helpers import make_dataset, make_model_folder
from unimedvl.config import Params
from unimedvl.train.stages import run_stage


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero")
    data = make_dataset(root / "qc", per_task=6)
    make_model_folder(data, root / "models" / "autoencoder")
    return root, data


def _rank_main(rank: int, world: int, init_file: str, config: dict) -> None:
    """One rank of the lean twin's launcher: the process group Ray Train's TorchConfig would set up
    (gloo on loopback), then the very `train_worker` Ray Train runs."""
    import os

    import torch.distributed as dist

    from unimedvl.train import ray_job

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
                       "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ray_job._context = lambda: (dist.get_rank(), dist.get_world_size(), False)  # what Ray Train's context says
    ray_job.train_worker(config)
    dist.destroy_process_group()


def _process_launcher(config: dict, *, workers: int, **_ray_options) -> dict:
    """`run_training` without Ray: `workers` spawned processes, each `_rank_main`; the result file the
    Ray path returns. The slow tests keep Ray Train; this twin drops its ~10 s start per job."""
    import multiprocessing as mp
    import time

    from unimedvl.train.ray_job import RESULT

    ckpt = Path(config["checkpoint_dir"])
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / RESULT).unlink(missing_ok=True)
    init_file = str(ckpt / f"pg-{time.time_ns()}")  # a fresh rendezvous file: no port to collide on
    # A fork server that has imported the training stack once: each rank starts in a fraction of a second
    # (and, unlike a plain fork, from a process that never ran a torch thread pool or a test).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "deepspeed", "unimedvl.train.ray_job", "unimedvl.train.loop",
                                "unimedvl.train.heldout", "unimedvl.model.unimedvl", "unimedvl.tracking"])
    procs = [ctx.Process(target=_rank_main, args=(r, workers, init_file, config)) for r in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0] * workers, f"ranks exited with {codes}"
    return json.loads((ckpt / RESULT).read_text())


def _run(folders, name, strategy, zero=2, steps=5, **hooks):
    root, data = folders
    params = Params(train={"backend": "ray", "workers": 2, "strategy": strategy, "precision": "fp32",
                           "deepspeed": {"zero_stage": zero, "param_persistence_threshold": 0},
                           "checkpoint_every": 2, "heldout_samples": 2, "grid_steps": 2, "max_failures": 1},
                    stage1={"steps": steps, "max_tokens": 400}, tracking={"enabled": False})
    out = run_stage("stage1", data, root / "models" / name, params, prev_dir=root / "models" / "autoencoder",
                    checkpoint_dir=root / f"ck-{name}", progress=False, test_hooks=hooks or None)
    rows = [json.loads(x) for x in (root / f"ck-{name}" / "losses.jsonl").read_text().splitlines()]
    out["lr_by_step"] = {r["step"]: r["lr"] for r in rows}
    return out, {r["step"]: r["loss"] for r in rows}


def _rel(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in a)


def _check_zero3_matches_ddp(folders, ddp_name, z3_name, steps):
    ddp_out, ddp = _run(folders, ddp_name, "ddp", steps=steps)
    z3_out, z3 = _run(folders, z3_name, "deepspeed", zero=3, steps=steps)
    print(f"ZeRO-3 vs DDP: max relative per-step loss difference {_rel(ddp, z3):.2e}")
    assert len(ddp) == steps and _rel(ddp, z3) < 1e-4, (ddp, z3)
    assert z3_out["world_size"] == ddp_out["world_size"] == 2
    assert (folders[0] / "models" / z3_name / "ema.safetensors").exists()
    # The lr logged under DeepSpeed is the one applied at that step, as under DDP (not one step ahead).
    assert z3_out["lr_by_step"] == pytest.approx(ddp_out["lr_by_step"], rel=1e-12)
    assert abs(z3_out["heldout_end"]["loss"] - ddp_out["heldout_end"]["loss"]) < 1e-3


@pytest.mark.slow
def test_zero3_matches_ddp_and_saves(ray_local, folders):
    _check_zero3_matches_ddp(folders, "ddp", "z3", steps=5)


def test_zero3_matches_ddp_and_saves_lean(folders, monkeypatch):
    """Lean twin of the test above: the same stage, DeepSpeed ZeRO-3 against DDP on two gloo ranks
    through the same `train_worker` (held-out evaluation, the EMA, a checkpoint and the save under
    ZeRO-3 included), launched as two plain processes instead of a Ray Train job, 3 steps."""
    from unimedvl.train import ray_job

    monkeypatch.setattr(ray_job, "run_training", _process_launcher)
    _check_zero3_matches_ddp(folders, "ddp-lean", "z3-lean", steps=3)


@pytest.mark.slow
def test_zero2_matches_ddp_within_1e_5(ray_local, folders):
    _, ddp = _run(folders, "ddp2", "ddp")
    _, z2 = _run(folders, "z2", "deepspeed", zero=2)
    print(f"ZeRO-2 vs DDP: max relative per-step loss difference {_rel(ddp, z2):.2e}")
    assert _rel(ddp, z2) < 1e-5, (ddp, z2)


@pytest.mark.slow
def test_zero3_resumes_exactly_after_a_killed_worker(ray_local, folders):
    _, ref = _run(folders, "z3ref", "deepspeed", zero=3)
    out, got = _run(folders, "z3kill", "deepspeed", zero=3, fail_at_step=3)
    assert (folders[0] / "ck-z3kill" / "failed-once").exists() and out["start_step"] == 2
    assert _rel(ref, got) < 1e-6, (ref, got)

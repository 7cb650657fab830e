"""Ray Train: resume after a killed worker, DeepSpeed ZeRO-2 on two CPU workers, and hard routing under
DDP with one rank on text only and the other on text-to-image. One local Ray for the whole module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_helpers import make_dataset, make_model_folder
from unimedvl.config import Params
from unimedvl.train.stages import run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    data = make_dataset(root / "qc", per_task=8)
    make_model_folder(data, root / "models" / "autoencoder")
    return root, data


def _params(**train):
    return Params(train={"backend": "ray", "checkpoint_every": 3, "heldout_samples": 4, "grid_steps": 2, **train},
                  stage1={"steps": 8, "max_tokens": 400}, tracking={"enabled": False})


def _losses(ckpt: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (ckpt / "losses.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_resume_after_killed_worker_reproduces_losses(ray_local, folders):
    root, data = folders
    models = root / "models"
    # Reference: the same worker loop, uninterrupted, in this process (one worker, fp32).
    ref = run_stage("stage1", data, models / "stage1", _params(backend="local"), checkpoint_dir=root / "ck-ref", progress=False)
    # Ray: the worker process dies at step 5 (os._exit); FailureConfig restarts it from step 3.
    got = run_stage("stage1", data, models / "stage1", _params(max_failures=1), checkpoint_dir=root / "ck-ray",
                    progress=False, test_hooks={"fail_at_step": 5})
    assert (root / "ck-ray" / "failed-once").exists()
    assert got["start_step"] == 3 and got["steps"] == 8
    a, b = _losses(root / "ck-ref"), _losses(root / "ck-ray")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-6, (a, b)
    assert abs(ref["heldout_end"]["loss"] - got["heldout_end"]["loss"]) < 1e-5


def test_deepspeed_zero2_two_cpu_workers(ray_local, folders):
    """ZeRO-2 partitions the optimizer state and gradients, not the maths: its run is the 2-worker DDP
    run of the same params, step for step, and it trains (the weights move, the frozen ones do not)."""
    import torch

    from unimedvl.model.checkpoint import load_model

    root, data = folders
    init = root / "models" / "autoencoder"

    def run(name, strategy):
        params = Params(train={"backend": "ray", "workers": 2, "strategy": strategy, "deepspeed": {"zero_stage": 2},
                               "checkpoint_every": 2, "heldout_samples": 4, "grid_steps": 2},
                        stage1={"steps": 4, "max_tokens": 400}, tracking={"enabled": False})
        return run_stage("stage1", data, root / "models" / name, params, prev_dir=init, checkpoint_dir=root / f"ck-{name}",
                         progress=False)

    out = run("ds", "deepspeed")
    assert out["world_size"] == 2 and out["strategy"] == "deepspeed" and out["steps"] == 4
    assert (root / "ck-ds" / "deepspeed" / "step-0000004").is_dir()
    ddp = run("ddp", "ddp")
    a, b = _losses(root / "ck-ds"), _losses(root / "ck-ddp")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert abs(a[1] - b[1]) < 1e-6  # same weights, same batches: the first loss is the same number
    assert all(abs(a[s] - b[s]) < 1e-3 * abs(b[s]) for s in a), (a, b)
    assert abs(out["heldout_end"]["loss"] - ddp["heldout_end"]["loss"]) < 1e-3 * abs(ddp["heldout_end"]["loss"])
    before, _ = load_model(init, "ema")  # the init folder holds one set of weights
    after, _ = load_model(root / "models" / "ds", "model")
    old = dict(before.named_parameters())
    moved = {n for n, p in after.named_parameters() if not torch.equal(p, old[n])}
    assert any(n.startswith("language_model.") for n in moved)
    assert not any(n.startswith("autoencoder.") for n in moved)  # frozen in stage 1


def _routing_worker(config):
    """Rank 0 trains on text only (no latent tokens), rank 1 on text-to-image only: DDP must neither
    hang nor complain, and its averaged gradient must equal the mean of the two ranks' own gradients."""
    import ray.train
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from unimedvl.model.checkpoint import load_model
    from unimedvl.model.tokenizer import load_tokenizer
    from unimedvl.train.curriculum import TINY, apply_freezing
    from unimedvl.train.data import MixtureLoader, ShardStore
    from unimedvl.train.loop import TrainModule, step_generator

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    tok = load_tokenizer(config["folder"])
    spec = TINY["stage1"].override(max_tokens=300, text_cond_dropout=0.0, vit_cond_dropout=0.0, vae_cond_dropout=0.0)
    store = ShardStore(config["data"])
    mixes = [{"text_only": 1}, {"t2i": 1}]
    batches = [MixtureLoader(store, tok, spec, load_model(config["folder"])[0].cfg, rank=r, world_size=2, mixture=mixes[r]).batch(0).packed
               for r in (0, 1)]
    gens = [step_generator(0, 1, 0, r) for r in (0, 1)]

    def fresh():
        m, _ = load_model(config["folder"])
        # llm2vae starts at zero, which zeroes every gradient upstream of it; give it weights so the
        # generation expert's gradient is non-trivial.
        with torch.no_grad():
            m.llm2vae.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
        apply_freezing(m, spec.frozen)
        return TrainModule(m)

    ddp = DDP(fresh())
    out = ddp(batches[rank], generator=gens[rank])
    out["loss"].backward()
    got = {n: p.grad.clone() for n, p in ddp.module.named_parameters() if p.requires_grad}
    # Reference: each rank's gradient computed alone, averaged by hand.
    ref = {}
    for r in (0, 1):
        m = fresh()
        m(batches[r], generator=step_generator(0, 1, 0, r))["loss"].backward()
        for n, p in m.named_parameters():
            if p.requires_grad:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                ref[n] = ref.get(n, 0) + g / 2
    diff = max(float((got[n] - ref[n]).abs().max()) for n in got)
    gen_nonzero = float(got["model.language_model.model.layers.0.mlp_moe_gen.down_proj.weight"].abs().sum())
    head_nonzero = float(got["model.language_model.lm_head.weight"].abs().sum())
    dist.barrier()
    if rank == 0:
        Path(config["out"]).write_text(json.dumps({"diff": diff, "gen": gen_nonzero, "head": head_nonzero,
                                                   "n_mse": [int(b.latent_index is not None) for b in batches]}))


def test_hard_routing_two_workers_ddp(ray_local, folders, tmp_path):
    import sys

    import ray.cloudpickle
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    # Workers cannot import this test module: ship the worker function by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root, data = folders
    out = tmp_path / "routing.json"
    TorchTrainer(_routing_worker, train_loop_config={"folder": str(root / "models" / "autoencoder"), "data": str(data),
                                                     "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1})).fit()
    r = json.loads(out.read_text())
    assert r["n_mse"] == [0, 1]  # rank 0's batch has no latent tokens, rank 1's has
    assert r["gen"] > 0 and r["head"] > 0  # both experts got (averaged) gradient
    assert r["diff"] < 1e-6

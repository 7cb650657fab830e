"""Distributed training of one stage: Ray Train's TorchTrainer around `train_worker`, the per-worker loop.

Locally a Ray instance is started on demand with CPU workers talking gloo; `--ray-address` joins an
existing cluster (KubeRay), where GPU workers talk NCCL. `strategy: ddp` wraps the model in
DistributedDataParallel; `strategy: deepspeed` hands it to DeepSpeed ZeRO (stage 1/2/3, optional
optimizer offload). `backend: local` runs the very same `train_worker` in this process (one worker).

Checkpoints (every `checkpoint_every` steps: model, optimizer, scheduler, EMA, data position, RNG,
the loss log) go to `<checkpoint_dir>/<stage>-<params hash>/`, outside the DVC outputs, so a worker
restarted by FailureConfig and an interrupted `dvc repro` both resume from the last one instead of
starting over. Batches are a function of the step (see data.py), so the resumed run's per-step losses
are the uninterrupted run's.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoints import DONE_MARK, STATE_FILE, latest_checkpoint, prepare, prune

LOSSES = "losses.jsonl"
RESULT = "result.json"
PROGRESS = "progress.json"
METRIC_KEYS = ("loss", "ce", "mse", "lr", "grad_norm", "tokens_per_s", "samples_per_s")


# ----------------------------------------------------------------------------------------------------
# Checkpoint folder helpers (rank 0 writes; everybody reads).


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_losses(ckpt_dir: Path, before: int | None = None) -> list[dict[str, float]]:
    path = Path(ckpt_dir) / LOSSES
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows}  # a resumed run re-logs steps; the last write wins
    return [by_step[s] for s in sorted(by_step) if before is None or s < before]


# ----------------------------------------------------------------------------------------------------
# The per-worker loop.


def _context() -> tuple[int, int, bool]:
    try:
        import ray.train

        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size(), True
    except Exception:  # noqa: BLE001 - not inside a Ray Train worker
        return 0, 1, False


def train_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Train one stage on this worker. `config` is plain data (it crosses to Ray workers)."""
    from ..model.checkpoint import load_model, save_model
    from ..model.tokenizer import load_tokenizer
    from .curriculum import StageSpec, apply_freezing
    from .data import STAGE_IDS, MixtureLoader, ShardStore, prefetch_depth
    from .heldout import load_heldout, measure, paired_delta, summarise
    from .loop import (
        EMA,
        TrainModule,
        make_optimizer,
        make_scheduler,
        set_rng_state,
        step_generator,
        train_step,
    )
    from ..tracking import Tracker

    rank, world, in_ray = _context()
    torch.set_num_threads(int(config.get("threads", 1)))
    torch.manual_seed(int(config["seed"]))
    spec_d = dict(config["spec"])
    spec_d["frozen"] = tuple(spec_d["frozen"])
    spec = StageSpec(**spec_d)
    total = int(config["total_steps"])
    ckpt_dir = Path(config["checkpoint_dir"])
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    strategy = config.get("strategy", "ddp")
    use_gpu = bool(config.get("use_gpu"))
    if use_gpu and not torch.cuda.is_available():
        raise RuntimeError(no_cuda_message())
    if use_gpu and in_ray:
        import ray.train.torch as rtt

        device = rtt.get_device()
    else:
        device = torch.device("cuda" if use_gpu else "cpu")
    if config.get("torch_extensions_dir"):
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", config["torch_extensions_dir"])

    tokenizer = load_tokenizer(config["init_dir"])
    model, _ = load_model(config["init_dir"], weights=config.get("init_weights", "ema"))
    apply_freezing(model, spec.frozen)
    model.to(device).train()
    zero3 = strategy == "deepspeed" and int(config["deepspeed"]["zero_stage"]) == 3
    model.uniform_calls = zero3
    module = TrainModule(model, touch=not zero3)
    found = latest_checkpoint(ckpt_dir)

    # The held-out set, and its first measurement while the weights are still whole (before ZeRO-3
    # partitions them); a resumed run reads that measurement from its checkpoint.
    held = None
    mixture = config["mixture_by_rank"][0] if config.get("mixture_by_rank") else spec.mixture
    eval_tokens = 2 * spec.max_tokens

    def heldout_summary(per, weights: str) -> dict:
        return summarise(per, held, mixture, model.cfg.ce_weight, model.cfg.mse_weight, weights)

    heldout_start = None  # (summary, per-sample sums): the paired bootstrap needs the samples
    if rank == 0:
        held = load_heldout(config["data_dir"], config["heldout_dir"], tokenizer, spec, model.cfg)
        if found is None:
            per = measure(model, held, device, eval_tokens)
            heldout_start = (heldout_summary(per, f"init: {config.get('init_weights', 'ema')} weights of "
                                                  f"{Path(config['init_dir']).name}"), per)

    optimizer = make_optimizer(model, spec)
    scheduler = make_scheduler(optimizer, spec, total)
    ema = EMA(model, spec.ema_decay, spec.ema_schedule)
    engine = None
    wrapped: torch.nn.Module = module
    if strategy == "deepspeed":
        engine = _deepspeed_engine(module, model, spec, config, optimizer, total)
        optimizer = scheduler = None
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
                      broadcast_buffers=False)

    # -- resume ------------------------------------------------------------------------------------
    start, samples_seen, tokens_seen = 0, 0, 0
    if found is not None:
        start, path = found
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        if engine is not None:
            engine.load_checkpoint(str(ckpt_dir / "deepspeed"), tag=path.name, load_module_strict=True)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        samples_seen, tokens_seen = state["data"]["samples_seen"], state["data"]["tokens_seen"]
        heldout_start = state.get("heldout_start")
        if rank == 0:
            print(f"[{spec.name}] resuming from {path} at step {start}", flush=True)

    # -- data --------------------------------------------------------------------------------------
    store = ShardStore(config["data_dir"], "train", languages=tuple(config["languages"]) if config.get("languages") else None)
    by_rank = config.get("mixture_by_rank")
    loader = MixtureLoader(store, tokenizer, spec, model.cfg, seed=int(config["seed"]), rank=rank, world_size=world,
                           mixture=by_rank[rank] if by_rank else None)
    tracker, run_id = None, config.get("run_id")
    if rank == 0:
        tracker = Tracker(config["tracking_uri"], config.get("experiment", "unimedvl"), enabled=bool(run_id))
        tracker.log_metrics(run_id, [(0, _flat_heldout("heldout", heldout_start[0]))])
        losses_path = ckpt_dir / LOSSES
        kept = read_losses(ckpt_dir, before=start + 1)
        # A resumed run is a new MLflow run (the killed one is marked KILLED and linked): give it the
        # steps before the checkpoint too, so its curve is the whole stage.
        tracker.log_metrics(run_id, [(r["step"], {k: r[k] for k in METRIC_KEYS if k in r}) for r in kept])
        losses_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        losses_fh = open(losses_path, "a")  # noqa: SIM115 - closed after the loop

    stage_id = STAGE_IDS.get(spec.name, 8)
    fail_at = config.get("fail_at_step")
    fail_mark = ckpt_dir / "failed-once"
    log_every = int(config.get("log_every", 1))
    pending: list = []
    t_last = time.perf_counter()
    step = start
    for batch in loader.stream(start, total, prefetch=int(config.get("prefetch", prefetch_depth(device, world)))):
        step = batch.step
        if fail_at is not None and step == int(fail_at) and rank == int(config.get("fail_rank", 0)) and not fail_mark.exists():
            fail_mark.write_text("simulated worker failure\n")
            print(f"[{spec.name}] simulating a worker failure at step {step}", flush=True)
            os._exit(1)
        res = train_step(wrapped, batch.packed, optimizer, scheduler, generator=step_generator(int(config["seed"]), stage_id, step, rank),
                         grad_clip=spec.grad_clip, precision=config.get("precision", "auto"), device=device,
                         engine=engine, ema=None if zero3 else ema, ema_model=model)
        if zero3:  # every rank gathers the partitions and keeps the same full EMA
            with _gathered(model, trainable_only=True):
                ema.update(model)
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        samples_seen += batch.samples * world
        tokens_seen += batch.tokens * world
        if rank == 0:
            row = {"step": step + 1, "loss": res.loss, "ce": res.ce, "mse": res.mse, "lr": res.lr, "grad_norm": res.grad_norm,
                   "tokens_per_s": batch.tokens * world / dt, "samples_per_s": batch.samples * world / dt,
                   "step_time_s": dt, "tokens": batch.tokens, "samples": batch.samples}
            losses_fh.write(json.dumps(row) + "\n")
            losses_fh.flush()
            pending.append((step + 1, {k: row[k] for k in METRIC_KEYS}))
            if len(pending) >= log_every:
                tracker.log_metrics(run_id, pending)
                pending = []
            if config.get("progress_file"):
                _write_json(Path(config["progress_file"]), {"step": step + 1, "total": total, "loss": res.loss,
                                                            "tokens_per_s": row["tokens_per_s"]})
        done = step + 1
        if done % int(config["checkpoint_every"]) == 0 or done == total:
            _save_checkpoint(ckpt_dir, done, model, optimizer, scheduler, ema, engine, rank, world,
                             {"samples_seen": samples_seen, "tokens_seen": tokens_seen, "step": done}, heldout_start,
                             int(config.get("keep_checkpoints", 2)))
    if rank == 0:
        tracker.log_metrics(run_id, pending)
        losses_fh.close()
    end_step = max(start, step + 1) if total > start else start

    # -- the final model: raw weights + EMA copy, in the released layout -----------------------------
    whole = _whole_model(model, zero3, rank)  # collective under ZeRO-3; a plain copy on rank 0
    if rank == 0:
        raw_per = measure(whole, held, device, eval_tokens)
        ema_model = ema.copy_to(copy.deepcopy(whole))
        ema_per = measure(ema_model, held, device, eval_tokens)
        end_raw, end_ema = heldout_summary(raw_per, "raw"), heldout_summary(ema_per, "ema")
        start_per = heldout_start[1]
        delta = {"ce_ema": paired_delta(start_per, ema_per, held, mixture, "ce"),
                 "mse_ema": paired_delta(start_per, ema_per, held, mixture, "mse"),
                 "ce_raw": paired_delta(start_per, raw_per, held, mixture, "ce")}
        tracker.log_metrics(run_id, [(end_step, {**_flat_heldout("heldout", end_ema), **_flat_heldout("heldout_raw", end_raw)})])
        save_model(whole, config["out_dir"], lineage=config.get("lineage"), ema=ema_model, tokenizer=tokenizer)
        result = {"stage": spec.name, "steps": end_step, "start_step": start, "samples_seen": samples_seen,
                  "tokens_seen": tokens_seen, "heldout_start": heldout_start[0], "heldout_end": end_ema,
                  "heldout_end_raw": end_raw, "heldout_delta": delta, "heldout_set": held.info,
                  "next_stage_starts_from": "ema", "ema_decay_final": ema.current_decay(),
                  "ema_updates": ema.updates, "world_size": world, "strategy": strategy}
        _write_json(ckpt_dir / RESULT, result)
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return result if rank == 0 else None


def _gathered(model, trainable_only: bool = False):
    """ZeRO-3: the full parameters on every rank for the duration of the block (a collective)."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad or not trainable_only]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _whole_model(model, zero3: bool, rank: int):
    """The model with whole weights: itself, or under ZeRO-3 a plain copy built on rank 0 from the
    gathered partitions (every rank takes part in the gather), so evaluation and saving need no
    collectives and never deadlock."""
    if not zero3:
        return model
    from ..model.checkpoint import build_meta

    with _gathered(model):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()} if rank == 0 else None
    if rank != 0:
        return None
    plain = build_meta(model.cfg, model.special)
    plain.load_state_dict(state, assign=True)
    for (_, a), (_, b) in zip(plain.named_parameters(), model.named_parameters(), strict=True):
        a.requires_grad_(b.requires_grad)
    return plain.train(model.training)


def _flat_heldout(prefix: str, summary: dict) -> dict[str, float]:
    """MLflow metrics of a held-out summary: mixture-weighted loss/ce/mse and per-family ce/mse."""
    out = {f"{prefix}_{k}": summary[k] for k in ("loss", "ce", "mse") if summary.get(k) is not None}
    for fam, v in summary["families"].items():
        for k in ("ce", "mse"):
            if v[k] is not None:
                out[f"{prefix}_{k}.{fam}"] = v[k]
    return out


def _save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, scheduler, ema, engine, rank: int, world: int,
                     data_pos: dict, heldout_start, keep: int = 2) -> None:
    import torch.distributed as dist

    from .loop import rng_state

    tag = f"step-{step:07d}"
    # Every rank's RNG state, gathered on rank 0 (each worker draws its own noise).
    states = [rng_state()]
    if world > 1 and dist.is_initialized():
        states = [None] * world
        dist.all_gather_object(states, rng_state())
    if engine is not None:
        engine.save_checkpoint(str(ckpt_dir / "deepspeed"), tag=tag)
    if rank == 0:
        tmp = ckpt_dir / f".tmp-{tag}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = {"step": step, "ema": ema.state_dict(), "rng": states, "data": data_pos, "heldout_start": heldout_start}
        if engine is None:
            state.update(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
        torch.save(state, tmp / STATE_FILE)
        (tmp / DONE_MARK).write_text(f"{step}\n")
        final = ckpt_dir / tag
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(ckpt_dir, keep)
    if world > 1 and dist.is_initialized():
        dist.barrier()


def deepspeed_config(spec, config: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed JSON config the params imply (micro batch 1 = one packed sequence per worker)."""
    zero = {"stage": int(config["deepspeed"]["zero_stage"])}
    if zero["stage"] == 3:
        # Parameters below this many elements stay whole on every rank (DeepSpeed's default: 1e5).
        zero["stage3_param_persistence_threshold"] = int(config["deepspeed"].get("param_persistence_threshold", 100_000))
    if config["deepspeed"].get("offload_optimizer"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    bf16 = config.get("precision") == "bf16" or (config.get("precision") == "auto" and torch.cuda.is_available()
                                                   and bool(config.get("use_gpu")))
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _deepspeed_engine(module, model, spec, config, optimizer, total):
    import deepspeed

    from .loop import BETAS, EPS, make_scheduler

    ds_cfg = deepspeed_config(spec, config)
    params = [p for p in module.parameters() if p.requires_grad]
    if config["deepspeed"].get("offload_optimizer"):
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's own (JIT-built) CPU Adam.
        ds_cfg["optimizer"] = {"type": "AdamW", "params": {"lr": spec.lr, "betas": list(BETAS), "eps": EPS,
                                                           "weight_decay": spec.weight_decay}}
        engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=params, config=ds_cfg,
                                               lr_scheduler=lambda opt: make_scheduler(opt, spec, total))
    else:
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_cfg,
                                               lr_scheduler=make_scheduler(optimizer, spec, total))
    return engine


# ----------------------------------------------------------------------------------------------------
# The driver.


def no_cuda_message() -> str:
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"train.use_gpu is true but torch {torch.__version__} ({build}) sees no CUDA device here; "
            "set train.use_gpu: false to train on CPU, or run where a GPU and a CUDA build of torch are present")


def run_training(config: dict[str, Any], *, backend: str = "ray", workers: int = 1, cpus_per_worker: int = 1,
                 use_gpu: bool = False, resources_per_worker: dict[str, float] | None = None, max_failures: int = 1,
                 ray_address: str | None = None, storage_path: str | Path = "build/ray_results",
                 verbose: bool = False) -> dict[str, Any]:
    """Run `train_worker` on `workers` Ray workers (or in this process for backend=local) and return
    rank 0's result."""
    config = dict(config, threads=cpus_per_worker, use_gpu=use_gpu)
    ckpt_dir = Path(config["checkpoint_dir"])
    if use_gpu and not ray_address and not torch.cuda.is_available():
        # A local run never falls back to the CPU silently (on a cluster the workers decide).
        raise RuntimeError(no_cuda_message())
    prepare(ckpt_dir, config.get("code_hash"))
    (ckpt_dir / RESULT).unlink(missing_ok=True)
    if backend == "local" and not ray_address:
        if workers != 1:
            raise ValueError("backend=local runs one worker; use backend=ray for more")
        out = train_worker(config)
        return out or json.loads((ckpt_dir / RESULT).read_text())

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    env = {"TORCH_EXTENSIONS_DIR": config.get("torch_extensions_dir", ""), "OMP_NUM_THREADS": str(cpus_per_worker),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    env = {k: v for k, v in env.items() if v}
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, runtime_env={"env_vars": env}, log_to_driver=verbose)
        else:
            ray.init(num_cpus=max(2, workers * cpus_per_worker), include_dashboard=False,
                     runtime_env={"env_vars": env}, log_to_driver=verbose, configure_logging=False)
    resources = {"CPU": cpus_per_worker, **(resources_per_worker or {})}
    if use_gpu:
        resources.setdefault("GPU", 1)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=f"{config['spec']['name']}-{ckpt_dir.name}", storage_path=str(Path(storage_path).resolve()),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    trainer.fit()
    return json.loads((ckpt_dir / RESULT).read_text())

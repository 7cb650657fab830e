"""One training step and the state around it: AdamW, the learning-rate schedule, EMA, and the
checkpointable train state. The same functions run under Ray Train, DeepSpeed, or a bare loop.

Hard routing and data parallelism. A batch with no latent tokens never runs the generation expert
(and a text-free t2i batch never runs the language-model head), so on that rank those parameters get
no gradient. DDP would then wait forever for their buckets (or demand find_unused_parameters) and
ZeRO would reduce mismatched partitions. `TrainModule` adds `0 * sum(p)` over every trainable
parameter to the loss: each one gets an exact zero gradient on every rank, so every rank reduces the
same tensors and the averaged gradient is the true mean over ranks (a zero from a rank that had no
such tokens, as the full-batch gradient would have it). The cost is one pass over the parameters.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..model.unimedvl import PackedBatch, UniMedVL
from .curriculum import StageSpec
from .data import step_seed

BETAS = (0.9, 0.95)
EPS = 1e-15


class TrainModule(nn.Module):
    """The model plus the touch-every-parameter term; what DDP / DeepSpeed wrap."""

    def __init__(self, model: UniMedVL, touch: bool = True):
        super().__init__()
        self.model = model
        # Under ZeRO-3 the model runs every module instead (`uniform_calls`): outside their module's
        # forward, partitioned parameters are empty placeholders, so touching them would do nothing.
        self.touch = touch

    def forward(self, batch: PackedBatch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out = self.model(batch, generator=generator)
        if self.touch:
            touch = sum((p.sum() for p in self.model.parameters() if p.requires_grad), torch.zeros(()))
            out["loss"] = out["loss"] + 0.0 * touch.float()
        return out


def make_optimizer(model: nn.Module, spec: StageSpec) -> torch.optim.Optimizer:
    """AdamW b=(0.9, 0.95), eps=1e-15 (paper); no weight decay on norms, biases and embeddings tables."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in n or "embed" in n else decay).append(p)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=BETAS, eps=EPS, foreach=False)


def lr_factor(step: int, spec: StageSpec, total: int | None = None) -> float:
    """Linear warm-up to 1, then constant or cosine down to min_lr_ratio at the last step."""
    total = total or spec.steps
    if spec.warmup_steps and step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return 1.0
    span = max(1, total - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, spec: StageSpec, total: int | None = None):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, spec, total))


class EMA:
    """Exponential moving average of the trainable parameters (frozen ones are copied as they are).

    `schedule` (a stage param, `ema_schedule`): "ramp" uses min(decay, (1 + n) / (10 + n)) after n
    updates, so short runs are not dominated by the initial weights (it reaches 0.995 only after ~1,800
    updates: 0.92 after the demo's 100); "constant" uses `decay` from the first update."""

    def __init__(self, model: nn.Module, decay: float, schedule: str = "ramp"):
        if schedule not in ("ramp", "constant"):
            raise ValueError(f"ema_schedule must be ramp or constant, not {schedule!r}")
        self.decay = decay
        self.schedule = schedule
        self.updates = 0
        self.shadow = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}

    def current_decay(self, updates: int | None = None) -> float:
        n = self.updates if updates is None else updates
        return self.decay if self.schedule == "constant" else min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].mul_(d).add_(p.detach().float(), alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n].to(p.dtype))
        return model

    def state_dict(self) -> dict:
        return {"decay": self.decay, "schedule": self.schedule, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.schedule = state.get("schedule", "ramp")
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast on GPU (auto or bf16); fp32 on CPU unless bf16 is asked for explicitly."""
    dev = torch.device(device)
    use = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def step_generator(seed: int, stage_id: int, step: int, rank: int) -> torch.Generator:
    """Timesteps and noise of a step come from this generator, so a resumed step draws the same."""
    return torch.Generator().manual_seed(step_seed(seed, stage_id, step, rank, 2))


@dataclass
class StepResult:
    loss: float
    ce: float
    mse: float
    grad_norm: float
    lr: float
    n_ce: int
    n_mse: int


def _global_token_means(out: dict, module: nn.Module) -> dict:
    """With several ranks, CE and MSE become means over every supervised token of every rank (as BAGEL
    normalises them): each rank's mean is rescaled by n_rank * world / n_total, so the gradient the ranks
    average is the gradient of the global token mean, not the mean of per-rank means. The logged values
    are the global means too."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return out
    world = dist.get_world_size()
    ce, mse = out["ce"], out["mse"]
    n_ce, n_mse = float(out["n_ce"]), float(out["n_mse"])
    stats = torch.tensor([n_ce, n_mse, float(ce.detach()) * n_ce, float(mse.detach()) * n_mse], dtype=torch.float64,
                         device=ce.device)
    dist.all_reduce(stats)
    inner = module
    while not hasattr(inner, "model") and hasattr(inner, "module"):  # DDP / DeepSpeed wrappers
        inner = inner.module
    cfg = inner.model.cfg if hasattr(inner, "model") else inner.cfg
    ce_s = ce * (n_ce * world / stats[0].item()) if stats[0] > 0 else ce * 0.0
    mse_s = mse * (n_mse * world / stats[1].item()) if stats[1] > 0 else mse * 0.0
    loss = out["loss"] + cfg.ce_weight * (ce_s - ce) + cfg.mse_weight * (mse_s - mse)
    g_ce = stats[2].item() / stats[0].item() if stats[0] > 0 else 0.0
    g_mse = stats[3].item() / stats[1].item() if stats[1] > 0 else 0.0
    return {**out, "loss": loss, "ce_global": g_ce, "mse_global": g_mse,
            "loss_global": cfg.ce_weight * g_ce + cfg.mse_weight * g_mse}


def train_step(
    module: nn.Module,
    batch: PackedBatch,
    optimizer: torch.optim.Optimizer | None,
    scheduler,
    *,
    generator: torch.Generator,
    grad_clip: float = 1.0,
    precision: str = "auto",
    device: torch.device | str = "cpu",
    engine=None,
    ema: EMA | None = None,
    ema_model: nn.Module | None = None,
) -> StepResult:
    """Forward, backward, clip, optimizer and schedule step, EMA update. `module` is a TrainModule,
    possibly wrapped by DDP; with DeepSpeed pass `engine` (it clips and steps itself)."""
    batch = batch.to(device)
    with autocast(device, precision):
        out = (engine or module)(batch, generator=generator)
    out = _global_token_means(out, module if engine is None else engine.module)
    if engine is not None:
        lr = float(engine.get_lr()[0])  # the rate this step applies: engine.step() advances the schedule
        engine.backward(out["loss"])
        engine.step()
        gn = engine.get_global_grad_norm()
        grad_norm = float(gn) if gn is not None else float("nan")
    else:
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        lr = float(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if ema is not None:
        ema.update(ema_model)
    if "ce_global" in out:
        return StepResult(out["loss_global"], out["ce_global"], out["mse_global"], grad_norm, lr, int(out["n_ce"]),
                          int(out["n_mse"]))
    return StepResult(float(out["loss"].detach()), float(out["ce"].detach()), float(out["mse"].detach()), grad_norm, lr,
                      int(out["n_ce"]), int(out["n_mse"]))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])

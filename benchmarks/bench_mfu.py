"""Model FLOPs utilisation of one training step of the `base` preset on a GPU: backbone training
FLOPs per token (`model.config.flops_per_token`, PaLM's formula on the active parameters) times the
tokens per second of a bf16 train step, over the device's dense bf16 peak. Measured in one run.

    python benchmarks/bench_mfu.py                      # base preset, 4096-token packed sequences
    python benchmarks/bench_mfu.py --preset small --tokens 2048 --steps 20

Needs CUDA: without a GPU it says so and exits 2 (there is no meaningful CPU figure). The last
printed line is `mfu: X` (achieved model FLOP/s over the peak).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets (SXM parts; no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
             "B200": 2250e12, "GH200": 989e12, "RTX 4090": 165e12, "V100": 125e12}


def device_peak(name: str) -> float | None:
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_BF16[key]
    return None


def synthetic_batch(cfg, tokens: int, seed: int = 0):
    """Packed samples of text + one 256 px t2i image each, up to `tokens` tokens."""
    import torch

    from unimedvl.model.unimedvl import LatentImage, Text, pack

    g = torch.Generator().manual_seed(seed)
    side = cfg.image_size
    per = (side // cfg.latent_downsample) ** 2 + 2
    samples, used = [], 0
    while used + per + 64 <= tokens:
        ids = torch.randint(8, cfg.llm.vocab_size, (64,), generator=g).tolist()
        img = torch.rand(3, side, side, generator=g) * 2 - 1
        samples.append([Text(ids[:32]), Text(ids[32:], supervised=True), LatentImage(image=img)])
        used += per + 64
    return pack(samples, cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="base")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip", type=int, default=3)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(f"bench_mfu needs a CUDA GPU; torch {torch.__version__} ({build}) sees none: no figure measured")
        sys.exit(2)
    from unimedvl.model.config import flops_per_token, get_preset
    from unimedvl.model.unimedvl import build_model
    from unimedvl.train.curriculum import TINY, apply_freezing
    from unimedvl.train.loop import TrainModule, make_optimizer, make_scheduler, step_generator, train_step

    cfg = get_preset(args.preset)
    dev = torch.device("cuda")
    model = build_model(cfg, dev)
    spec = TINY["stage1"]
    apply_freezing(model, spec.frozen)
    module = TrainModule(model).to(dev)
    opt = make_optimizer(model, spec)
    sched = make_scheduler(opt, spec, args.steps)
    batch = synthetic_batch(cfg, args.tokens).to(dev)
    times = []
    for s in range(args.steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        train_step(module, batch, opt, sched, generator=step_generator(0, 1, s, 0), precision="bf16", device=dev)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    step = sorted(times[args.skip:])[len(times[args.skip:]) // 2]
    tok_s = batch.length / step
    achieved = flops_per_token(cfg, batch.length) * tok_s
    name = torch.cuda.get_device_name()
    peak = device_peak(name)
    print(f"device {name}; preset {args.preset}; {batch.length} tokens per step; median step {step * 1e3:.1f} ms; "
          f"{tok_s:,.0f} tokens/s; {achieved / 1e12:.1f} model TFLOP/s")
    if peak is None:
        print(f"no bf16 peak known for {name!r}: add it to PEAK_BF16")
        sys.exit(2)
    print(f"mfu: {achieved / peak:.4f}")


if __name__ == "__main__":
    main()

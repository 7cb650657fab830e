"""Forward+backward throughput of the MoT backbone against a dense one-expert transformer of the same
active width and depth, measured in one run on the same packed sequences.

    python benchmarks/bench_model.py                      # tiny, CPU, float32
    python benchmarks/bench_model.py --preset base --dtype bf16 --device cuda   # also prints MFU

Both models are the same code: the dense baseline routes every token to the understanding expert, so
the ratio is exactly the cost of hard routing (the gathers and scatters around each expert). The last
line is `mot/dense ratio: X` (time per token of MoT over dense; the goal is X <= 1.2).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unimedvl.model.config import flops_per_token, get_preset
from unimedvl.model.mot import AttentionLayout, LanguageModel, Routing

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


def make_sequence(samples: int, text: int, image: int, hidden: int, device: str, dtype: torch.dtype):
    """Packed samples shaped like text-to-image training: text, a noised latent block, a caption."""
    splits, gen = [], []
    for _ in range(samples):
        splits.append([(text, "causal"), (image, "noise"), (text, "causal")])
        gen += [False] * text + [True] * image + [False] * text
    layout = AttentionLayout.from_splits(splits, device)
    is_gen = torch.tensor(gen, device=device)
    pos = []
    for _ in range(samples):
        pos += list(range(text)) + [text] * image + list(range(text + 1, 2 * text + 1))
    x = torch.randn(len(gen), hidden, device=device, dtype=dtype)
    return x, layout, is_gen, torch.tensor(pos, device=device)


def step_time(lm: LanguageModel, x, routing, pos, mask, device: str) -> float:
    x = x.detach().requires_grad_(True)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = lm.model(x, routing, pos, mask)
    out.float().pow(2).mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--text", type=int, default=64, help="text tokens before and after each image")
    ap.add_argument("--image", type=int, default=128, help="latent tokens per image")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak for MFU (default: by name)")
    args = ap.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible here (this path runs on a GPU machine only)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    dtype = DTYPES[args.dtype]
    with torch.device(args.device):
        lm = LanguageModel(cfg.llm)
    lm.init_weights()
    lm = lm.to(dtype)
    x, layout, is_gen, pos = make_sequence(args.samples, args.text, args.image, cfg.llm.hidden_size, args.device, dtype)
    # FlexAttention with a block mask on the GPU (as training runs); SDPA with the dense mask on CPU.
    mask = layout.block_mask() if args.device == "cuda" else layout.dense()
    mot, dense = Routing.from_gen_mask(is_gen), Routing.all_und(len(layout))
    n = len(layout)

    for routing in (mot, dense):  # warm-up (and compilation on the GPU)
        for _ in range(2):
            step_time(lm, x, routing, pos, mask, args.device)
            lm.zero_grad(set_to_none=True)
    times: dict[str, list[float]] = {"mot": [], "dense": []}
    for _ in range(args.steps):  # interleaved so that machine noise hits both alike
        for name, routing in (("mot", mot), ("dense", dense)):
            times[name].append(step_time(lm, x, routing, pos, mask, args.device))
            lm.zero_grad(set_to_none=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"preset {args.preset}, {args.device}, {args.dtype}, {n} tokens per step "
          f"({int(is_gen.sum())} generation, {n - int(is_gen.sum())} understanding), threads {args.threads}")
    for k in ("mot", "dense"):
        print(f"{k:>5}: {n / med[k]:,.0f} tokens/s (median of {args.steps} forward+backward steps)")
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        seq = args.text * 2 + args.image
        fpt = flops_per_token(cfg, seq_len=seq)
        if peak:
            for k in ("mot", "dense"):
                print(f"{k:>5} MFU: {n / med[k] * fpt / (peak * 1e12):.1%} of {peak:.0f} TFLOPS ({name})")
        else:
            print(f"unknown peak for {name}; pass --peak-tflops to print MFU")
    print(f"mot/dense ratio: {med['mot'] / med['dense']:.3f}")


if __name__ == "__main__":
    main()

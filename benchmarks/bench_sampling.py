"""Images per second of the batched reference sampler (`generate_images`: every prompt and guidance
branch in one forward per timestep over a packed KV cache) against the same prompts one call at a
time, on the same model and seeds, measured in one run.

    python benchmarks/bench_sampling.py                       # tiny preset, 8 prompts, 20 timesteps
    python benchmarks/bench_sampling.py --preset small --prompts 16

Also checks that both give the same latents (within 1e-4). The last line is
`batched/sequential images-per-second ratio: X`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from unimedvl.model.config import get_preset
    from unimedvl.model.unimedvl import DEFAULT_SPECIAL as SP
    from unimedvl.model.unimedvl import Text, build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(get_preset(args.preset)).eval()
    with torch.no_grad():
        model.llm2vae.weight.normal_(0, 0.02)
    g = torch.Generator().manual_seed(1)
    contexts = [[Text([SP.bos, 11, 12], template=True),
                 Text(torch.randint(8, model.cfg.llm.vocab_size, (24,), generator=g).tolist()),
                 Text([SP.eos, 13, SP.bos, 14], template=True)] for _ in range(args.prompts)]
    seeds = list(range(args.prompts))
    kw = {"num_steps": args.steps, "return_latent": True}
    model.generate_images(contexts[:1], seeds=seeds[:1], **kw)  # warm-up
    t = time.perf_counter()
    one_by_one = [model.generate_images([c], seeds=[s], **kw)[0] for c, s in zip(contexts, seeds, strict=True)]
    seq = time.perf_counter() - t
    t = time.perf_counter()
    batched = model.generate_images(contexts, seeds=seeds, **kw)
    bat = time.perf_counter() - t
    diff = max(float((a - b).abs().max()) for a, b in zip(one_by_one, batched, strict=True))
    print(f"preset {args.preset}; {args.prompts} prompts x {args.steps} timesteps (text + image CFG branches)")
    print(f"sequential {args.prompts / seq:.2f} images/s; batched {args.prompts / bat:.2f} images/s; "
          f"max latent difference {diff:.1e}")
    if diff > 1e-4:
        raise SystemExit("batched and sequential latents differ")
    print(f"batched/sequential images-per-second ratio: {seq / bat:.2f}")


if __name__ == "__main__":
    main()

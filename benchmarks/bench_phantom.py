"""Phantom generation speed on one core at 64 px (goal: >= 200 images/s per core).

One image is what the phantom source does per image: sample a patient's ground truth (anatomy and
findings), render it, encode it as PNG. The mix is the default one (60 % chest radiographs, 40 %
brain MRIs in a random contrast). The baseline, timed in the same run on the same core, is the
floor any image source pays: draw a 64 x 64 array of noise and encode it as PNG. Times are the CPU
time of this (single-threaded, pinned) process, so a figure is images per core-second even when
other jobs share the machine; wall-clock figures are printed beside them. Each figure is the best of
three repeats.

    python benchmarks/bench_phantom.py [--n 1500] [--size 64]

The last line is `phantom images/s per core: X`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: no BLAS thread pool (set before numpy is imported)

import argparse
import time
from types import SimpleNamespace

import numpy as np

from unimedvl.data.images import encode_png
from unimedvl.data.phantoms import CONTRASTS, render_from_labels
from unimedvl.data.phantoms.findings import sample_brain_labels, sample_chest_labels


def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        first = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {first})
        return f"pinned to core {first}"
    return "not pinned (no sched_setaffinity on this platform)"


clock = time.process_time


def phantoms(n: int, size: int, seed: int = 0) -> dict[str, float]:
    """CPU seconds spent sampling, rendering and encoding n phantoms (default family mix)."""
    cfg = SimpleNamespace(image_size=size, min_visible_px=3.0)
    t = {"sample": 0.0, "render": 0.0, "encode": 0.0, "chest": 0, "brain": 0}
    wall = time.perf_counter()
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        t0 = clock()
        if rng.random() < 0.6:
            labels = sample_chest_labels(rng, cfg, need_finding=i % 3 == 0)
            t["chest"] += 1
        else:
            labels = sample_brain_labels(rng, cfg, need_finding=i % 3 == 0, contrast=CONTRASTS[i % 4])
            t["brain"] += 1
        t1 = clock()
        img = render_from_labels(labels)
        t2 = clock()
        encode_png(img)
        t3 = clock()
        t["sample"] += t1 - t0
        t["render"] += t2 - t1
        t["encode"] += t3 - t2
    t["wall"] = time.perf_counter() - wall
    return t


def baseline(n: int, size: int, seed: int = 0) -> tuple[float, float]:
    """(CPU, wall) seconds to draw and PNG-encode n arrays of noise of the same size."""
    rng = np.random.default_rng(seed)
    t0, w0 = clock(), time.perf_counter()
    for _ in range(n):
        encode_png(rng.integers(0, 256, (size, size), dtype=np.uint8))
    return clock() - t0, time.perf_counter() - w0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1500, help="images per repeat")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"phantom benchmark: {args.n} images of {args.size} px per repeat, best of {args.repeats}; {pin_one_core()}")
    phantoms(50, args.size, seed=99)  # warm the caches (coordinate grids, interpolation matrices)
    runs = [phantoms(args.n, args.size, seed=r) for r in range(args.repeats)]
    best = min(runs, key=lambda t: t["sample"] + t["render"] + t["encode"])
    total = best["sample"] + best["render"] + best["encode"]
    base, base_wall = min(baseline(args.n, args.size, seed=r) for r in range(args.repeats))
    ms = 1000.0 / args.n
    print(f"per image (CPU): sample {best['sample'] * ms:.3f} ms, render {best['render'] * ms:.3f} ms, "
          f"encode {best['encode'] * ms:.3f} ms ({best['chest']} chest, {best['brain']} brain)")
    print(f"wall clock: phantoms {args.n / best['wall']:.1f} images/s, baseline {args.n / base_wall:.1f} images/s")
    print(f"baseline (noise + PNG encode only): {args.n / base:.1f} images/s per core")
    print(f"phantom/baseline time ratio: {total / base:.2f}")
    print(f"phantom images/s per core: {args.n / total:.1f}")


if __name__ == "__main__":
    main()

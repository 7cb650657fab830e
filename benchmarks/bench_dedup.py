"""Near-duplicate search at 1e4, 1e5 and 1e6 synthetic 64-bit perceptual hashes, drawn in clusters.

Uniform random hashes have no near neighbours, which measures only the best case, so the hashes are
drawn in clusters: each centre gets 1-9 members 0..radius+2 bits away (planted neighbours inside
the radius, and some just outside it). Checks recall 1.0 against brute force at 1e4, prints the time
per item at each size, and ends with the 1e6/1e5 time ratio (n log n gives ~12, n^2 gives 100).
Runs on one core (the search is single-threaded numpy).

    python benchmarks/bench_dedup.py [--radius 8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from unimedvl.qc.dedup import brute_force_pairs, near_pairs, plan  # noqa: E402


def clustered(n: int, radius: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 10, size=n)  # cluster sizes 1..9
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    sizes[-1] -= sizes.sum() - n
    centres = rng.integers(0, 2**64 - 1, size=len(sizes), dtype=np.uint64, endpoint=True)
    h = np.repeat(centres, sizes)
    flips = rng.integers(0, radius + 3, size=n)
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    flips[first] = 0  # the centre itself
    for c in range(radius + 2):
        use = c < flips
        h[use] ^= np.uint64(1) << rng.integers(0, 64, size=int(use.sum())).astype(np.uint64)
    return h[rng.permutation(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--radius", type=int, default=8, help="Hamming radius (params.yaml qc.near_dup_hamming)")
    args = ap.parse_args()
    t = args.radius
    times = {}
    for exp in (4, 5, 6):
        n = 10**exp
        h = clustered(n, t, seed=exp)
        t0 = time.perf_counter()
        pairs = near_pairs(h, t)
        dt = time.perf_counter() - t0
        times[exp] = dt
        line = f"n=1e{exp}: {len(pairs):>9,} pairs within {t} bits in {dt:7.2f} s = {dt / n * 1e6:6.2f} us/item  plan {plan(n, t)}"
        if exp == 4:
            t0 = time.perf_counter()
            want = {tuple(p) for p in brute_force_pairs(h, t).tolist()}
            got = {tuple(p) for p in pairs.tolist()}
            recall = len(got & want) / max(1, len(want))
            line += f"\n        brute force: {len(want):,} pairs in {time.perf_counter() - t0:.2f} s; recall {recall:.3f}, precision {len(got & want) / max(1, len(got)):.3f}"
            assert recall == 1.0 and got == want, "multi-index search missed pairs"
        print(line, flush=True)
    print(f"dedup 1e5/1e4 time ratio: {times[5] / times[4]:.1f}")
    print(f"dedup 1e6/1e5 time ratio: {times[6] / times[5]:.1f}")


if __name__ == "__main__":
    main()

"""Duplicates and leakage: pixel hashes, a perceptual hash, a multi-index Hamming search, MinHash.

- **Exact duplicates**: `pixel_hash` hashes the *decoded* pixels (dtype, shape, values), so the same
  image re-encoded losslessly (another PNG compression level, another container) is still equal.
- **Near duplicates**: `phash` is the classic 64-bit DCT perceptual hash (32x32 grey thumbnail, 2-D
  DCT, the 8x8 lowest frequencies against their median). Resizing, re-encoding and small shifts move
  it by a few bits; a different image of the same modality moves it by ~20-32.
- **Search**: `near_pairs` finds every pair within a Hamming radius without comparing all pairs.
  Multi-index hashing (Norouzi et al., 2012): cut the 64 bits into `m` blocks; two hashes within
  distance `t` agree to within `r = floor(t / m)` bits on at least one block (pigeonhole), so each
  item only looks up the buckets of its own block values and their `r`-bit variants, then the
  candidates are verified on all 64 bits. `m` and `r` are chosen from `t` and `n` so buckets stay
  small (blocks of ~log2(n) bits). Buckets are direct-addressed arrays, and everything is numpy
  (no Python loop per item), so 10^6 hashes take seconds, and the cost grows close to n, not n^2.
- **Texts**: `minhash` signatures over word 3-shingles and LSH banding give candidate pairs of
  near-duplicate texts, verified on the signature's Jaccard estimate.

Records, not images, are what QC keeps or removes (see `run.py`), so the images of one record (a
counterfactual pair, an edit's input and output) always stay together.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

# --- image hashes ------------------------------------------------------------------------------


def pixel_hash(arr: np.ndarray) -> bytes:
    """16-byte hash of the decoded pixels (dtype and shape included)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}:{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.digest()


def _grey_float(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3:
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    a = a.astype(np.float32)
    if np.asarray(arr).dtype == np.uint16:
        a /= 257.0  # same scale as 8-bit, so 8- and 16-bit copies of one image hash alike
    return a


def _thumb(arr: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(PILImage.fromarray(_grey_float(arr), mode="F").resize((side, side), PILImage.Resampling.BOX))


def phash(arr: np.ndarray) -> int:
    """64-bit perceptual hash: the 8x8 block means of the grey image against their median.

    Why not the DCT pHash: medical images are often left-right symmetric (the MNI template, many
    brain and body slices), which makes half of the low DCT coefficients ~0, so their sign against
    the median is noise: a JPEG re-encode moved the DCT hash of MNI slices by 16 of 64 bits. Block
    means are stable under resizing, re-encoding and shifts of a few pixels (<= 8 bits on the
    packaged corpus for images >= 64 px). They are coarse (different brains at the same level can
    hash alike), so a candidate pair is confirmed on a 32x32 thumbnail (`same_image`).
    """
    t = _thumb(arr, 8)
    bits = t > np.median(t)
    return int(np.packbits(bits.ravel()).view(">u8")[0])


def thumbnail(arr: np.ndarray, side: int = 32) -> bytes:
    """A `side` x `side` uint8 grey thumbnail (min-max scaled) used to confirm near duplicates."""
    t = _thumb(arr, side)
    lo, hi = float(t.min()), float(t.max())
    scaled = (t - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(t)
    return np.round(scaled).astype(np.uint8).tobytes()


def correlation(a: bytes, b: bytes, max_shift: int = 1) -> float:
    """Best normalised cross-correlation of two thumbnails over shifts of up to `max_shift` px."""
    side = int(round(len(a) ** 0.5))
    x = np.frombuffer(a, np.uint8).reshape(side, side).astype(np.float64)
    y = np.frombuffer(b, np.uint8).reshape(side, side).astype(np.float64)
    best = -1.0
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            u = x[max(0, dy) : side + min(0, dy), max(0, dx) : side + min(0, dx)]
            v = y[max(0, -dy) : side + min(0, -dy), max(0, -dx) : side + min(0, -dx)]
            u, v = u - u.mean(), v - v.mean()
            den = float(np.sqrt((u * u).sum() * (v * v).sum()))
            c = float((u * v).sum() / den) if den > 0 else (1.0 if not u.any() and not v.any() else 0.0)
            best = max(best, c)
    return best


def hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def popcount64(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64, copy=False))



def thumbnail_stack(thumbs: Sequence[bytes]) -> np.ndarray:
    """[n, side, side] float32 of `thumbnail` bytes, built once for many `correlations` calls."""
    side = int(round(len(thumbs[0]) ** 0.5)) if thumbs else 0
    return np.stack([np.frombuffer(t, np.uint8).reshape(side, side) for t in thumbs]).astype(np.float32) if thumbs \
        else np.zeros((0, 0, 0), np.float32)


def correlations(thumbs: Sequence[bytes] | np.ndarray, pairs: np.ndarray, max_shift: int = 1, chunk: int = 4096) -> np.ndarray:
    """`correlation` for many (i, j) pairs of `thumbs` (bytes, or their `thumbnail_stack`) at once
    (vectorised; same values)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.full(len(pairs), -1.0)
    if not len(pairs):
        return out
    stack = thumbs if isinstance(thumbs, np.ndarray) else thumbnail_stack(thumbs)
    side = stack.shape[1]
    for lo in range(0, len(pairs), chunk):
        pr = pairs[lo : lo + chunk]
        x, y = stack[pr[:, 0]], stack[pr[:, 1]]
        best = np.full(len(pr), -1.0)
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                u = x[:, max(0, dy) : side + min(0, dy), max(0, dx) : side + min(0, dx)].reshape(len(pr), -1)
                v = y[:, max(0, -dy) : side + min(0, -dy), max(0, -dx) : side + min(0, -dx)].reshape(len(pr), -1)
                u = u - u.mean(axis=1, keepdims=True)
                v = v - v.mean(axis=1, keepdims=True)
                den = np.sqrt((u * u).sum(axis=1, dtype=np.float64) * (v * v).sum(axis=1, dtype=np.float64))
                num = (u * v).sum(axis=1, dtype=np.float64)
                flat = ~u.any(axis=1) & ~v.any(axis=1)
                c = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(flat, 1.0, 0.0))
                best = np.maximum(best, c)
        out[lo : lo + len(pr)] = best
    return out

# --- near-duplicate search -----------------------------------------------------------------------


@dataclass(frozen=True)
class MIHPlan:
    blocks: int  # m
    radius: int  # r: bits that may differ inside the block that must nearly agree
    widths: tuple[int, ...]

    @property
    def probes(self) -> int:
        return sum(sum(_comb(w, i) for i in range(self.radius + 1)) for w in self.widths)


def _comb(n: int, k: int) -> int:
    return math.comb(n, k)


def plan(n: int, threshold: int, bits: int = 64) -> MIHPlan:
    """Choose the block count that minimises probes plus expected candidates for `n` items."""
    best = None
    for m in range(1, bits + 1):
        r = threshold // m  # the pigeonhole: some block within floor(t / m)
        widths = tuple(bits // m + (1 if i < bits % m else 0) for i in range(m))
        if max(widths) > 26:  # direct-addressed bucket tables up to 2^26 entries
            continue
        probes = sum(sum(_comb(w, i) for i in range(r + 1)) for w in widths)
        # each probe finds on average n / 2^w items even for random hashes
        cost = sum(sum(_comb(w, i) for i in range(r + 1)) * (1.0 + n / 2.0**w) for w in widths)
        if best is None or cost < best[0]:
            best = (cost, MIHPlan(m, r, widths), probes)
    assert best is not None
    return best[1]


def _flip_masks(width: int, radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        for bits in itertools.combinations(range(width), r):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.uint64)


def near_pairs(hashes: np.ndarray | Sequence[int], threshold: int) -> np.ndarray:
    """All pairs (i, j), i < j, with Hamming(hashes[i], hashes[j]) <= threshold, as an (k, 2) array.

    Exact: every pair within the radius is found (the pigeonhole argument), none outside it is
    returned (candidates are verified on all 64 bits). Per block the items are sorted by block value,
    so the bucket lookups of `value ^ mask` walk memory almost in order; a pair differing in a
    block by a non-zero mask is probed only from the item whose lowest masked bit is 0 (half the
    lookups of probing from both ends).
    """
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    p = plan(n, threshold)
    found = []
    shift = 0
    for width in p.widths:
        keys = ((h >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int32)
        shift += width
        order = np.argsort(keys, kind="stable").astype(np.int32)
        sk, hs = keys[order], h[order]  # work in sorted positions; map back through `order`
        starts = np.zeros((1 << width) + 1, dtype=np.int32)
        np.cumsum(np.bincount(sk, minlength=1 << width), out=starts[1:])
        # mask 0: every pair inside one bucket (position i with each later position of its bucket)
        pos = np.arange(n, dtype=np.int32)
        later = starts[sk + 1] - pos - 1
        sel = np.nonzero(later > 0)[0].astype(np.int32)
        if len(sel):
            qa, ob = _expand(sel, sel + 1, later[sel])
            ok = popcount64(hs[qa] ^ hs[ob]) <= threshold
            found.append(np.stack([order[qa[ok]], order[ob[ok]]], axis=1))
        zero_bit = [np.nonzero(((sk >> b) & 1) == 0)[0].astype(np.int32) for b in range(width)]
        zero_keys = [sk[z] for z in zero_bit]
        for mask in _flip_masks(width, p.radius)[1:].astype(np.int64):
            low = (int(mask) & -int(mask)).bit_length() - 1
            q = zero_bit[low]
            probe = zero_keys[low] ^ np.int32(mask)
            s = starts[probe]
            ln = starts[probe + 1] - s
            hit = np.nonzero(ln)[0]
            if not len(hit):
                continue
            qi, cj = _expand(q[hit], s[hit], ln[hit])
            ok = popcount64(hs[qi] ^ hs[cj]) <= threshold
            if ok.any():
                found.append(np.stack([order[qi[ok]], order[cj[ok]]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pr = np.concatenate(found).astype(np.int64)
    lo, hi = np.minimum(pr[:, 0], pr[:, 1]), np.maximum(pr[:, 0], pr[:, 1])
    code = np.unique(lo * n + hi)  # a pair found through several blocks is kept once
    return np.stack([code // n, code % n], axis=1)


def _expand(query: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query[k], start[k] + i) for every k and i < length[k], without a Python loop."""
    if length.max() == 1:
        return query, start
    total = int(length.sum())
    first = (np.cumsum(length, dtype=np.int64) - length).astype(np.int32)
    offs = np.arange(total, dtype=np.int32) - np.repeat(first, length)
    return np.repeat(query, length), np.repeat(start, length) + offs


def brute_force_pairs(hashes: np.ndarray | Sequence[int], threshold: int) -> np.ndarray:
    """Reference all-pairs search (tests and the benchmark's recall check)."""
    h = np.asarray(hashes, dtype=np.uint64)
    out = []
    for i in range(len(h) - 1):
        d = popcount64(h[i] ^ h[i + 1 :])
        js = np.nonzero(d <= threshold)[0] + i + 1
        out.extend((i, int(j)) for j in js)
    return np.array(out, dtype=np.int64).reshape(-1, 2)


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


# --- texts ---------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)
_MERSENNE = np.uint64((1 << 61) - 1)


def normalise_text(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def shingles(text: str, k: int = 3) -> set[int]:
    words = _WORD.findall(text.lower())
    if len(words) < k:
        grams = [" ".join(words)] if words else []
    else:
        grams = [" ".join(words[i : i + k]) for i in range(len(words) - k + 1)]
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") >> 3 for g in grams}


def _perm_params(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(text: str, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signature (uint32) of the word 3-shingles of `text`; empty text gives all-max."""
    sh = shingles(text)
    if not sh:
        return np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
    x = np.fromiter(sh, dtype=np.uint64, count=len(sh))[:, None] % np.uint64(1 << 29)
    a, b = _perm_params(num_perm, seed)
    # (a * x + b) mod p with x < 2^29 and a, b < 2^61 overflows uint64, so reduce a first: use
    # 32-bit multipliers (still a universal family for 29-bit inputs).
    a32 = (a & np.uint64(0xFFFFFFFF)) | np.uint64(1)
    vals = (a32[None, :] * x + (b[None, :] & np.uint64(0xFFFFFFFF))) % np.uint64(4294967291)
    return vals.min(axis=0).astype(np.uint32)


def minhash_pairs(signatures: np.ndarray, threshold: float, bands: int = 32) -> list[tuple[int, int, float]]:
    """Pairs whose estimated Jaccard >= threshold, found by LSH banding (no all-pairs comparison)."""
    sig = np.asarray(signatures, dtype=np.uint32)
    n, num_perm = sig.shape if sig.ndim == 2 else (0, 0)
    if n < 2:
        return []
    rows = num_perm // bands
    candidates: set[tuple[int, int]] = set()
    for b in range(bands):
        band = np.ascontiguousarray(sig[:, b * rows : (b + 1) * rows])
        keys = band.view(np.dtype((np.void, band.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        edges = np.nonzero(sk[1:] != sk[:-1])[0] + 1
        for group in np.split(order, edges):
            if 1 < len(group) <= 2000:  # a giant bucket is an empty/boilerplate text: see run.py
                g = np.sort(group)
                for i, j in itertools.combinations(g.tolist(), 2):
                    candidates.add((i, j))
    out = []
    for i, j in sorted(candidates):
        est = float(np.mean(sig[i] == sig[j]))
        if est >= threshold:
            out.append((i, j, est))
    return out


def components_of(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    uf = UnionFind(n)
    for i, j in pairs:
        uf.union(int(i), int(j))
    return uf.components()

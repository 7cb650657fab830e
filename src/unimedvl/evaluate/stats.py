"""Intervals and tests behind every number of metrics.json.

Percentile bootstrap over items (numpy; resamples drawn once per call from a seeded generator), the
exact McNemar test for paired correct/incorrect outcomes (scipy's binomial test on the discordant
pairs), a one-sided permutation test of a difference in means between two groups of per-prompt
scores, and the exact one-sided tail of a sum of Bernoulli trials with their own chance rates. `metric(...)` turns per-item values into a schema `Metric`, or `insufficient_samples` below
`min_n`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .schema import Metric


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float] | None:
    """95% percentile interval of `stat` over items; None when there are fewer than 2 items or no resamples."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2 or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    if stat is np.mean:
        stats = v[idx].mean(axis=1)
    else:
        stats = np.array([stat(v[i]) for i in idx])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def metric(values: Sequence[float] | np.ndarray, min_n: int, n_boot: int = 1000, seed: int = 0,
           what: str = "items") -> Metric:
    """Mean of per-item values with its bootstrap interval (insufficient_samples below `min_n`)."""
    v = np.asarray(values, dtype=float)
    if len(v) < min_n:
        return Metric.insufficient(len(v), min_n, what)
    return Metric.ok(float(v.mean()), len(v), bootstrap_ci(v, n_boot=n_boot, seed=seed))


def auroc_metric(truth: Sequence[bool], scores: Sequence[float], min_n: int, n_boot: int = 1000, seed: int = 0,
                 what: str = "items") -> Metric:
    """ROC AUC of `scores` for `truth` (ties count half: a constant score is exactly 0.5) with a bootstrap
    interval over items; insufficient_samples below `min_n` or without both classes."""
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=float)
    if len(y) < min_n or y.all() or not y.any():
        return Metric.insufficient(len(y), min_n, f"{what} (both answers needed)")

    def stat(idx: np.ndarray) -> float:
        i = idx.astype(int)
        return float(roc_auc_score(y[i], s[i])) if 0 < y[i].sum() < len(i) else 0.5

    return Metric.ok(float(roc_auc_score(y, s)), len(y), bootstrap_ci(np.arange(len(y)), stat, n_boot, seed))


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> tuple[float, int, int]:
    """Two-sided exact McNemar p-value that A and B are equally accurate on the same items, and the
    discordant counts (A right / B wrong, A wrong / B right). Two-sided: a one-sided claim ("the model
    beats blind") is read together with the sign of the difference."""
    from scipy.stats import binomtest

    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("McNemar needs paired outcomes of the same items")
    n01 = int((a & ~b).sum())
    n10 = int((~a & b).sum())
    if n01 + n10 == 0:
        return 1.0, n01, n10
    return float(binomtest(n01, n01 + n10, 0.5).pvalue), n01, n10


def hits_above_chance_p(hits: Sequence[bool], chance: Sequence[float]) -> float:
    """One-sided p-value of at least this many hits when item i hits by chance with probability
    chance[i]: the exact Poisson-binomial tail (the binomial test, with each item's own rate, e.g. the
    pointing game's finding area over image area)."""
    h = np.asarray(hits, dtype=bool)
    p = np.clip(np.asarray(chance, dtype=float), 0.0, 1.0)
    if h.shape != p.shape:
        raise ValueError("one chance rate per item")
    dist = np.zeros(len(p) + 1)
    dist[0] = 1.0
    for q in p:  # distribution of the number of chance hits, one item at a time
        dist[1:] = dist[1:] * (1 - q) + dist[:-1] * q
        dist[0] *= 1 - q
    return float(min(1.0, dist[int(h.sum()):].sum()))


def permutation_test(a: Sequence[float], b: Sequence[float], n_perm: int = 2000, seed: int = 0) -> float:
    """One-sided p-value that mean(a) > mean(b), by permuting group labels (with the +1 correction, so
    p is never 0)."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if len(x) == 0 or len(y) == 0:
        raise ValueError("a permutation test needs two non-empty groups")
    observed = x.mean() - y.mean()
    pooled = np.concatenate([x, y])
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        p = rng.permutation(pooled)
        hits += (p[: len(x)].mean() - p[len(x):].mean()) >= observed - 1e-12
    return (hits + 1) / (n_perm + 1)


def paired_permutation_test(diffs: Sequence[float], n_perm: int = 2000, seed: int = 0) -> float:
    """One-sided p-value that the paired differences sum to more than zero (random sign flips of each
    pair: under the null, which of the two systems produced which outcome is exchangeable)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) == 0:
        raise ValueError("a permutation test needs at least one pair")
    observed = d.sum()
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, 500):
        k = min(500, n_perm - start)
        signs = rng.choice((-1.0, 1.0), size=(k, len(d)))
        hits += int(((signs * d).sum(axis=1) >= observed - 1e-12).sum())
    return (hits + 1) / (n_perm + 1)

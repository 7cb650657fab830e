"""Generation metrics: domain Frechet distance, faithfulness, PSNR / SSIM, counterfactual locality.

* Frechet distance between two Gaussians fitted to feature sets (the FID formula,
  ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), with scipy's `sqrtm`), our own code:
  torchmetrics' FID needs torchvision, which cannot enter this environment. In the judge's feature
  space it is the *domain Frechet distance*, never called FID; with a user-supplied TorchScript
  Inception network (`evaluate.inception_torchscript`) the same code gives an FID-style number
  (`generation.fid.*`), not claimed equal to the reference implementations (resizing, weights).
  Only computed where both sets hold at least 2x the feature dimension (a covariance estimate from
  fewer points is singular), else `insufficient_samples`; its interval is the estimate +- 1.96
  bootstrap standard errors (resampling both sets).
* Faithfulness per finding: P(judge finds X | prompt asks for X) - P(judge finds X | prompt does not).
* PSNR / SSIM: scikit-image's `structural_similarity` (data range 1, grey) and PSNR from the MSE; a
  pair of identical constant images has SSIM 1 and PSNR +inf, capped at 100 dB so means stay finite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .schema import FINDINGS, Metric

PSNR_CAP = 100.0


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.linalg import sqrtm

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise, as the reference FID code does
        eps = np.eye(len(s1)) * 1e-6
        covmean = sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(max(0.0, ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))


def frechet_metric(a: np.ndarray, b: np.ndarray, n_boot: int = 50, seed: int = 0) -> Metric:
    """Frechet distance with a bootstrap interval, or insufficient_samples below 2x the dimension."""
    dim = a.shape[1]
    n = min(len(a), len(b))
    if n < 2 * dim:
        return Metric(status="insufficient_samples", n=n,
                      reason=f"{len(a)} vs {len(b)} images for {dim}-d features; needs >= {2 * dim} in each set")
    value = frechet_distance(a, b)
    rng = np.random.default_rng(seed)
    boots = [frechet_distance(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
             for _ in range(n_boot)]
    # Resampling with replacement duplicates points, which shrinks the covariance estimates and biases
    # every resampled distance upward, so the percentile interval can miss the estimate itself: the
    # interval is the estimate +- 1.96 bootstrap standard errors instead (clipped at 0).
    if len(boots) > 1:
        se = float(np.std(boots, ddof=1))
        ci = (max(0.0, value - 1.96 * se), value + 1.96 * se)
    else:
        ci = None
    return Metric.ok(value, n, ci)


def torchscript_extractor(path: str | Path, resolution: int = 299) -> Callable[[torch.Tensor], np.ndarray]:
    """Features from a TorchScript network (e.g. an Inception v3 pool3 export) over images [N, C, H, W]
    in [-1, 1]: grey images are repeated to 3 channels and resized to `resolution`."""
    import torch.nn.functional as F

    net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def extract(images: torch.Tensor) -> np.ndarray:
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
        out = [net(x[i:i + 64]) for i in range(0, len(x), 64)]
        return torch.cat([o.reshape(o.shape[0], -1) for o in out]).double().numpy()

    return extract


def faithfulness(verdicts: np.ndarray, finding: Sequence[str], asks: Sequence[bool]) -> dict[str, float | None]:
    """Per finding, P(found | asked) - P(found | not asked); None where either group is empty.
    `verdicts` is [N, len(FINDINGS)] (the judge on each prompt's image)."""
    finding, asks = np.asarray(finding), np.asarray(asks, dtype=bool)
    out: dict[str, float | None] = {}
    for j, f in enumerate(FINDINGS):
        m = finding == f
        a, e = verdicts[m & asks, j].astype(float), verdicts[m & ~asks, j].astype(float)
        out[f] = float(a.mean() - e.mean()) if len(a) and len(e) else None
    return out


def faithfulness_contributions(verdicts: np.ndarray, finding: Sequence[str], asks: Sequence[bool]) -> np.ndarray:
    """Each prompt's share of the mean faithfulness (they sum to it): +v/n_ask or -v/n_excl, over the
    number of findings scored. Paired across two models on the same prompts, their differences feed the
    permutation test."""
    finding, asks = np.asarray(finding), np.asarray(asks, dtype=bool)
    scored = [f for f in FINDINGS if (finding == f).any() and ((finding == f) & asks).any() and ((finding == f) & ~asks).any()]
    out = np.zeros(len(finding))
    for f in scored:
        j = FINDINGS.index(f)
        ma, me = (finding == f) & asks, (finding == f) & ~asks
        out[ma] = verdicts[ma, j].astype(float) / ma.sum()
        out[me] = -verdicts[me, j].astype(float) / me.sum()
    return out / max(1, len(scored))


def psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(ref, np.float64)) ** 2))
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else float(10 * np.log10(1.0 / mse))


def ssim(pred: np.ndarray, ref: np.ndarray) -> float:
    """SSIM of grey images in [0, 1]; identical images (constant ones included) give 1."""
    from skimage.metrics import structural_similarity

    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    if np.array_equal(pred, ref):
        return 1.0
    win = min(7, min(ref.shape) // 2 * 2 - 1)
    return float(structural_similarity(pred, ref, data_range=1.0, win_size=win))


def bicubic_upsample(low: np.ndarray, size: int) -> np.ndarray:
    """The baseline super-resolution: PIL's bicubic resize of a grey image in [0, 1]."""
    from PIL import Image as PILImage

    im = PILImage.fromarray(np.asarray(low, np.float32), mode="F").resize((size, size), PILImage.BICUBIC)
    return np.clip(np.asarray(im, np.float64), 0, 1)


def region_change(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean absolute change inside and outside a region (mask > 0.5)."""
    d = np.abs(np.asarray(after, np.float64) - np.asarray(before, np.float64))
    m = np.asarray(mask) > 0.5
    inside = float(d[m].mean()) if m.any() else 0.0
    outside = float(d[~m].mean()) if (~m).any() else 0.0
    return inside, outside

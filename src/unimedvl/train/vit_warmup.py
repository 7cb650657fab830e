"""ViT warm-up: give the understanding encoder finding-aware features before the curriculum starts.

The paper starts every stage from a pretrained SigLIP ViT. The CPU presets start from a random one,
and measured on the demo data that is why the model answers finding questions from the question
alone: trained through the backbone on mixed yes/no finding questions, a random ViT stays at chance
(margin AUROC 0.47-0.49 on the phantom benchmark after 11,000 question views, at learning rates
5e-4, 2e-3 and 5e-3), because the answer depends on the question AND the image and neither side
gives the other a gradient to start from. The same ViT trained for 24 s as a multi-label finding
classifier (mean-pooled patches, linear head) reaches held-out AUROC 0.8-1.0, and the backbone then
learns the questions over it (docs/understanding.md has the measurements).

The targets are the phantom records' ground truth (`labels.input[0].findings`) of the training split
only; the head is dropped afterwards. Records without ground truth (real data) are not used.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import VitWarmupConfig
from ..evaluate.schema import FINDINGS as FINDING_TYPES
from ..model.autoencoder import flattened_position_ids
from ..model.vision import VisionModel, patchify_image


def finding_targets(labels: dict[str, Any] | None) -> list[float] | None:
    """One 0/1 per finding type for a phantom record's first input image; None without ground truth."""
    inputs = (labels or {}).get("input") or []
    if not inputs or "findings" not in inputs[0]:
        return None
    present = {f["type"] for f in inputs[0]["findings"]}
    return [float(t in present) for t in FINDING_TYPES]


def warmup_set(data_dir: Path, resolution: int, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [n, 3, R, R] in [-1, 1], targets [n, len(FINDING_TYPES)]) from the training split's
    phantom records, one per distinct input image, at most `limit` (a seeded draw)."""
    import pyarrow.compute as pc

    from ..data.shards import read_table
    from .data import image_tensor

    t = read_table(Path(data_dir), columns=["split", "labels", "input_img"])
    t = t.filter(pc.equal(t["split"], "train"))
    seen: set[bytes] = set()
    blobs, targets = [], []
    for lab, ins in zip(t["labels"].to_pylist(), t["input_img"].to_pylist(), strict=True):
        if not ins or not lab:
            continue
        y = finding_targets(json.loads(lab) if isinstance(lab, str) else lab)
        b = ins[0]["bytes"]
        if y is None or b in seen:
            continue
        seen.add(b)
        blobs.append(b)
        targets.append(y)
    pick = sorted(int(i) for i in np.random.default_rng(seed).permutation(len(blobs))[:limit])
    if not pick:
        return torch.zeros(0, 3, resolution, resolution), torch.zeros(0, len(FINDING_TYPES))
    return (torch.stack([image_tensor(blobs[i], resolution) for i in pick]),
            torch.tensor([targets[i] for i in pick], dtype=torch.float32))


def _pooled(vit: VisionModel, images: torch.Tensor, patch: int, max_side: int) -> torch.Tensor:
    """Mean of each image's patch features [n, hidden] (the images share one size)."""
    n, _, hh, ww = images.shape
    h, w = hh // patch, ww // patch
    patches = torch.cat([patchify_image(x, patch) for x in images])
    ids = flattened_position_ids(h, w, max_side).repeat(n)
    return vit(patches, ids, [h * w] * n).view(n, h * w, -1).mean(1)


def warm_up_vit(vit: VisionModel, images: torch.Tensor, targets: torch.Tensor, cfg: VitWarmupConfig, seed: int,
                progress=None) -> dict[str, Any]:
    """Train `vit` in place as a multi-label finding classifier; returns the held-out AUROC per finding
    (None where the held-out tenth lacks a positive or a negative) and the loss curve."""
    from sklearn.metrics import roc_auc_score

    n = len(images)
    summary: dict[str, Any] = {"images": n, "steps": 0, "heldout_auroc": dict.fromkeys(FINDING_TYPES)}
    if cfg.steps == 0 or n < 20:
        summary["skipped"] = "no steps configured" if cfg.steps == 0 else f"{n} phantom training images (< 20)"
        return summary
    p, side = vit.vision_model.cfg.patch_size, vit.vision_model.cfg.patches_per_side
    hold = max(10, n // 10)
    xtr, ytr, xho, yho = images[hold:], targets[hold:], images[:hold], targets[:hold]
    head = torch.nn.Linear(vit.vision_model.cfg.hidden_size, targets.shape[1])
    params = [*vit.parameters(), *head.parameters()]
    was = [q.requires_grad for q in vit.parameters()]
    vit.requires_grad_(True).train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(len(xtr), (cfg.batch_size,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(head(_pooled(vit, xtr[idx], p, side)), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, losses[-1])
    vit.eval()
    with torch.no_grad():
        logits = torch.cat([head(_pooled(vit, xho[i:i + 64], p, side)) for i in range(0, len(xho), 64)]).numpy()
    for q, w in zip(vit.parameters(), was, strict=True):
        q.requires_grad_(w)
    y = yho.numpy()
    auroc = {f: (round(float(roc_auc_score(y[:, j], logits[:, j])), 4) if 0 < y[:, j].sum() < len(y) else None)
             for j, f in enumerate(FINDING_TYPES)}
    summary.update(steps=cfg.steps, heldout_images=hold, heldout_auroc=auroc, loss_start=float(np.mean(losses[:20])),
                   loss_end=float(np.mean(losses[-20:])), seconds=round(time.perf_counter() - t0, 1))
    return summary

"""Warm-ups before the curriculum: finding-aware ViT features, finding questions answered over them,
then the generation expert on prompts that name the findings.

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
import math
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


def _patch_features(vit: VisionModel, images: torch.Tensor, patch: int, max_side: int) -> torch.Tensor:
    """Each image's patch features [n, patches, hidden] (the images share one size)."""
    n, _, hh, ww = images.shape
    h, w = hh // patch, ww // patch
    patches = torch.cat([patchify_image(x, patch) for x in images])
    ids = flattened_position_ids(h, w, max_side).repeat(n)
    return vit(patches, ids, [h * w] * n).view(n, h * w, -1)


def image_logits(vit: VisionModel, head: torch.nn.Linear, images: torch.Tensor, cfg: VitWarmupConfig) -> torch.Tensor:
    """Finding logits [n, findings] of images: the head scores every patch, then `cfg.pooling` joins them.

    `lse` is (1/r) log mean_p exp(r s_p), a soft maximum: a nodule in one of 64 patches moves it, where
    the mean of the patches' features dilutes it 64-fold. Measured on the demo data, mean pooling left
    nodule, consolidation, pneumothorax and lesion at chance on the phantom benchmark (the features
    told "abnormal" from "normal", which the natural co-occurrence of findings rewards), lse reached
    0.6-0.9 on each (docs/understanding.md)."""
    p, side = vit.vision_model.cfg.patch_size, vit.vision_model.cfg.patches_per_side
    feats = _patch_features(vit, images, p, side)
    if cfg.pooling == "mean":
        return head(feats.mean(1))
    r = cfg.lse_sharpness
    return (torch.logsumexp(r * head(feats), dim=1) - math.log(feats.shape[1])) / r


def warm_up_vit(vit: VisionModel, images: torch.Tensor, targets: torch.Tensor, cfg: VitWarmupConfig, seed: int,
                progress=None) -> dict[str, Any]:
    """Train `vit` in place as a multi-label finding classifier (`image_logits`); returns the held-out
    AUROC per finding over all held-out images and over the abnormal ones (`_auroc_per_finding`), and
    the loss curve."""
    n = len(images)
    summary: dict[str, Any] = {"images": n, "steps": 0, "heldout_auroc": dict.fromkeys(FINDING_TYPES)}
    if cfg.steps == 0 or n < 20:
        summary["skipped"] = "no steps configured" if cfg.steps == 0 else f"{n} phantom training images (< 20)"
        return summary
    hold = max(10, n // 10)
    xtr, ytr, xho, yho = images[hold:], targets[hold:], images[:hold], targets[:hold]
    head = torch.nn.Linear(vit.vision_model.cfg.hidden_size, targets.shape[1])
    params = [*vit.parameters(), *head.parameters()]
    was = [q.requires_grad for q in vit.parameters()]
    vit.requires_grad_(True).train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    # the ramp keeps the first Adam steps from throwing a random ViT into a state it does not leave
    # (at a constant 2e-3 the training loss stalled at 0.23, against 0.18 with the ramp at 1e-3)
    ramp = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / max(1, cfg.lr_warmup_steps)))
    gen = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(len(xtr), (cfg.batch_size,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(image_logits(vit, head, xtr[idx], cfg), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ramp.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, losses[-1])
    vit.eval()
    with torch.no_grad():
        logits = torch.cat([image_logits(vit, head, xho[i:i + 64], cfg) for i in range(0, len(xho), 64)]).numpy()
    for q, w in zip(vit.parameters(), was, strict=True):
        q.requires_grad_(w)
    y = yho.numpy()
    summary.update(steps=cfg.steps, heldout_images=hold, heldout_auroc=_auroc_per_finding(y, logits),
                   heldout_auroc_abnormal=_auroc_per_finding(y, logits, abnormal_only=True),
                   loss_start=float(np.mean(losses[:20])), loss_end=float(np.mean(losses[-20:])),
                   seconds=round(time.perf_counter() - t0, 1))
    return summary


def _auroc_per_finding(y: np.ndarray, logits: np.ndarray, abnormal_only: bool = False) -> dict[str, float | None]:
    """AUROC per finding (the judge's `auroc_per_finding`); None where a class is missing. `abnormal_only`
    scores finding f among the images with at least one finding of f's family (chest or brain), so images
    with f compete against images with other findings only: findings co-occur, and a feature that tells
    abnormal from normal scores well on all images (mean pooling: 0.80 for nodules there) while telling
    nothing about which finding it is (0.42 on the benchmark). The brain has one finding, so the lesion
    has no such comparison (None)."""
    from ..evaluate.benchmark import FAMILY_OF
    from ..evaluate.judge import auroc_per_finding

    keep = None
    if abnormal_only:
        keep = np.stack([y[:, [k for k, g in enumerate(FINDING_TYPES) if FAMILY_OF[g] == FAMILY_OF[f]]].sum(1) > 0
                         for f in FINDING_TYPES], axis=1)
    return {f: None if v is None else round(v, 4) for f, v in auroc_per_finding(logits, y, keep).items()}


def _labels_of(row: dict[str, Any]) -> dict[str, Any]:
    raw = row.get("labels")
    return json.loads(raw) if isinstance(raw, str) and raw else (raw or {})


def _is_phantom(row: dict[str, Any]) -> bool:
    return _labels_of(row).get("generator") == "unimedvl.phantoms"


def is_presence_question(row: dict[str, Any]) -> bool:
    """A phantom finding-presence question ("Is there a pleural effusion?"), whose answer its ground truth fixes."""
    labels = _labels_of(row)
    return (row.get("sub_task_type") == "vqa_closed" and labels.get("generator") == "unimedvl.phantoms"
            and (labels.get("task") or {}).get("question") == "presence")


def is_phantom_t2i(row: dict[str, Any]) -> bool:
    """A phantom text-to-image record: its prompt names the findings its image shows."""
    return row.get("sub_task_type") == "t2i" and _is_phantom(row)


def warm_up_questions(model, tokenizer, data_dir: Path, spec, cfg, seed: int, languages=None,
                      precision: str = "auto", progress=None) -> dict[str, Any]:
    """Train the backbone and connector in place on the training split's phantom presence questions,
    oversampled to `cfg.presence_share` of the draws among its other phantom image-to-text records, the ViT and
    autoencoder frozen (the stage-1 freezing), with the curriculum's own loader, packer and step.

    Why a warm-up of its own: the answer depends on the question AND the image, and a random backbone
    learns that conjunction only after a long plateau. Measured over the warmed-up ViT, frozen: one
    finding alone is learned in 200 steps; the six mixed stay at chance for 400 steps, then are learned
    a finding at a time (margin AUROC 0.50 at 400 steps, 0.72 at 1,000, 0.78 at 2,000; effusion and
    cardiomegaly first). Mixed into stage 1 as 29% of its i2t draws, the questions never get past the
    plateau within the demo's budget; 1,000 packed steps of them alone take about a minute on 2 cores."""
    from .data import ShardStore

    summary: dict[str, Any] = {"steps": 0, "questions": 0}
    if cfg.steps == 0:
        summary["skipped"] = "no steps configured"
        return summary
    store = ShardStore(data_dir, languages=languages)
    # One pass over the rows: presence questions, the other phantom records (reports, open and other
    # closed questions, captions), the rest. Only phantom records: their 64 px images cost little to
    # decode, where the real ones (up to 512 px) made the warm-up 1.5x slower.
    kind = {ref: "presence" if is_presence_question(row) else "phantom" if _is_phantom(row) else "other"
            for ref in store.by_category["i2t"] for row in (store.row(ref),)}
    n, others = sum(k == "presence" for k in kind.values()), sum(k == "phantom" for k in kind.values())
    summary["questions"] = n
    if n < 20:
        summary["skipped"] = f"{n} phantom presence questions in the training split (< 20)"
        return summary
    # Whole copies of each presence question, as many as bring them nearest the configured share.
    share = cfg.presence_share
    copies = 1 if share >= 1 or not others else max(1, round(share / (1 - share) * others / n))
    weight = {"presence": copies, "phantom": 0 if share >= 1 else 1, "other": 0}
    counts = store.resample(lambda ref: weight[kind[ref]], categories=("i2t",))
    summary["presence_share"] = round(n * copies / max(1, counts["i2t"]), 3)
    spec = spec.override(name="question_warmup", lr=cfg.lr, steps=cfg.steps, warmup_steps=cfg.lr_warmup_steps,
                         schedule="constant", mixture={"i2t": 1.0}, frozen=("autoencoder", "vit"),
                         max_tokens=cfg.max_tokens, weight_decay=0.0)
    summary.update(_train_backbone(model, tokenizer, store, spec, "i2t", "ce", seed, precision, progress))
    return summary


def warm_up_generation(model, tokenizer, data_dir: Path, spec, cfg, seed: int, languages=None,
                       precision: str = "auto", progress=None) -> dict[str, Any]:
    """Train the generation expert in place (`is_generation_expert`: the understanding weights that read
    the prompt and answer questions stay as they are) on the training split's phantom text-to-image
    records (the prompt names the findings), with the curriculum's loader, packer and step. `model` must
    carry the final latent scale and shift: the velocity it learns is in those units.

    Why: through the curriculum alone the demo's generator drew blotches (about 2,000 mixed t2i views:
    held-out velocity MSE 1.16 after stage 2), and the judge found nothing it was asked for; 400 steps of
    these records alone (about 50 s) gave recognisable radiographs whose hearts grow when the prompt
    asks for cardiomegaly (docs/understanding.md)."""
    from .data import ShardStore

    summary: dict[str, Any] = {"steps": 0, "records": 0}
    if cfg.steps == 0:
        summary["skipped"] = "no steps configured"
        return summary
    store = ShardStore(data_dir, languages=languages)
    # phantom t2i records only: their prompts say what the image shows; the real ones are captions of
    # 512 px scans (slower to decode) without ground truth
    counts = store.resample(lambda ref: int(is_phantom_t2i(store.row(ref))), categories=("t2i",))
    summary["records"] = counts["t2i"]
    if counts["t2i"] < 20:
        summary["skipped"] = f"{counts['t2i']} phantom text-to-image records in the training split (< 20)"
        return summary
    spec = spec.override(name="generation_warmup", lr=cfg.lr, steps=cfg.steps, warmup_steps=cfg.lr_warmup_steps,
                         schedule="constant", mixture={"t2i": 1.0}, frozen=("autoencoder", "vit"),
                         max_tokens=cfg.max_tokens, weight_decay=0.0)
    summary.update(_train_backbone(model, tokenizer, store, spec, "t2i", "mse", seed, precision, progress,
                                   trainable=is_generation_expert))
    return summary


def is_generation_expert(name: str) -> bool:
    """The parameters only image tokens use: the backbone's generation expert (MoT `*_moe_gen`) and the
    latent / timestep projections. The understanding expert reads the prompt and answers the questions."""
    from .curriculum import MODULE_GROUPS

    return "_moe_gen" in name or name.startswith(MODULE_GROUPS["generation_io"])


def _train_backbone(model, tokenizer, store, spec, category: str, loss: str, seed: int, precision: str,
                    progress, trainable=None) -> dict[str, Any]:
    """`spec.steps` curriculum steps on `store`'s `category` only, with `spec`'s freezing and, given
    `trainable(name)`, only those parameters (the caller's freezing is restored afterwards); the mean
    `loss` ("ce" or "mse") of the first and last 20 steps."""
    from ..model.autoencoder import posterior_cache
    from .curriculum import apply_freezing
    from .data import MixtureLoader, prefetch_depth
    from .loop import TrainModule, make_optimizer, make_scheduler, train_step

    was = {name: p.requires_grad for name, p in model.named_parameters()}
    apply_freezing(model, spec.frozen)
    if trainable is not None:
        for name, p in model.named_parameters():
            p.requires_grad_(p.requires_grad and trainable(name))
    model.train()
    loader = MixtureLoader(store, tokenizer, spec, model.cfg, seed=seed, mixture={category: 1.0})
    optimizer = make_optimizer(model, spec)
    scheduler = make_scheduler(optimizer, spec)
    module = TrainModule(model, touch=False)
    gen = torch.Generator().manual_seed(seed)
    losses, samples, t0 = [], 0, time.perf_counter()
    # the autoencoder is frozen here and the warm-ups redraw a few hundred images: each is encoded once
    with posterior_cache(model.autoencoder) as cache:
        for batch in loader.stream(0, spec.steps, prefetch=prefetch_depth(torch.device("cpu"), 1)):
            res = train_step(module, batch.packed, optimizer, scheduler, generator=gen, grad_clip=spec.grad_clip,
                             precision=precision)
            losses.append(getattr(res, loss))
            samples += batch.samples
            if progress is not None:
                progress(len(losses), losses[-1])
    model.eval()
    for name, p in model.named_parameters():
        p.requires_grad_(was[name])
    return {"steps": spec.steps, "samples": samples, f"{loss}_start": float(np.mean(losses[:20])),
            f"{loss}_end": float(np.mean(losses[-20:])), "seconds": round(time.perf_counter() - t0, 1),
            "encoder_cache": cache.stats()}

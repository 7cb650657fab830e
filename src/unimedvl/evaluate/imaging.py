"""The image metric families of one evaluation run (see `run.py`): generation (judge faithfulness
against the cached untrained model, domain Frechet distance, the optional TorchScript FID), image pairs
(super-resolution with the bicubic baseline, cross-contrast, counterfactual locality) and the pointing
game of the serving predictor's explanations."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from .families import _bench_rows
from .schema import FINDINGS, Metric
from .stats import hits_above_chance_p, paired_permutation_test


def _untrained_model(ev):
    """The same preset, seed and tokenizer, before any training (random backbone, the model folder's
    frozen autoencoder, so the decoder is not what differs)."""
    from ..model.unimedvl import UniMedVL

    torch.manual_seed(ev.params.train.seed)
    model = UniMedVL(ev.model.cfg, special=ev.tok.special)
    model.autoencoder.load_state_dict(ev.model.autoencoder.state_dict())
    model.eval()
    return model


def generation(ev, cache_dir: Path) -> None:
    from ..data.shards import manifest_sha256
    from .generation import faithfulness, faithfulness_contributions, frechet_metric
    from .run import _labels, _turns, cache_key

    rows = [r for r in _bench_rows(ev) if _labels(r)["benchmark"]["kind"] == "generation"]
    if not rows:
        ev.put("generation.faithfulness.mean", Metric.insufficient(0, ev.min_n, "generation prompts"))
        return
    ctxs = [ev.ctx(r) for r in rows]
    seeds = [ev.cfg.sampling.seed * 1_000_003 + i for i in range(len(rows))]
    finding = [_labels(r)["task"]["finding"] for r in rows]
    asks = [bool(_labels(r)["task"]["asks"]) for r in rows]
    imgs = ev.images_for(ev.model, ctxs, seeds, "generation")
    verdicts = ev.judge.verdicts(imgs)
    faith = faithfulness(verdicts, finding, asks)
    contrib = faithfulness_contributions(verdicts, finding, asks)
    # the untrained baseline, cached: it depends only on these, not on the trained weights
    s = ev.cfg.sampling
    key = cache_key("untrained", ev.params.train.preset, ev.params.train.seed, manifest_sha256(ev.bench_dir),
                    ev.judge.sha256, s.steps, s.cfg_text_scale, s.seed, ev.tok.vocab_size,
                    _ae_digest(ev.model))
    ev.images["untrained_key"] = key
    cache = cache_dir / f"untrained-{key}.npz"
    if cache.exists():
        base_verdicts = np.load(cache)["verdicts"]
    else:
        base_imgs = ev.images_for(_untrained_model(ev), ctxs, seeds, "generation (untrained)")
        base_verdicts = ev.judge.verdicts(base_imgs)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, verdicts=base_verdicts)
    base_faith = faithfulness(base_verdicts, finding, asks)
    base_contrib = faithfulness_contributions(base_verdicts, finding, asks)
    per_finding_n = Counter(finding)
    scored = [f for f in FINDINGS if faith[f] is not None]
    for f in FINDINGS:
        if faith[f] is None or per_finding_n[f] < ev.min_n:
            ev.put(f"generation.faithfulness.{f}", Metric.insufficient(per_finding_n[f], ev.min_n, "prompts"))
        else:
            ev.put(f"generation.faithfulness.{f}", Metric.ok(faith[f], per_finding_n[f], _faith_ci(verdicts, finding, asks, f, ev)))
    n = len(rows)
    if len(scored) == 0 or n < ev.min_n:
        ev.put("generation.faithfulness.mean", Metric.insufficient(n, ev.min_n, "generation prompts"))
    else:
        ci = _mean_ci(verdicts, finding, asks, ev)
        ev.put("generation.faithfulness.mean", Metric.ok(float(contrib.sum()), n, ci))
        ev.put("generation.faithfulness.untrained.mean", Metric.ok(float(base_contrib.sum()), n, _mean_ci(base_verdicts, finding, asks, ev)))
        ev.put("generation.faithfulness.permutation_p",
               Metric.ok(paired_permutation_test(contrib - base_contrib, ev.cfg.permutations, ev.seed), n))
    ev.put("generation.judge_positive_rate", Metric.ok(float(verdicts.any(axis=1).mean()), n))
    ev.plots["faithfulness"] = [{"finding": f, "model": faith[f] or 0.0, "untrained": base_faith[f] or 0.0} for f in FINDINGS]
    # the report's grid: a few prompts per finding, asked and excluded, with the judge's verdicts
    picks = []
    for f in FINDINGS:
        idx = [i for i, k in enumerate(finding) if k == f][:max(2, ev.cfg.grid_images // len(FINDINGS))]
        picks += idx
    ev.images["grid"] = [(imgs[i], _turns(rows[i])[0], finding[i], asks[i],
                          [FINDINGS[j] for j in np.flatnonzero(verdicts[i])]) for i in picks[: ev.cfg.grid_images]]
    # domain Frechet distance per modality, judge features, against the real test images
    feats = ev.judge.features(imgs)
    mods = np.array([r["modality"] for r in rows])
    real = _real_test_images(ev)
    extractor = None
    if ev.cfg.inception_torchscript:
        from .generation import torchscript_extractor

        extractor = torchscript_extractor(ev.cfg.inception_torchscript)
    for mod in sorted(set(mods)):
        real_imgs = real.get(mod)
        if real_imgs is None or len(real_imgs) == 0:
            ev.put(f"generation.domain_fd.{mod}", Metric.insufficient(0, 2 * feats.shape[1], f"real {mod} test images"))
            continue
        ev.put(f"generation.domain_fd.{mod}", frechet_metric(feats[mods == mod], ev.judge.features(real_imgs), seed=ev.seed))
        if extractor is not None:
            gen_t = imgs[torch.from_numpy(mods == mod)]
            ev.put(f"generation.fid.{mod}", frechet_metric(extractor(gen_t), extractor(real_imgs), seed=ev.seed))
    if extractor is None:
        for mod in sorted(set(mods)):
            ev.put(f"generation.fid.{mod}", Metric.unavailable(
                "no Inception network can be downloaded here; set evaluate.inception_torchscript to a TorchScript export"))


def _ae_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.autoencoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def _faith_ci(verdicts, finding, asks, f, ev):
    from .generation import faithfulness

    finding, asks = np.asarray(finding), np.asarray(asks)
    idx = np.flatnonzero(finding == f)
    rng = np.random.default_rng(ev.seed)
    vals = []
    for _ in range(min(ev.n_boot, 500)):
        b = rng.choice(idx, len(idx))
        v = faithfulness(verdicts[b], finding[b], asks[b])[f]
        if v is not None:
            vals.append(v)
    return (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))) if vals else None


def _mean_ci(verdicts, finding, asks, ev):
    """Bootstrap of the mean faithfulness, resampling prompts within each finding."""
    from .generation import faithfulness_contributions

    finding, asks = np.asarray(finding), np.asarray(asks)
    groups = [np.flatnonzero(finding == f) for f in FINDINGS if (finding == f).any()]
    rng = np.random.default_rng(ev.seed + 7)
    vals = []
    for _ in range(min(ev.n_boot, 500)):
        b = np.concatenate([rng.choice(g, len(g)) for g in groups])
        vals.append(faithfulness_contributions(verdicts[b], finding[b], asks[b]).sum())
    return (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))) if vals else None


def _real_test_images(ev) -> dict[str, torch.Tensor]:
    """Distinct images of the QC'd test split per modality, [N, 3, R, R] in [-1, 1]."""
    import pyarrow.compute as pc

    from ..data.shards import read_table
    from ..train.data import image_tensor

    t = read_table(ev.data_dir, columns=["split", "modality", "input_img", "output_img"])
    t = t.filter(pc.equal(t["split"], "test"))
    seen: set[bytes] = set()
    out: dict[str, list[torch.Tensor]] = defaultdict(list)
    res = ev.spec.vae_resolution
    for mod, ins, outs in zip(t["modality"].to_pylist(), t["input_img"].to_pylist(), t["output_img"].to_pylist(), strict=True):
        for img in (ins or []) + (outs or []):
            if img["bytes"] in seen or len(out[mod]) >= 2000:
                continue
            seen.add(img["bytes"])
            out[mod].append(image_tensor(img["bytes"], res))
    return {k: torch.stack(v) for k, v in out.items() if v}


def image_pairs(ev) -> None:
    """Super-resolution (+ bicubic), cross-contrast and counterfactual pairs of the benchmark."""
    from ..data.phantoms import render
    from .generation import bicubic_upsample, psnr, region_change, ssim
    from .run import _grey01, _labels, _png_grey01

    rows = _bench_rows(ev)
    s = ev.cfg.sampling
    for kind, prefix in (("super_resolution", "sr"), ("cross_modal", "cross_modal"), ("counterfactual", "counterfactual")):
        items = [r for r in rows if _labels(r)["benchmark"]["kind"] == kind]
        if len(items) < ev.min_n:
            keys = (("in_region_change", "out_region_change", "locality") if kind == "counterfactual" else ("psnr", "ssim"))
            for k in keys:
                ev.put(f"{prefix}.{k}", Metric.insufficient(len(items), ev.min_n, f"{kind} pairs"))
            if kind == "super_resolution":
                for k in ("psnr", "ssim"):
                    ev.put(f"sr.bicubic.{k}", Metric.insufficient(len(items), ev.min_n, f"{kind} pairs"))
            continue
        ctxs = [ev.ctx(r) for r in items]
        seeds = [s.seed * 7_919 + i for i in range(len(items))]
        outs = ev.images_for(ev.model, ctxs, seeds, kind)
        size = outs.shape[-1]
        if kind == "counterfactual":
            inside, outside = [], []
            for r, o in zip(items, outs, strict=True):
                lab = _labels(r)
                before = _png_grey01(r["input_img"][0]["bytes"], size)
                mask = render(lab["input"][0], size).findings[int(lab["task"]["removed_index"])]
                a, b = region_change(before, _grey01(o), mask)
                inside.append(a)
                outside.append(b)
            ev.mean("counterfactual.in_region_change", inside, "pairs")
            ev.mean("counterfactual.out_region_change", outside, "pairs")
            ev.mean("counterfactual.locality", np.array(inside) - np.array(outside), "pairs")
            continue
        ps, ss, bp, bs = [], [], [], []
        for r, o in zip(items, outs, strict=True):
            ref = _png_grey01(r["output_img"][0]["bytes"], size)
            pred = _grey01(o)
            ps.append(psnr(pred, ref))
            ss.append(ssim(pred, ref))
            if kind == "super_resolution":
                low = _png_grey01(r["input_img"][0]["bytes"])
                up = bicubic_upsample(low, size)
                bp.append(psnr(up, ref))
                bs.append(ssim(up, ref))
        ev.mean(f"{prefix}.psnr", ps, "pairs")
        ev.mean(f"{prefix}.ssim", ss, "pairs")
        if kind == "super_resolution":
            ev.mean("sr.bicubic.psnr", bp, "pairs")
            ev.mean("sr.bicubic.ssim", bs, "pairs")
        ev.plots.setdefault("image_pairs", []).append({"task": kind, "model_psnr": float(np.mean(ps)),
                                                       "baseline_psnr": float(np.mean(bp)) if bp else None})


def pointing_game(ev) -> None:
    """For benchmark finding questions whose finding is present and that the model answered right:
    does the peak of the explanation heatmap of the answer "yes" (the serving predictor's
    `explain_answer`, gradient x input over ViT patches) fall inside the finding's region, dilated by
    half a ViT patch (the heatmap's resolution)? The chance rate is a uniformly random point's: the
    dilated region's share of the image; `explain.pointing_game.p_value` is the exact one-sided
    probability of as many hits by chance."""
    from ..data.phantoms import render
    from ..serve.explain import explain_answer
    from .generation import pointing_hit
    from ..train.data import image_tensor
    from .run import _labels, _turns

    correct = ev.finding_correct or {}
    rows = [r for r in _bench_rows(ev) if _labels(r)["benchmark"]["kind"] == "finding"
            and _labels(r)["task"]["answer"] == "yes" and correct.get(r["id"], False)]
    if len(rows) < ev.min_n:
        for k in ("explain.pointing_game", "explain.pointing_game.random", "explain.pointing_game.p_value"):
            ev.put(k, Metric.insufficient(len(rows), ev.min_n, "present-finding questions"))
        return
    res = ev.spec.vit_resolution
    grow = max(1, ev.model.cfg.vit.patch_size // 2)
    hits, chance = [], []
    bar, tick = ev.progress.bar(len(rows), "pointing game")
    for r in rows:
        lab = _labels(r)
        image = image_tensor(r["input_img"][0]["bytes"], res)
        question = _turns(r)[0].replace("<image>", "").strip()
        heat = explain_answer(ev.model, ev.tok, image, question, ev.tok.encode(_turns(r)[1]), size=(res, res))
        rendered = render(lab["input"][0], res)
        masks = [m for f, m in zip(lab["input"][0]["findings"], rendered.findings, strict=True)
                 if f["type"] == lab["task"]["finding"]]
        hit, share = pointing_hit(heat, np.any([m > 0.5 for m in masks], axis=0), grow)
        hits.append(float(hit))
        chance.append(share)
        if tick is not None:
            tick(1)
    if bar is not None:
        bar.close()
    ev.calls += len(rows)
    ev.mean("explain.pointing_game", hits, "correctly answered present-finding questions")
    ev.mean("explain.pointing_game.random", chance, "correctly answered present-finding questions")
    ev.put("explain.pointing_game.p_value", Metric.ok(hits_above_chance_p(np.array(hits) > 0.5, chance), len(hits)))



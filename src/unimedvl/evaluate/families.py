"""The metric families of one evaluation run (see `run.py`): each reads the run's state, asks the model
through `sampling`, scores with `understanding` / `report` / `generation` / `stats`, and stores Metrics,
plot rows and worst examples on it. Question text and images never reach a log; examples go only into
the HTML report of the run's own output folder."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import understanding as U
from .schema import FINDINGS, Metric
from .stats import mcnemar_exact, paired_permutation_test

CLOSED_TASKS = ("vqa_closed",)
OPEN_TASKS = ("vqa_open",)


def _slug(s: str) -> str:
    import re

    return re.sub(r"[^a-z0-9_\-]+", "_", (s or "unknown").lower()).strip("_") or "unknown"


def _pvalue(p: float, n: int) -> Metric:
    return Metric.ok(p, n)


def _majority(ev, rows_test: list[dict[str, Any]]) -> list[str]:
    """The most common training answer of each test question's type (by the closed rule's reading)."""
    from .run import _qtype, _rows, _turns

    train = _rows(ev.data_dir, "train", CLOSED_TASKS + OPEN_TASKS, images=False)
    table = U.majority_answers([(_qtype(r), _turns(r)[1]) for r in train])
    overall = U.majority_answers([("all", _turns(r)[1]) for r in train]).get("all", "yes")
    return [table.get(_qtype(r), overall) for r in rows_test]


def understanding(ev) -> None:
    from .run import _labels, _rows, _subsample, _turns

    min_n = ev.min_n
    # --- real test split -------------------------------------------------------------------------
    closed = _subsample(_rows(ev.data_dir, "test", CLOSED_TASKS), ev.cfg.max_test_items, ev.seed)
    open_ = _subsample(_rows(ev.data_dir, "test", OPEN_TASKS), ev.cfg.max_test_items, ev.seed + 1)
    mt = ev.cfg.sampling.max_new_tokens
    for family, rows in (("closed", closed), ("open", open_)):
        if not rows:
            for k in (("accuracy", "blind.accuracy", "majority.accuracy") if family == "closed"
                      else ("exact", "recall", "blind.exact", "majority.exact")):
                ev.put(f"vqa.{family}.{k}", Metric.insufficient(0, min_n, f"{family} questions in the test split"))
            continue
        ctxs = [ev.ctx(r) for r in rows]
        from .sampling import blind

        preds = ev.answers(ctxs, mt, f"vqa {family}")
        blind_preds = ev.answers([blind(c) for c in ctxs], mt, f"vqa {family} blind")
        major = _majority(ev, rows)
        qs = [_turns(r)[0] for r in rows]
        refs = [_turns(r)[1] for r in rows]
        if family == "closed":
            ok = np.array([U.closed_correct(p, a, q) for p, a, q in zip(preds, refs, qs, strict=True)])
            okb = np.array([U.closed_correct(p, a, q) for p, a, q in zip(blind_preds, refs, qs, strict=True)])
            okm = np.array([U.closed_correct(p, a, q) for p, a, q in zip(major, refs, qs, strict=True)])
            ev.mean("vqa.closed.accuracy", ok, "closed questions")
            ev.mean("vqa.closed.blind.accuracy", okb, "closed questions")
            ev.mean("vqa.closed.majority.accuracy", okm, "closed questions")
            if len(ok) >= min_n:
                ev.put("vqa.closed.mcnemar_p", _pvalue(mcnemar_exact(ok, okb)[0], len(ok)))
            ev.plots["confusion"] = _confusion(preds, refs)
            score, name = ok, "accuracy"
        else:
            ok = np.array([U.open_exact(p, a) for p, a in zip(preds, refs, strict=True)])
            rec = np.array([U.open_recall(p, a) for p, a in zip(preds, refs, strict=True)])
            ev.mean("vqa.open.exact", ok, "open questions")
            ev.mean("vqa.open.recall", rec, "open questions")
            ev.mean("vqa.open.blind.exact", [U.open_exact(p, a) for p, a in zip(blind_preds, refs, strict=True)], "open questions")
            ev.mean("vqa.open.majority.exact", [U.open_exact(p, a) for p, a in zip(major, refs, strict=True)], "open questions")
            score, name = ok, "exact"
        bars = []
        for by, field in (("source", "dataset"), ("modality", "modality"), ("lang", "lang")):
            groups: dict[str, list[float]] = defaultdict(list)
            for r, s in zip(rows, score, strict=True):
                groups[_slug(r[field])].append(float(s))
            for g, vals in sorted(groups.items()):
                if by == "lang" and g == "en":
                    continue  # en is the headline number; other languages are reported apart
                ev.mean(f"vqa.{family}.by_{by}.{g}.{name}", vals, f"{family} questions")
                bars.append({"family": family, "by": by, "group": g, "value": float(np.mean(vals)), "n": len(vals)})
        ev.plots.setdefault("by_group", []).extend(bars)
        _worst(ev, f"vqa.{family}", rows, preds, refs, score)
    # --- benchmark finding-presence questions ----------------------------------------------------
    bench = _bench_rows(ev)
    finding = [r for r in bench if _labels(r)["benchmark"]["kind"] == "finding"]
    ctxs = [ev.ctx(r) for r in finding]
    from .sampling import blind

    preds = ev.answers(ctxs, 8, "finding questions")
    blind_preds = ev.answers([blind(c) for c in ctxs], 8, "finding questions blind")
    refs = [_turns(r)[1] for r in finding]
    ok = np.array([U.closed_correct(p, a) for p, a in zip(preds, refs, strict=True)], dtype=bool)
    okb = np.array([U.closed_correct(p, a) for p, a in zip(blind_preds, refs, strict=True)], dtype=bool)
    major = _majority(ev, finding)
    okm = np.array([U.closed_correct(p, a) for p, a in zip(major, refs, strict=True)], dtype=bool)
    ev.mean("vqa.finding.accuracy", ok, "finding questions")
    ev.mean("vqa.finding.blind.accuracy", okb, "finding questions")
    ev.mean("vqa.finding.majority.accuracy", okm, "finding questions")
    if len(ok) >= min_n:
        p, n01, n10 = mcnemar_exact(ok, okb)
        ev.put("vqa.finding.mcnemar_p", _pvalue(p, len(ok)))
        ev.images["mcnemar_finding"] = {"model_right_blind_wrong": n01, "model_wrong_blind_right": n10}
    kinds = [_labels(r)["task"]["finding"] for r in finding]
    for f in FINDINGS:
        vals = [float(o) for o, k in zip(ok, kinds, strict=True) if k == f]
        ev.mean(f"vqa.finding.by_finding.{f}.accuracy", vals, f"{f} questions")
        ev.plots.setdefault("by_group", []).append({"family": "finding", "by": "finding", "group": f,
                                                    "value": float(np.mean(vals)) if vals else 0.0, "n": len(vals)})
    ev.plots["confusion_finding"] = _confusion(preds, refs)
    _worst(ev, "vqa.finding", finding, preds, refs, ok)
    # --- benchmark open questions ----------------------------------------------------------------
    bopen = [r for r in bench if _labels(r)["benchmark"]["kind"] == "open"]
    preds = ev.answers([ev.ctx(r) for r in bopen], mt, "benchmark open")
    refs = [_turns(r)[1] for r in bopen]
    ex = np.array([U.open_exact(p, a) for p, a in zip(preds, refs, strict=True)])
    ev.mean("vqa.benchmark_open.exact", ex, "open questions")
    ev.mean("vqa.benchmark_open.recall", [U.open_recall(p, a) for p, a in zip(preds, refs, strict=True)], "open questions")
    by: dict[str, list[float]] = defaultdict(list)
    for r, e in zip(bopen, ex, strict=True):
        by[_slug(_labels(r)["task"]["question"])].append(float(e))
    for q, vals in sorted(by.items()):
        ev.mean(f"vqa.benchmark_open.by_qtype.{q}.exact", vals, f"{q} questions")


def _confusion(preds: list[str], refs: list[str]) -> list[dict[str, Any]]:
    """One row per question (DVC's confusion template counts rows): the reference and predicted yes/no."""
    return [{"actual": U.yes_no(a) or "other", "predicted": U.yes_no(p) or "other", "count": 1}
            for p, a in zip(preds, refs, strict=True)]


def _worst(ev, family: str, rows, preds, refs, score) -> None:
    """The lowest-scoring items (first by score, then by order) for the report's worst-examples table."""
    from .run import _turns

    order = np.argsort(np.asarray(score, dtype=float), kind="stable")[: ev.cfg.worst_examples]
    for i in order:
        r = rows[int(i)]
        ev.examples[family].append({"id": r["id"], "source": r["dataset"], "question": _turns(r)[0].replace("<image>", "").strip(),
                                    "reference": refs[int(i)], "prediction": preds[int(i)], "score": float(score[int(i)])})


def _bench_rows(ev) -> list[dict[str, Any]]:
    if "bench_rows" not in ev.images:
        from ..data.shards import read_table

        ev.images["bench_rows"] = read_table(ev.bench_dir).to_pylist()
    return ev.images["bench_rows"]


def reports(ev) -> None:
    from .report import label_report, report_metrics
    from .run import _labels, _rows, _subsample, _turns

    bench = [r for r in _bench_rows(ev) if _labels(r)["benchmark"]["kind"] == "report"]
    real = _subsample(_rows(ev.data_dir, "test", ("report",)), ev.cfg.max_test_items, ev.seed + 2)
    mt = ev.cfg.report_max_new_tokens
    pb = ev.answers([ev.ctx(r) for r in bench], mt, "benchmark reports")
    pr = ev.answers([ev.ctx(r) for r in real], mt, "test reports")
    rb = [_turns(r)[1] for r in bench]
    rr = [_turns(r)[1] for r in real]
    fb = [set(_labels(r)["task"].get("findings", [])) for r in bench]
    fr = [set(label_report(t).positive) for t in rr]
    m = report_metrics(pb + pr, rb + rr, fb + fr, ev.min_n, ev.n_boot, ev.seed)
    for k, v in m.items():
        ev.put(k, v)
    for prefix, p, r in (("report.benchmark", pb, rb), ("report.real", pr, rr)):
        sub = report_metrics(p, r, [None] * len(p), ev.min_n, ev.n_boot, ev.seed, prefix=prefix)
        ev.put(f"{prefix}.bleu4", sub[f"{prefix}.bleu4"])
        ev.put(f"{prefix}.rouge_l", sub[f"{prefix}.rouge_l"])
    from .report import rouge_l

    if pb + pr:
        scores = rouge_l(pb + pr, rb + rr)
        _worst(ev, "report", bench + real, pb + pr, rb + rr, scores)


# --- generation ------------------------------------------------------------------------------------


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
    from .run import _labels, _rows, _turns, cache_key

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


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


__all__ = ["generation", "image_pairs", "reports", "understanding"]
_ = Path

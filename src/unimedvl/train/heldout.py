"""The fixed held-out set (the `heldout` step) and the training-time signal measured on it.

`select_heldout` chooses the set once per data version, from the val split, across every task family
(text_only, t2i, i2t, interleaved) and source: `heldout.per_family` samples per family, drawn
round-robin over the family's sources (each source shuffled with `heldout.seed`), or every sample a
family has, with the shortfall flagged. Every stage measures the same set, so stage1's end and
stage2's start are the same weights on the same samples with the same noise, and score the same.

`measure` gives each sample its own fixed timesteps and noise (seeded by its index, independent of how
samples are packed), and returns per-sample CE and MSE sums; `summarise` turns them into per-family
CE / MSE and the mixture-weighted figures (families weighted by the stage's mixture); `paired_delta`
is the paired bootstrap (resampling samples within families, the same draw for both measurements) of
the change in mixture-weighted CE between two measurements.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.shards import manifest_sha256, shard_paths
from .curriculum import CATEGORIES, SUB_TASK_CATEGORY, normalise

HELDOUT_FILE = "heldout.json"


def select_heldout(data_dir: str | Path, out_dir: str | Path, per_family: int = 64, seed: int = 0,
                   split: str = "val") -> dict[str, Any]:
    """Write `<out_dir>/heldout.json` (the chosen records and where they are) and return its summary."""
    import pyarrow.parquet as pq

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    by_family: dict[str, dict[str, list[dict]]] = {c: defaultdict(list) for c in CATEGORIES}
    answer_chars: dict[str, int] = {}
    for si, path in enumerate(shard_paths(data_dir)):
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["id", "sub_task_type", "split", "dataset", "message"]).to_pydict()
            for i, (rid, task, sp, ds, msg) in enumerate(zip(t["id"], t["sub_task_type"], t["split"], t["dataset"],
                                                             t["message"], strict=True)):
                fam = SUB_TASK_CATEGORY.get(task)
                if sp != split or fam is None:
                    continue
                by_family[fam][ds].append({"id": rid, "family": fam, "source": ds, "sub_task_type": task,
                                           "shard": si, "row_group": rg, "row": i})
                answer_chars[rid] = sum(len(m["value"]) for m in msg if m["from"] == "gpt")
    rng = np.random.default_rng(seed)
    chosen: list[dict] = []
    families: dict[str, dict] = {}
    for fam in CATEGORIES:
        sources = {s: [rows[j] for j in rng.permutation(len(rows))] for s, rows in sorted(by_family[fam].items())}
        available = sum(len(v) for v in sources.values())
        picked: list[dict] = []
        while len(picked) < min(per_family, available):
            for s in sources:  # round-robin: every source is represented before any gets a second sample
                if sources[s] and len(picked) < per_family:
                    picked.append(sources[s].pop(0))
        chosen += picked
        families[fam] = {"n": len(picked), "available": available,
                         "by_source": dict(sorted({s: sum(p["source"] == s for p in picked) for s in by_family[fam]}.items())),
                         "flag": None if len(picked) >= per_family else
                         ("absent from the val split" if not available else f"only {available} in the val split (< {per_family})"),
                         "answer_chars": sum(answer_chars[p["id"]] for p in picked)}
    if not chosen:
        raise ValueError(f"{data_dir} has no {split!r} records of any task family: the held-out set needs a {split} split")
    out = {"format": "unimedvl-heldout/1", "data_manifest_sha256": manifest_sha256(data_dir), "split": split,
           "per_family": per_family, "seed": seed, "families": families, "n": len(chosen), "samples": chosen}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / HELDOUT_FILE).write_text(json.dumps(out, indent=1) + "\n")
    return {k: v for k, v in out.items() if k != "samples"}


@dataclass
class HeldoutSet:
    families: list[str]  # per sample
    sources: list[str]
    segments: list[list]
    info: dict[str, Any]


def load_heldout(data_dir: str | Path, heldout_dir: str | Path, tokenizer, spec, cfg) -> HeldoutSet:
    """The chosen records as model samples (the stage's resolutions); refuses a set made from other data."""
    from .data import RowRef, ShardStore, record_to_sample

    data_dir, heldout_dir = Path(data_dir), Path(heldout_dir)
    info = json.loads((heldout_dir / HELDOUT_FILE).read_text())
    if info["data_manifest_sha256"] != manifest_sha256(data_dir):
        raise ValueError(f"{heldout_dir / HELDOUT_FILE} was chosen from another version of {data_dir}: "
                         "run `unimedvl heldout` (dvc repro heldout) again")
    store = ShardStore(data_dir, info["split"], verify=False)
    fams, srcs, segs = [], [], []
    for s in info["samples"]:
        row = store.row(RowRef(s["shard"], s["row_group"], s["row"]))
        if row["id"] != s["id"]:
            raise ValueError(f"held-out record {s['id']} is not where {HELDOUT_FILE} says; the data changed")
        sample = record_to_sample(row, tokenizer, spec, cfg)
        fams.append(s["family"])
        srcs.append(s["source"])
        segs.append(sample.segments)
    return HeldoutSet(fams, srcs, segs, {k: v for k, v in info.items() if k != "samples"})


def _sample_inputs(model, segments: list[list], seed: int, first: int):
    """Per-sample timesteps and noise, each from a generator seeded by the sample's index."""
    from ..model.unimedvl import LatentImage

    cfg = model.cfg
    ts, noise = [], []
    for j, segs in enumerate(segments):
        g = torch.Generator().manual_seed(seed * 1_000_003 + first + j)
        for s in segs:
            if isinstance(s, LatentImage):
                h, w = (s.latent.shape[1:] if s.latent is not None else
                        (s.image.shape[1] // cfg.vae.downsample, s.image.shape[2] // cfg.vae.downsample))
                n = (h // cfg.latent_patch_size) * (w // cfg.latent_patch_size)
                ts.append(model._shift(torch.sigmoid(torch.randn(1, generator=g)))[0])
                noise.append(torch.randn(n, cfg.patch_latent_dim, generator=g))
    if not ts:
        return None, None
    return torch.stack(ts), torch.cat(noise)


@torch.no_grad()
def measure(model, held: HeldoutSet, device="cpu", max_tokens: int = 2048, seed: int = 0) -> list[dict[str, float]]:
    """Per-sample CE and MSE sums on the held-out set (model in eval mode; restored afterwards)."""
    import torch.nn.functional as F

    from ..model.unimedvl import pack
    from .data import count_tokens

    was = model.training
    model.eval()
    out: list[dict[str, float]] = []
    i = 0
    while i < len(held.segments):
        j, used = i, 0
        while j < len(held.segments) and (j == i or used + count_tokens(held.segments[j], model.cfg) <= max_tokens):
            used += count_tokens(held.segments[j], model.cfg)
            j += 1
        chunk = held.segments[i:j]
        batch = pack(chunk, model.cfg, model.special).to(device)
        t, noise = _sample_inputs(model, chunk, seed, i)
        hidden, extra = model.hidden_states(batch, timesteps=None if t is None else t.to(device),
                                            noise=None if noise is None else noise.to(device))
        rows = [{"ce_sum": 0.0, "ce_n": 0, "mse_sum": 0.0, "mse_n": 0} for _ in chunk]
        sample_of = batch.layout.sample
        if batch.ce_index is not None:
            logits = model.language_model.lm_head(hidden.index_select(0, batch.ce_index)).float()
            ce = F.cross_entropy(logits, batch.ce_labels, reduction="none")
            for k, v in zip(sample_of[batch.ce_index].tolist(), ce.tolist(), strict=True):
                rows[k]["ce_sum"] += v
                rows[k]["ce_n"] += 1
        if extra and bool(extra["mse_rows"].any()):
            idx = batch.latent_index[extra["mse_rows"]]
            pred = model.llm2vae(hidden.index_select(0, idx)).float()
            err = ((pred - extra["target"][extra["mse_rows"]].float()) ** 2).mean(dim=-1)
            for k, v in zip(sample_of[idx].tolist(), err.tolist(), strict=True):
                rows[k]["mse_sum"] += v
                rows[k]["mse_n"] += 1
        out += rows
        i = j
    model.train(was)
    return out


def _family_means(per: list[dict], fams: list[str], idx: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0.0, 0, 0])
    for k in range(len(per)) if idx is None else idx:
        s = sums[fams[k]]
        r = per[k]
        s[0] += r["ce_sum"]
        s[1] += r["ce_n"]
        s[2] += r["mse_sum"]
        s[3] += r["mse_n"]
        s[4] += 1
    return {f: {"ce": s[0] / s[1] if s[1] else None, "ce_tokens": s[1], "mse": s[2] / s[3] if s[3] else None,
                "mse_tokens": s[3], "n": s[4]} for f, s in sums.items()}


def _mixed(fam: dict[str, dict], mixture: dict[str, float], key: str) -> float | None:
    # Only the families this stage trains on count: a mixture with no image-output family (the synergy
    # ablation's understanding_only) has no mixture-weighted MSE, which is None, not an error.
    have = {f for f, v in fam.items() if v[key] is not None and mixture.get(f, 0) > 0}
    if not have:
        return None
    w = normalise(mixture, have)
    return float(sum(w[f] * fam[f][key] for f in w))


def summarise(per: list[dict], held: HeldoutSet, mixture: dict[str, float], ce_weight: float, mse_weight: float,
              weights: str) -> dict[str, Any]:
    """Per-family CE / MSE, mixture-weighted CE and MSE (`ce`, `mse`), their weighted sum (`loss`)."""
    fam = _family_means(per, held.families)
    ce, mse = _mixed(fam, mixture, "ce"), _mixed(fam, mixture, "mse")
    loss = ce_weight * (ce or 0.0) + mse_weight * (mse or 0.0)
    return {"weights": weights, "loss": loss, "ce": ce, "mse": mse, "families": fam,
            "ce_tokens": int(sum(r["ce_n"] for r in per)), "samples": len(per)}


def paired_delta(start: list[dict], end: list[dict], held: HeldoutSet, mixture: dict[str, float], key: str = "ce",
                 n_boot: int = 1000, seed: int = 0) -> dict[str, float | None]:
    """end - start of the mixture-weighted `key`, with a paired bootstrap 95% interval (samples resampled
    within their family, the same resample for both)."""
    base = _mixed(_family_means(end, held.families), mixture, key)
    ref = _mixed(_family_means(start, held.families), mixture, key)
    if base is None or ref is None:
        return {"value": None, "ci_low": None, "ci_high": None, "n_boot": 0}
    rng = np.random.default_rng(seed)
    groups = defaultdict(list)
    for k, f in enumerate(held.families):
        groups[f].append(k)
    deltas = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(v, size=len(v), replace=True) for v in groups.values()])
        a = _mixed(_family_means(end, held.families, idx), mixture, key)
        b = _mixed(_family_means(start, held.families, idx), mixture, key)
        deltas.append(a - b)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"value": base - ref, "ci_low": float(lo), "ci_high": float(hi), "n_boot": n_boot}


# ----------------------------------------------------------------------------------------------------
# The step, and where a training stage finds its set.


def heldout_dir_for(data_dir: Path, given, ckpt: Path, per_family: int) -> Path:
    """The `heldout` step's output (given, or the sibling `heldout` folder of the data); without one the
    stage chooses a set itself the same way (train.heldout_samples per family) and says so."""
    from .stages import StageError

    def checked(folder: Path) -> Path:
        made_from = json.loads((folder / HELDOUT_FILE).read_text()).get("data_manifest_sha256")
        if made_from != manifest_sha256(data_dir):
            raise StageError(f"{folder / HELDOUT_FILE} was chosen from another version of {data_dir}: run "
                             f"`unimedvl heldout --data {data_dir} --output {folder}` (dvc repro heldout) again")
        return folder

    if given is not None:
        if not (Path(given) / HELDOUT_FILE).exists():
            raise StageError(f"{given} holds no {HELDOUT_FILE}: run `unimedvl heldout --data {data_dir} --output {given}`")
        return checked(Path(given))
    sibling = data_dir.parent / "heldout"
    if (sibling / HELDOUT_FILE).exists():
        return checked(sibling)
    own = ckpt / "heldout"
    print(f"no held-out set given (`unimedvl heldout`): choosing {per_family} per family into {own}", flush=True)
    try:
        select_heldout(data_dir, own, per_family=per_family)
    except ValueError as e:
        raise StageError(str(e)) from None
    return own


def run_heldout(data_dir: str | Path, out_dir: str | Path, params, metrics_path: str | Path | None = None,
                profile: str | None = None) -> dict[str, Any]:
    """The `heldout` step (CLI, DVC stage and KFP component): choose the fixed held-out set of this data
    version and log it as the step's MLflow run; `params` is the validated params.yaml."""
    from ..tracking import step_run
    from .stages import StageError, resolve_params

    params = resolve_params(params, profile)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not (data_dir / "manifest.json").exists():
        raise StageError(f"{data_dir} holds no data set (no manifest.json): run `unimedvl qc` first")
    cfg = params.heldout
    with step_run("heldout", params={"heldout": cfg.model_dump()}, data=data_dir, tracking=params.tracking,
                  dataset_context="eval") as run:
        try:
            summary = select_heldout(data_dir, out_dir, cfg.per_family, cfg.seed, cfg.split)
        except ValueError as e:
            raise StageError(str(e)) from None
        run.log_metrics({"samples": summary["n"], **{f"samples.{f}": v["n"] for f, v in summary["families"].items()}})
        run.log_artifact(out_dir / "heldout.json")
    summary["run_id"] = run.run_id
    mp = Path(metrics_path) if metrics_path else out_dir.with_name(out_dir.name + ".metrics.json")
    mp.parent.mkdir(parents=True, exist_ok=True)
    mp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary

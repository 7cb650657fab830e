"""The synergy ablation (UniMedVL's central claim): does understanding training help generation, and
generation training help understanding?

Three variants are trained with the same budget (the same stages, steps, token budgets and learning
rates, from the same autoencoder folder), by the training code itself with masked task mixtures:

    unified              the curriculum's mixtures as they are
    generation_only      i2t (understanding) masked out of every stage's mixture
    understanding_only   t2i and interleaved (generation) masked out

over `seeds` (train.seed), each evaluated by `evaluate` on the same data, benchmark and judge. The
deltas (unified - understanding_only for understanding metrics, unified - generation_only for generation
metrics) go to `docs/synergy.md` with their mean and spread over seeds. About an hour of CPU on the demo
settings: off in `dvc repro`, `unimedvl evaluate --ablation`, a flag of the KFP pipeline (`run_ablation`);
both call `run_ablation`, whose seeds and step cap default to `pipeline.ablation` (the smoke profile
sets one seed and a few steps). Every variant's masked mixtures are checked against the training
data's task categories before any training starts.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..config import Params

VARIANTS = {
    "unified": (),
    "generation_only": ("i2t",),
    "understanding_only": ("t2i", "interleaved"),
}
UNDERSTANDING_KEYS = ("vqa.finding.accuracy", "vqa.closed.accuracy", "vqa.open.exact", "report.bleu4", "report.finding.f1")
GENERATION_KEYS = ("generation.faithfulness.mean", "sr.psnr", "cross_modal.psnr")


class SynergyError(ValueError):
    """A variant cannot be trained on this data (raised before any training starts)."""


def masked_params(params: Params, masked: tuple[str, ...], seed: int, variant: str = "",
                  available: set[str] | None = None) -> Params:
    """`params` with the masked task categories set to 0 in every training stage's mixture; with
    `available` (the training data's task categories), a stage left with nothing to draw is an error."""
    from ..train.curriculum import normalise
    from ..train.stages import stage_spec

    update: dict[str, Any] = {"train": params.train.model_copy(update={"seed": seed})}
    for stage in ("stage1", "stage2", "stage3"):
        original = dict(stage_spec(params, stage).mixture)
        mix = {k: 0.0 if k in masked else v for k, v in original.items()}
        try:
            normalise(mix, available)
        except ValueError:
            have = "any" if available is None else ", ".join(sorted(available)) or "none"
            raise SynergyError(f"synergy variant {variant or masked!r}: masking {list(masked)} out of {stage}'s mixture "
                               f"{original} leaves {mix}, which selects no task category of the training data (it has: "
                               f"{have}); add records of the kept categories or change {stage}.mixture") from None
        update[stage] = getattr(params, stage).model_copy(update={"mixture": mix})
    return params.model_copy(update=update)


def data_categories(data_dir: Path, params: Params) -> set[str]:
    """The task categories training would draw from in `data_dir` (its train split, the mixture's languages)."""
    from ..train.data import ShardStore

    return ShardStore(data_dir, "train", languages=tuple(params.ingest.mixture_languages) or None, verify=False).available()


def synergy_table(results: dict[str, dict[int, dict[str, float | None]]]) -> list[dict[str, Any]]:
    """Rows {metric, baseline, deltas per seed, mean, stdev} from {variant: {seed: {metric: value}}}."""
    rows = []
    for keys, baseline in ((UNDERSTANDING_KEYS, "understanding_only"), (GENERATION_KEYS, "generation_only")):
        for key in keys:
            deltas = []
            for seed, unified in results.get("unified", {}).items():
                other = results.get(baseline, {}).get(seed, {})
                if unified.get(key) is not None and other.get(key) is not None:
                    deltas.append(float(unified[key]) - float(other[key]))
            rows.append({"metric": key, "baseline": baseline, "deltas": deltas,
                         "mean": statistics.fmean(deltas) if deltas else None,
                         "stdev": statistics.stdev(deltas) if len(deltas) > 1 else None})
    return rows


def write_synergy_md(rows: list[dict[str, Any]], path: Path, note: str = "") -> Path:
    lines = ["# Synergy ablation", "", "Unified training minus a single-capability variant trained with the same "
             "budget (`unimedvl evaluate --ablation`). Positive: the other capability's training helped.", ""]
    if note:
        lines += [note, ""]
    lines += ["| metric | compared with | mean delta | spread (sd over seeds) | per seed |", "|---|---|---|---|---|"]
    for r in rows:
        mean = "n/a" if r["mean"] is None else f"{r['mean']:+.4f}"
        sd = "n/a" if r["stdev"] is None else f"{r['stdev']:.4f}"
        lines.append(f"| `{r['metric']}` | {r['baseline']} | {mean} | {sd} | {', '.join(f'{d:+.4f}' for d in r['deltas'])} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_ablation(data_dir: Path, bench_dir: Path, judge_dir: Path, autoencoder_dir: Path, work: Path, params: Params,
                 seeds: tuple[int, ...] | None = None, doc: Path = Path("docs/synergy.md"), progress: bool = False,
                 max_steps: int | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every variant x seed under `work`, then write `doc`. `seeds` and `max_steps`
    default to `params.pipeline.ablation`."""
    from ..train.stages import run_stage
    from .run import evaluate

    seeds = tuple(seeds if seeds is not None else params.pipeline.ablation.seeds)
    max_steps = max_steps if max_steps is not None else params.pipeline.ablation.max_steps
    if not seeds:
        raise SynergyError("the synergy ablation needs at least one seed (pipeline.ablation.seeds)")
    available = data_categories(Path(data_dir), params)
    # Every variant's params first: a variant that cannot train fails here, not after the others trained.
    plans = {(variant, seed): masked_params(params, masked, seed, variant, available)
             for variant, masked in VARIANTS.items() for seed in seeds}
    results: dict[str, dict[int, dict[str, float | None]]] = {}
    for (variant, seed), p in plans.items():
        out = Path(work) / f"{variant}-seed{seed}"
        prev = Path(autoencoder_dir)
        for stage in ("stage1", "stage2", "stage3"):
            run_stage(stage, data_dir, out / stage, p, prev_dir=prev, progress=progress, max_steps=max_steps,
                      checkpoint_dir=out / "checkpoints" / stage)
            prev = out / stage
        m = evaluate(prev, data_dir, bench_dir, judge_dir, out / "eval", p, progress=progress, log_to_mlflow=False)
        results.setdefault(variant, {})[seed] = {k: m.value(k) for k in (*UNDERSTANDING_KEYS, *GENERATION_KEYS)}
    rows = synergy_table(results)
    write_synergy_md(rows, doc, note=f"Seeds {', '.join(map(str, seeds))}; steps per stage as in params.yaml"
                     + (f" (capped at {max_steps})" if max_steps else "") + ".")
    return rows

"""The `benchmark` step: the phantom evaluation set, with exact ground truth for every item.

The real test split holds only a handful of phantom questions (and no generation prompts with a
checkable answer), so evaluation draws its own set from `evaluate.benchmark.seed`, which must differ
from the training phantoms' seed (`ingest.phantom.seed`) and the judge's (`evaluate.judge.seed`).
Findings are drawn with the training `min_visible_px`, so every finding asked about is visible.

Item kinds (`labels.benchmark.kind`), sizes fixed in params:

    finding       balanced yes/no finding-presence questions, the same count per finding, half yes
    open          free-text questions (where, size, side, grade, extent, CTR, contrast, abnormality)
    report        report prompts; the reference is the templated FINDINGS / IMPRESSION report
    generation    t2i prompts per finding: half ask for it, half describe a case without it
    counterfactual, super_resolution, cross_modal   image pairs (input -> expected output)

Written with the data step's own `DatasetWriter` (Parquet shards + manifest.json), so the benchmark
reads like any data set; the manifest records `protocol_version`, the seed and the per-kind counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Params
from ..data.images import encode_png
from ..data.phantoms import render_from_labels, sample_brain_labels, sample_chest_labels
from ..data.phantoms import text as ptext
from ..data.phantoms.brain import CONTRASTS
from ..data.phantoms.tasks import build
from ..data.schema import SUB_TO_MAIN, Record, Turn
from ..data.shards import DatasetWriter, read_manifest
from .schema import FINDINGS, PROTOCOL_VERSION

DATASET = "phantom-benchmark"
KINDS = ("finding", "open", "report", "generation", "counterfactual", "super_resolution", "cross_modal")
CHEST_FINDINGS = FINDINGS[:5]
FAMILY_OF = {f: "chest" for f in CHEST_FINDINGS} | {"lesion": "brain"}


class BenchmarkError(ValueError):
    pass


@dataclass(frozen=True)
class _Sampler:
    """What the phantom sampler reads from a config (the benchmark's size, training's visibility floor)."""

    image_size: int
    min_visible_px: float
    super_resolution_factor: int


def _labels(rng: np.random.Generator, s: _Sampler, family: str, need: bool = False) -> dict[str, Any]:
    if family == "chest":
        return sample_chest_labels(rng, s, need_finding=need)
    return sample_brain_labels(rng, s, need_finding=need, contrast=str(rng.choice(CONTRASTS)))


def _has(labels: dict[str, Any], finding: str) -> bool:
    return any(f["type"] == finding for f in labels["findings"])


def _with_finding(rng: np.random.Generator, s: _Sampler, finding: str, present: bool) -> dict[str, Any]:
    """Rejection-sample a patient that has (or lacks) `finding`: the other findings keep the
    training distribution, so a question cannot be answered from co-occurring findings alone."""
    family = FAMILY_OF[finding]
    for _ in range(400):
        lab = _labels(rng, s, family, need=present)
        if _has(lab, finding) == present:
            return lab
    raise BenchmarkError(f"could not draw a phantom {'with' if present else 'without'} {finding} "
                         f"at image_size={s.image_size}; raise evaluate.benchmark.image_size")


def _items(cfg, s: _Sampler) -> Iterator[tuple[str, str, list[tuple[str, str]], list[dict], list[dict], dict]]:
    """(kind, family, message, input labels, output labels, task) for every item, in a fixed order."""
    rng = np.random.default_rng([cfg.seed, 0xBE4C])
    per = max(1, cfg.finding_questions // len(FINDINGS))
    for finding in FINDINGS:
        for i in range(per):
            present = i % 2 == 0
            lab = _with_finding(rng, s, finding, present)
            q = ptext.pick(rng, ptext.PRESENCE_Q[finding])
            task = {"question": "presence", "finding": finding, "answer": "yes" if present else "no"}
            yield "finding", lab["family"], [("human", "<image>\n" + q), ("gpt", "Yes." if present else "No.")], [lab], [], task
    for _ in range(cfg.open_questions):
        family = "chest" if rng.random() < 0.6 else "brain"
        spec = build("vqa_open", _labels(rng, s, family), rng, s)
        yield "open", family, spec.message, spec.inputs, [], spec.task
    for _ in range(cfg.report_prompts):
        family = "chest" if rng.random() < 0.6 else "brain"
        spec = build("report", _labels(rng, s, family), rng, s)
        yield "report", family, spec.message, spec.inputs, [], spec.task
    for finding in FINDINGS:
        for i in range(cfg.generation_per_finding):
            asks = i % 2 == 0
            lab = _with_finding(rng, s, finding, asks)
            prompt = ptext.t2i_prompt(lab, rng)
            task = {"finding": finding, "asks": asks, "findings": sorted({f["type"] for f in lab["findings"]})}
            yield "generation", lab["family"], [("human", prompt), ("gpt", ptext.t2i_answer(lab, rng))], [], [lab], task
    for kind, n in (("counterfactual", cfg.counterfactual_pairs), ("super_resolution", cfg.super_resolution_pairs),
                    ("cross_modal", cfg.cross_modal_pairs)):
        for _ in range(n):
            family = "brain" if kind == "cross_modal" or rng.random() >= 0.6 else "chest"
            spec = build(kind, _labels(rng, s, family, need=kind == "counterfactual"), rng, s)
            yield kind, family, spec.message, spec.inputs, spec.outputs, spec.task


def check_seeds(params: Params) -> None:
    b, j, t = params.evaluate.benchmark.seed, params.evaluate.judge.seed, params.ingest.phantom.seed
    if len({b, j, t}) < 3:
        raise BenchmarkError(f"phantom seeds must be disjoint: evaluate.benchmark.seed={b}, evaluate.judge.seed={j}, "
                             f"ingest.phantom.seed={t}; give each step its own seed")


def build_benchmark(out_dir: str | Path, params: Params, progress: bool = False) -> dict[str, Any]:
    """The benchmark step: `_build_benchmark` inside its child run of the pipeline's MLflow run."""
    from ..tracking import step_run

    with step_run("benchmark", params={"evaluate.benchmark": params.evaluate.benchmark.model_dump()},
                  tracking=params.tracking, dataset_context=None):
        return _build_benchmark(out_dir, params, progress)


def _build_benchmark(out_dir: str | Path, params: Params, progress: bool = False) -> dict[str, Any]:
    """Generate the benchmark into `out_dir` (shards/ + manifest.json); returns the manifest."""
    check_seeds(params)
    cfg = params.evaluate.benchmark
    s = _Sampler(cfg.image_size, params.ingest.phantom.min_visible_px, params.ingest.phantom.super_resolution_factor)
    if cfg.image_size % s.super_resolution_factor:
        raise BenchmarkError(f"evaluate.benchmark.image_size {cfg.image_size} is not divisible by "
                             f"ingest.phantom.super_resolution_factor {s.super_resolution_factor}")
    writer = DatasetWriter(Path(out_dir), step="benchmark", shard_max_mb=cfg.shard_max_mb)
    counts = dict.fromkeys(KINDS, 0)
    sub_task = {"finding": "vqa_closed", "open": "vqa_open", "report": "report", "generation": "t2i"}
    total = (len(FINDINGS) * (max(1, cfg.finding_questions // len(FINDINGS)) + cfg.generation_per_finding)
             + cfg.open_questions + cfg.report_prompts + cfg.counterfactual_pairs + cfg.super_resolution_pairs
             + cfg.cross_modal_pairs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="benchmark", unit="item")
    for idx, (kind, family, message, inputs, outputs, task) in enumerate(_items(cfg, s)):
        sub = sub_task.get(kind, kind)
        rid = f"bench{cfg.seed}-{idx:06d}"
        rec = Record(
            id=rid, dataset=DATASET, modality="xray" if family == "chest" else "mri",
            main_task_type=SUB_TO_MAIN[sub], sub_task_type=sub, split="test", lang="en",
            license="CC0-1.0", source_uri=f"phantom-benchmark://seed-{cfg.seed}/{idx}", patient_key=rid,
            message=[Turn(r, v) for r, v in message],
            input_img=[encode_png(render_from_labels(lab)) for lab in inputs],
            output_img=[encode_png(render_from_labels(lab)) for lab in outputs],
            labels={"generator": "unimedvl.phantoms", "family": family, "benchmark": {"kind": kind, "index": idx},
                    "task": {"type": sub, **task}, "input": inputs, "output": outputs},
        )
        writer.add(DATASET, rec)
        counts[kind] += 1
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return writer.close({"protocol_version": PROTOCOL_VERSION, "benchmark": {
        "seed": cfg.seed, "kinds": counts, "findings": list(FINDINGS), "params": cfg.model_dump(),
        "min_visible_px": s.min_visible_px}})


def check_benchmark(bench_dir: str | Path) -> dict[str, Any]:
    """The benchmark's manifest, or a clear error when it is missing or of another protocol version."""
    bench_dir = Path(bench_dir)
    try:
        manifest = read_manifest(bench_dir)
    except FileNotFoundError:
        raise BenchmarkError(f"{bench_dir} holds no benchmark (no manifest.json): run `unimedvl benchmark "
                             f"--output {bench_dir}` first") from None
    got = manifest.get("protocol_version")
    if manifest.get("step") != "benchmark" or got is None:
        raise BenchmarkError(f"{bench_dir} is a data set, not a benchmark (its manifest has no protocol_version)")
    if got != PROTOCOL_VERSION:
        raise BenchmarkError(f"{bench_dir} is a benchmark of protocol version {got}; this code scores version "
                             f"{PROTOCOL_VERSION}: rebuild it with `unimedvl benchmark --output {bench_dir}`")
    return manifest

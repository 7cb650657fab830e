"""The evaluate -> promote contract: `eval/metrics.json` (DESIGN section 2).

One pydantic v2 model, versioned by `schema_version`. Promotion gates, the KFP metrics artefact, the
serving model card and `dvc metrics show` read these keys, so every key this step can emit is listed in
`METRIC_KEYS` with what it means and how it is computed; `docs/metrics.md` is generated from that table
(`python -m unimedvl.evaluate.schema > docs/metrics.md`, a test checks it is fresh).

A metric that cannot be computed is never a number: it has `status` `unavailable` (the method cannot
run here, e.g. METEOR without WordNet) or `insufficient_samples` (fewer than `evaluate.min_n` items),
`value` null and a `reason`.
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
# Bumped when the benchmark's question set or its scoring rules change: metrics of different protocol
# versions are not comparable, and evaluate refuses a benchmark of another version.
PROTOCOL_VERSION = 1

_KEY = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_\-]+)+$")


class Status(str, Enum):
    ok = "ok"
    unavailable = "unavailable"
    insufficient_samples = "insufficient_samples"


class Metric(BaseModel):
    """One number with its 95% bootstrap interval and sample count, or the reason it is missing."""

    model_config = ConfigDict(extra="forbid")

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = Field(0, ge=0, description="items the value was computed over")
    status: Status = Status.ok
    reason: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Metric:
        if self.status is Status.ok:
            if self.value is None or not math.isfinite(self.value):
                raise ValueError("an ok metric needs a finite value")
            for bound in (self.ci_low, self.ci_high):
                if bound is not None and not math.isfinite(bound):
                    raise ValueError("interval bounds must be finite")
        else:
            if self.value is not None:
                raise ValueError(f"a metric with status {self.status.value} has no value")
            if not self.reason:
                raise ValueError(f"a metric with status {self.status.value} needs a reason")
        return self

    @classmethod
    def ok(cls, value: float, n: int, ci: tuple[float, float] | None = None) -> Metric:
        lo, hi = ci if ci is not None else (None, None)
        return cls(value=float(value), ci_low=None if lo is None else float(lo),
                   ci_high=None if hi is None else float(hi), n=int(n))

    @classmethod
    def unavailable(cls, reason: str, n: int = 0) -> Metric:
        return cls(status=Status.unavailable, reason=reason, n=n)

    @classmethod
    def insufficient(cls, n: int, min_n: int, what: str = "items") -> Metric:
        return cls(status=Status.insufficient_samples, n=n,
                   reason=f"{n} {what}, fewer than evaluate.min_n={min_n}")


class Sampling(BaseModel):
    """How evaluation sampled (its own `evaluate.sampling`; the library defaults stay the reference)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = 20
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 1.5
    timestep_shift: float = 3.0
    max_new_tokens: int = 48
    temperature: float = 0.0
    batch_size: int = 16
    seed: int = 0


class Inputs(BaseModel):
    """What the numbers were computed from: enough to tell whether two metrics files are comparable."""

    model_config = ConfigDict(extra="forbid")

    test_manifest_sha256: str | None = Field(None, description="sha256 of the QC'd data set's manifest.json (its test split is scored)")
    benchmark_manifest_sha256: str | None = Field(None, description="sha256 of the phantom benchmark's manifest.json")
    judge_sha256: str | None = Field(None, description="sha256 of the judge's weights (judge.safetensors)")
    protocol_version: int = Field(PROTOCOL_VERSION, description="the benchmark protocol the numbers follow")
    sampling: Sampling = Field(Sampling(), description="the evaluation's sampling settings")
    model_lineage: dict[str, Any] = Field({}, description="the model folder's lineage.json (data, commit, params hash, parent)")
    model_dir: str | None = Field(None, description="the model folder evaluated")
    untrained_cache_key: str | None = Field(None, description="key of the cached untrained-model baseline "
                                            "(preset, seed, benchmark manifest, judge, sampling)")


class EvalMetrics(BaseModel):
    """The whole of `eval/metrics.json`."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    metrics: dict[str, Metric] = {}
    inputs: Inputs = Inputs()

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"metrics.json schema_version {v}; this code reads version {SCHEMA_VERSION}")
        return v

    @field_validator("metrics")
    @classmethod
    def _keys(cls, v: dict[str, Metric]) -> dict[str, Metric]:
        for key in v:
            if not _KEY.match(key):
                raise ValueError(f"metric key {key!r} is not a lower-case dotted key")
            if not is_known_key(key):
                raise ValueError(f"metric key {key!r} is not listed in unimedvl.evaluate.schema.METRIC_KEYS")
        return v

    def value(self, key: str) -> float | None:
        """The value of `key`, or None when absent or not ok (gates treat both as failing)."""
        m = self.metrics.get(key)
        return m.value if m is not None and m.status is Status.ok else None

    def computed(self) -> int:
        return sum(m.status is Status.ok for m in self.metrics.values())


def save_metrics(metrics: EvalMetrics, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(metrics.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_metrics(path: str | Path) -> EvalMetrics:
    """Read and validate a metrics.json; a file of another schema version fails with its version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file; run `unimedvl evaluate` first")
    return EvalMetrics.model_validate_json(path.read_text())


# --- the keys -------------------------------------------------------------------------------------
# (key, meaning and rule). `<x>` is a placeholder family: <finding> a phantom finding type,
# <modality> a record modality, <source> a dataset slug, <qtype> a question type, <lang> a language.

FINDINGS = ("nodule", "consolidation", "effusion", "cardiomegaly", "pneumothorax", "lesion")

METRIC_KEYS: tuple[tuple[str, str], ...] = (
    # understanding, real test split + phantom benchmark
    ("vqa.closed.accuracy", "Closed questions (yes/no or options) of the QC'd test split: normalised exact match "
     "(lower case, punctuation and articles dropped; a yes/no answer is its first yes/no word; an option "
     "answer is its letter or the option text). LLaVA-Med's closed-set rule."),
    ("vqa.closed.blind.accuracy", "The same model and questions with the image removed from the context."),
    ("vqa.closed.majority.accuracy", "Always answering the most common training answer of each question type."),
    ("vqa.closed.mcnemar_p", "Exact McNemar p-value, model vs blind, on the paired closed questions (value = p)."),
    ("vqa.closed.by_source.<source>.accuracy", "vqa.closed.accuracy restricted to one source."),
    ("vqa.closed.by_modality.<modality>.accuracy", "vqa.closed.accuracy restricted to one modality."),
    ("vqa.closed.by_lang.<lang>.accuracy", "vqa.closed.accuracy for a language other than en (reported apart)."),
    ("vqa.open.exact", "Open questions of the test split: normalised exact match (LLaVA-Med's open-set rule, "
     "same normalisation as closed)."),
    ("vqa.open.recall", "Open questions: token recall, the share of ground-truth answer tokens found in the "
     "prediction (LLaVA-Med's open-set recall)."),
    ("vqa.open.blind.exact", "Open exact match of the blind baseline."),
    ("vqa.open.majority.exact", "Open exact match of the majority answer per question type."),
    ("vqa.open.by_source.<source>.exact", "vqa.open.exact restricted to one source."),
    ("vqa.open.by_modality.<modality>.exact", "vqa.open.exact restricted to one modality."),
    ("vqa.open.by_lang.<lang>.exact", "vqa.open.exact for a language other than en."),
    ("vqa.finding.accuracy", "Phantom benchmark, balanced yes/no finding-presence questions (closed rule)."),
    ("vqa.finding.blind.accuracy", "The same questions without the image."),
    ("vqa.finding.majority.accuracy", "The majority answer of the finding questions (0.5 by construction)."),
    ("vqa.finding.mcnemar_p", "Exact McNemar p-value, model vs blind, on the paired finding questions."),
    ("vqa.finding.by_finding.<finding>.accuracy", "vqa.finding.accuracy per finding type."),
    ("vqa.finding.margin_auroc", "ROC AUC of logit(Yes) - logit(No) at the first answer token on the finding questions: "
     "whether the image moves the decision at all, whichever way the greedy answer falls (0.5: it does not)."),
    ("vqa.finding.blind.margin_auroc", "vqa.finding.margin_auroc without the image (the question's wording alone)."),
    ("vqa.finding.by_finding.<finding>.margin_auroc", "vqa.finding.margin_auroc per finding type."),
    ("vqa.benchmark_open.exact", "Phantom benchmark open questions: normalised exact match."),
    ("vqa.benchmark_open.recall", "Phantom benchmark open questions: token recall."),
    ("vqa.benchmark_open.by_qtype.<qtype>.exact", "Phantom open exact match per question type (where, size, ...)."),
    # reports
    ("report.bleu1", "BLEU-1 (sacrebleu corpus BLEU with max n-gram order 1, 13a tokenisation, lower-cased), "
     "phantom report prompts + real test reports, 0-100."),
    ("report.bleu2", "BLEU-2 (max order 2), as report.bleu1."),
    ("report.bleu3", "BLEU-3 (max order 3), as report.bleu1."),
    ("report.bleu4", "BLEU-4 (max order 4), as report.bleu1."),
    ("report.rouge_l", "ROUGE-L F-measure (rouge-score, stemming on), mean over reports, 0-1."),
    ("report.meteor", "METEOR: always unavailable here (needs WordNet data, which cannot be installed offline)."),
    ("report.finding.precision", "Finding-level precision of the rule-based labeler (CheXpert-style: negation "
     "and uncertainty cues; a negated finding is absent, an uncertain one counts as absent) over the "
     "phantom findings vocabulary, generated vs reference report, micro-averaged."),
    ("report.finding.recall", "Finding-level recall, as report.finding.precision."),
    ("report.finding.f1", "Finding-level F1, as report.finding.precision."),
    ("report.real.bleu4", "BLEU-4 on the real test split's report records only."),
    ("report.real.rouge_l", "ROUGE-L on the real test split's report records only."),
    ("report.benchmark.bleu4", "BLEU-4 on the phantom benchmark's report prompts only."),
    ("report.benchmark.rouge_l", "ROUGE-L on the phantom benchmark's report prompts only."),
    # generation
    ("generation.faithfulness.mean", "Mean over findings of P(judge finds X | prompt asks for X) - "
     "P(judge finds X | prompt excludes X); a generator that paints every finding everywhere scores 0."),
    ("generation.faithfulness.<finding>", "Faithfulness of one finding."),
    ("generation.faithfulness.untrained.mean", "The same for the untrained model of the same preset and seed "
     "(cached, keyed on preset, seed and benchmark manifest)."),
    ("generation.faithfulness.permutation_p", "One-sided permutation p-value that the model's mean "
     "faithfulness exceeds the untrained model's (value = p)."),
    ("generation.domain_fd.<modality>", "Domain Frechet distance between generated and real test images of a "
     "modality in the judge's feature space (not FID: no Inception weights exist offline); only where both "
     "sets hold at least 2x the feature dimension, else insufficient_samples. Interval: estimate +- 1.96 "
     "bootstrap standard errors (a percentile interval is biased upward by resampled duplicates)."),
    ("generation.fid.<modality>", "Frechet distance in the feature space of a user-supplied TorchScript "
     "Inception network (evaluate.inception_torchscript); unavailable when none is given. Not claimed equal "
     "to reference FID implementations."),
    ("generation.judge_positive_rate", "Share of generated images in which the judge finds any finding."),
    ("sr.psnr", "Super-resolution pairs of the benchmark: PSNR (dB, data range 1) of the model's output."),
    ("sr.ssim", "Super-resolution: SSIM (scikit-image, data range 1; constant images handled) of the output."),
    ("sr.bicubic.psnr", "PSNR of the bicubic upsample of the low-resolution input (the baseline row)."),
    ("sr.bicubic.ssim", "SSIM of the bicubic upsample (the baseline row)."),
    ("cross_modal.psnr", "Cross-contrast pairs (T1 -> T2/FLAIR): PSNR of the model's output."),
    ("cross_modal.ssim", "Cross-contrast pairs: SSIM of the model's output."),
    ("reconstruction.psnr", "Reconstruction pairs: PSNR of the model's output."),
    ("reconstruction.ssim", "Reconstruction pairs: SSIM of the model's output."),
    ("counterfactual.in_region_change", "Counterfactual pairs: mean absolute change inside the removed finding's "
     "region (input vs output, 0-1)."),
    ("counterfactual.out_region_change", "Mean absolute change outside the region (should be small)."),
    ("counterfactual.locality", "in_region_change - out_region_change per pair, mean (> 0: the edit is local)."),
    # explanations (computed by the serving helper's explain code)
    ("explain.pointing_game", "Benchmark finding questions with the finding present that the model answered "
     "right: share whose explanation heatmap of the answer (the serving predictor's `explain_answer`, gradient x "
     "input over ViT patches) peaks inside the finding's region, dilated by half a ViT patch."),
    ("explain.pointing_game.random", "The chance rate: a uniformly random point's, the dilated region's share of "
     "the image (finding area / image area), averaged over the same questions."),
    ("explain.pointing_game.p_value", "Exact one-sided p-value of at least that many hits by chance, each question "
     "with its own chance rate (the Poisson-binomial tail; the binomial test when all rates are equal)."),
    # bookkeeping
    ("eval.items", "Answers and images the model produced in this run (baselines included); n = the same."),
)

RULES: tuple[tuple[str, str], ...] = (
    ("closed yes/no (`vqa_closed`, phantom finding presence)", "normalise both (lower case, punctuation and the "
     "articles a/an/the dropped); the first yes/no word of each (yes, true, present, positive / no, not, false, "
     "absent, negative, none) must agree; a prediction without one is wrong"),
    ("closed multiple choice (options A-E listed in the question)", "the option letter the prediction starts with, "
     "or the one option whose text it equals or alone contains, must be the reference's letter"),
    ("open (`vqa_open`)", "exact: normalised strings equal; recall: share of the reference's tokens (with "
     "multiplicity) present in the prediction"),
    ("report (`report`)", "BLEU-1..4 (sacrebleu, corpus level), ROUGE-L F (rouge-score, stemmed), finding "
     "precision / recall / F1 of the rule-based labeler; METEOR unavailable"),
    ("generation (`t2i` benchmark prompts)", "the judge's verdict per finding at its held-out Youden threshold"),
)

_PLACEHOLDER = re.compile(r"<[a-z]+>")
_PATTERNS = tuple(
    re.compile("^" + _PLACEHOLDER.sub(r"[a-z0-9_\\-]+", re.escape(k).replace(r"\<", "<").replace(r"\>", ">")) + "$")
    for k, _ in METRIC_KEYS
)


def is_known_key(key: str) -> bool:
    return any(p.match(key) for p in _PATTERNS)


def render_docs() -> str:
    """`docs/metrics.md`, generated from this module."""
    lines = [
        "# Evaluation metrics (`eval/metrics.json`)",
        "",
        "Generated from `src/unimedvl/evaluate/schema.py` by `python -m unimedvl.evaluate.schema > docs/metrics.md`;",
        "do not edit by hand (a test checks it is fresh).",
        "",
        f"`schema_version`: {SCHEMA_VERSION}. Benchmark protocol version: {PROTOCOL_VERSION}.",
        "",
        "Every metric is `{value, ci_low, ci_high, n, status, reason}`. `status` is `ok`, `unavailable` (the",
        "method cannot run here; `value` null) or `insufficient_samples` (fewer than `evaluate.min_n` items;",
        "`value` null). Intervals are 95% percentile bootstrap intervals over items (`evaluate.bootstrap`",
        "resamples); p-values have no interval. `inputs` records:",
        "",
    ]
    for name, field in Inputs.model_fields.items():
        lines.append(f"- `{name}`" + (f": {field.description}" if field.description else ""))
    lines += ["", "## Scoring rules per question type", "", "| question type | rule (LLaVA-Med's, no LLM judge) |", "|---|---|"]
    lines += [f"| {q} | {r} |" for q, r in RULES]
    lines += ["", "Sampling settings (`inputs.sampling`, from `evaluate.sampling`): "
              + ", ".join(f"`{k}`" for k in Sampling.model_fields) + ".", "",
              "`<finding>` is one of " + ", ".join(f"`{f}`" for f in FINDINGS)
              + "; `<modality>`, `<source>`, `<qtype>`, `<lang>` are the record's values.", "",
              "| key | meaning and rule |", "|---|---|"]
    for key, doc in METRIC_KEYS:
        lines.append(f"| `{key}` | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_docs(), end="")

"""The model card: Markdown written at promotion next to the model (and copied with it to S3).

Sections after Mitchell et al., "Model Cards for Model Reporting" (2019), and the Hugging Face model
card layout: intended use, data, training, evaluation, limitations, lineage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Params


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def render(name: str, version: str, params: Params, metrics, licences: dict[str, dict[str, Any]], tags: dict[str, str],
           run_id: str | None, decision: dict[str, Any]) -> str:
    lines = [f"# Model card: {name} version {version}", ""]
    lines += ["## Intended use", "",
              "A research model for medical image understanding (visual question answering, report drafting, "
              "explanation heatmaps) and generation (text-to-image, editing). **Research use only: not clinically "
              "validated, not a medical device, not for diagnosis or treatment decisions.** Generated images are "
              "synthetic and marked as such (PNG text chunk; DICOM `DERIVED`, conversion type `SYN`).", ""]
    lines += ["## Training data", "", "| dataset | SPDX licence | training records |", "|---|---|---|"]
    for ds, info in licences.items():
        lic = ", ".join(f"{k} ({v})" if len(info["licenses"]) > 1 else k for k, v in info["licenses"].items())
        lines.append(f"| {ds} | {lic} | {info['records']} |")
    if not licences:
        lines.append("| (no manifest found) | LicenseRef-unknown | 0 |")
    nc = tags.get("unimedvl.non_commercial") == "true"
    lines += ["", f"Non-commercial or unknown licences among the sources: **{'yes' if nc else 'no'}** "
              "(such a model is never promoted to an environment marked commercial).", ""]
    lines += ["## Training procedure", "",
              f"Curriculum `{params.train.curriculum}` (profile `{params.train.profile}`, model preset "
              f"`{params.train.preset}`), each stage starting from the previous one:", "",
              "| stage | steps | learning rate | mixture text-only / t2i / i2t / interleaved | frozen |", "|---|---|---|---|---|"]
    for stage in ("stage1", "stage2", "stage3"):
        s = getattr(params, stage)
        mix = s.mixture or {}
        mix_s = " / ".join(str(mix.get(k, "")) for k in ("text_only", "t2i", "i2t", "interleaved"))
        lines.append(f"| {stage} | {s.steps} | {s.lr} | {mix_s} | {', '.join(s.frozen or ())} |")
    lines += ["", "## Evaluation", ""]
    if metrics is not None:
        inp = metrics.inputs
        lines += [f"Protocol version {inp.protocol_version}; sampling {inp.sampling.model_dump(mode='json')}; "
                  f"test manifest `{inp.test_manifest_sha256}`, benchmark manifest `{inp.benchmark_manifest_sha256}`, "
                  f"judge `{inp.judge_sha256}`. Intervals are 95% bootstrap intervals unless the metric says otherwise "
                  "(see docs/metrics.md).", "",
                  "| metric | value | 95% interval | n | status |", "|---|---|---|---|---|"]
        for key, m in sorted(metrics.metrics.items()):
            ci = f"[{_fmt(m.ci_low)}, {_fmt(m.ci_high)}]" if m.ci_low is not None else ""
            status = m.status.value + (f": {m.reason}" if m.reason else "")
            lines.append(f"| {key} | {_fmt(m.value)} | {ci} | {m.n} | {status} |")
    lines += ["", "### Promotion gates", "", "| gate | passed | detail |", "|---|---|---|"]
    for g in decision.get("gates", []):
        lines.append(f"| {g['gate']} | {'yes' if g['passed'] else 'no'} | {g.get('reason') or ''} |")
    lines += ["", "## Known limitations", "",
              "- 2D only: volumes were sliced into 2D images at ingest; no 3D context.",
              "- Source bias: a handful of public sources and modalities; performance on other scanners, "
              "populations and protocols is unknown.",
              "- Phantom data: part of the training and the benchmark are procedural phantoms with exact ground "
              "truth; scores on them overstate performance on real scans.",
              "- Small model: the default preset is tiny (CPU); its answers and images are not clinically meaningful.",
              "- Explanation heatmaps (gradient x input) show sensitivity, not causal evidence.", ""]
    lines += ["## Lineage", "",
              f"- data manifest sha256: `{tags.get('unimedvl.data_manifest_sha256')}`",
              f"- git commit: `{tags.get('unimedvl.git_commit')}`",
              f"- params hash: `{tags.get('unimedvl.params_hash')}`; code hash: `{tags.get('unimedvl.code_hash')}`",
              f"- MLflow run (stage3, model folder): `{run_id}`",
              f"- evaluation inputs key: `{tags.get('unimedvl.eval.inputs_key')}`",
              f"- storage: `{decision.get('storage_uri')}` (uploaded: {decision.get('uploaded')})", ""]
    return "\n".join(lines)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

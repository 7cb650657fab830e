"""What a KFP component does between its artefacts and the step's library function.

Each component body is one call into this module; each function here is one call into the library
function the CLI verb and the DVC stage call (`data.ingest.ingest`, `qc.run_qc`,
`train.stages.run_stage`), plus the KFP bookkeeping: the run id in the environment, params from the
form, `Output[Metrics]` values (and a file at `metrics.path`, without which KFP never caches the task),
a self-contained HTML report.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .params import effective, resolve


def enter_run(run_id: str) -> None:
    """One MLflow parent run per pipeline run: its key (env UNIMEDVL_RUN_ID, read by unimedvl.tracking)
    is the KFP run id (DESIGN section 2)."""
    if run_id:
        os.environ["UNIMEDVL_RUN_ID"] = run_id


def write_metrics(metrics, values: dict[str, Any]) -> dict[str, float]:
    """Log every finite number of `values` (flattened, dotted keys) on a KFP Metrics artefact and write
    them to `metrics.path` too."""
    from .params import flatten

    flat = {k: float(v) for k, v in flatten(values).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    for k, v in sorted(flat.items()):
        metrics.log_metric(k, v)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    return flat


def inline_html(index: Path) -> str:
    """The report's index.html with its figures embedded, so the KFP UI renders it as one file."""
    page = index.read_text(encoding="utf-8")

    def embed(m: re.Match) -> str:
        path = index.parent / m.group(2)
        if not path.is_file():
            return m.group(0)
        return f'{m.group(1)}"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    return re.sub(r"""(src=)["']([^"':]+\.png)["']""", embed, page)


def ingest_step(dataset, metrics, values: dict[str, Any], params_override: str, data_version: str, data_repo: str,
                run_id: str) -> dict[str, Any]:
    """ingest: the shards of `ingest.sources` (as `dvc repro`), or `data/ingest` at git rev `data_version`."""
    from ..data.ingest import ingest, log_run
    from ..data.shards import read_manifest
    from .data_version import fetch_output

    enter_run(run_id)
    out = Path(dataset.path)
    if data_version:
        fetch_output(data_repo, data_version, "data/ingest", out)
    else:
        params = effective(resolve(values, params_override))
        result = ingest(list(params.ingest.sources), out, params.ingest)
        if params.tracking.enabled:
            log_run(out, params.ingest, result, tracking=params.tracking)
    manifest = read_manifest(out)
    dataset.metadata.update({"data_version": data_version or "ingested", "records": manifest.get("accepted"),
                             "pipeline_run_id": run_id})
    write_metrics(metrics, {k: manifest.get(k) for k in ("accepted", "quarantined", "seen", "distinct_images")})
    return manifest


def qc_step(ingested: str, dataset, report, metrics, values: dict[str, Any], params_override: str,
            data_version: str, data_repo: str, run_id: str) -> dict[str, Any]:
    """qc: `run_qc` on the ingested shards, or `data/qc` + its report at git rev `data_version`."""
    import tempfile

    from ..qc import run_qc
    from .data_version import fetch_output

    enter_run(run_id)
    out = Path(dataset.path)
    with tempfile.TemporaryDirectory(prefix="unimedvl-qc-") as tmp:
        report_dir, metrics_json = Path(tmp) / "report", Path(tmp) / "metrics.json"
        if data_version:
            fetch_output(data_repo, data_version, "data/qc", out)
            fetch_output(data_repo, data_version, "qc/report", report_dir)
            fetch_output(data_repo, data_version, "qc/metrics.json", metrics_json)
            m = json.loads(metrics_json.read_text())
        else:
            cfg = effective(resolve(values, params_override)).qc
            m = run_qc(ingested, out, cfg, report_dir=report_dir, metrics_path=metrics_json)
        Path(report.path).parent.mkdir(parents=True, exist_ok=True)
        Path(report.path).write_text(inline_html(report_dir / "index.html"), encoding="utf-8")
    dataset.metadata.update({"data_version": data_version or "qc", "records": m.get("accepted")})
    write_metrics(metrics, {k: m.get(k) for k in ("seen", "accepted", "quarantined", "quarantined_fraction", "ge", "dedup")})
    return m


def heldout_step(data, dataset, metrics, values: dict[str, Any], params_override: str, run_id: str) -> dict[str, Any]:
    """heldout: the fixed held-out set of this data version (`train.heldout.run_heldout`)."""
    from ..train.heldout import run_heldout

    enter_run(run_id)
    out = Path(dataset.path)
    summary = run_heldout(data.path, out, resolve(values, params_override), metrics_path=out.parent / f".{out.name}.metrics.json")
    write_metrics(metrics, {"n": summary.get("n"), "families": {f: {"n": v.get("n")} for f, v in summary.get("families", {}).items()}})
    return summary


def train_step(stage: str, data, previous, model, metrics, values: dict[str, Any], params_override: str,
               run_id: str, *, heldout=None, executor: str = "local", image: str = "") -> dict[str, Any]:
    """tokenizer / autoencoder / stage1-3 (`data`, `previous`: input artefacts; `previous` None for the
    tokenizer): `run_stage` here, or, for stage1-3 with executor `rayjob`, in a KubeRay RayJob that
    leaves the checkpoint at the Model artefact's s3:// URI."""
    from ..train.stages import run_stage

    enter_run(run_id)
    params = resolve(values, params_override)
    out = Path(model.path)
    if executor == "rayjob" and stage.startswith("stage"):
        from .rayjob import run_stage_on_ray

        summary = run_stage_on_ray(stage, data.uri, previous.uri, model.uri, params, image=image, run_id=run_id,
                                   heldout_uri=heldout.uri if heldout else None)
        # The RayJob wrote the folder to the artefact's URI; the launcher uploads nothing over it.
        out.mkdir(parents=True, exist_ok=True)
    else:
        ckpt = out.parent / f".{out.name}-checkpoints"  # beside the artefact: a retried task resumes
        summary = run_stage(stage, data.path, out, params, prev_dir=previous.path if previous else None, progress=False,
                            checkpoint_dir=ckpt if stage.startswith("stage") else None,
                            metrics_path=out.parent / f".{out.name}.metrics.json",
                            **({"heldout_dir": heldout.path} if heldout is not None else {}))
        shutil.rmtree(ckpt, ignore_errors=True)
    model.metadata.update({"stage": stage, "profile": params.train.profile,
                           **({"run_id": summary["run_id"]} if summary.get("run_id") else {}),
                           **({"rayjob": summary["rayjob"]} if summary.get("rayjob") else {})})
    write_metrics(metrics, {k: summary.get(k) for k in ("steps", "heldout_start", "heldout_end", "vocab_size", "wall_s",
                                                        "latent_scale", "latent_shift")})
    return summary


def close_run(run_id: str, failed: bool = False) -> list[tuple[str | None, str]]:
    """The ExitHandler's step: close this KFP run's MLflow parent run (key = the run id) and the ablation
    branch's (key `<run id>:ablation`, see steps_eval.ablation_step) with `unimedvl.tracking.finish_pipeline`."""
    from ..config import load_params
    from ..tracking import finish_pipeline
    from .params import params_file

    if not run_id:
        return []
    tracking = load_params(params_file()).tracking
    out = []
    for key in (run_id, f"{run_id}:ablation"):
        enter_run(key)
        parent, status = finish_pipeline(tracking, failed=failed)
        if parent:
            out.append((parent, status))
    enter_run(run_id)
    return out

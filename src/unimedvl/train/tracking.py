"""MLflow tracking: one parent run per pipeline run, one child run per stage.

The parent run's key (tag `unimedvl.pipeline_key`) says which pipeline run a stage belongs to:

* under Kubeflow Pipelines: `kfp:<run id>` (env `KFP_RUN_ID`, which the KFP component sets from
  `{{workflow.uid}}` / `dsl.PIPELINE_JOB_ID_PLACEHOLDER`);
* otherwise (DVC, the CLI): `dvc:<git commit>:<data manifest sha256>`: the same code on the same
  data is the same pipeline run, so the stages of one `dvc repro` (each its own process) find the
  same parent, and a re-run after a code or data change gets a new one. `UNIMEDVL_PIPELINE_KEY`
  overrides it.

The tracking URI: env `MLFLOW_TRACKING_URI`, else `tracking.uri` in params.yaml, else SQLite in the
repository folder (`sqlite:///<repo>/mlflow.db`); an `mlflow server` URI works the same.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data.shards import manifest_sha256  # noqa: F401 - stages import it from here

PIPELINE_KEY_TAG = "unimedvl.pipeline_key"
STAGE_TAG = "unimedvl.stage"
PARENT_TAG = "mlflow.parentRunId"


def repo_root(start: Path | None = None) -> Path:
    """The folder holding params.yaml / .git above `start` (or the working directory)."""
    p = (start or Path.cwd()).resolve()
    for cand in (p, *p.parents):
        if (cand / "params.yaml").exists() or (cand / ".git").exists():
            return cand
    return p


def tracking_uri(configured: str | None = None, root: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{repo_root(root) / 'mlflow.db'}"


def git_commit(root: Path | None = None) -> str:
    """HEAD's commit read from .git (no git process), or env UNIMEDVL_GIT_COMMIT, or 'unknown'."""
    if os.environ.get("UNIMEDVL_GIT_COMMIT"):
        return os.environ["UNIMEDVL_GIT_COMMIT"]
    git = repo_root(root) / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(None, 1)[1]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
        return "unborn"
    except OSError:
        return "unknown"


def pipeline_key(data_dir: str | Path, root: Path | None = None) -> str:
    if os.environ.get("UNIMEDVL_PIPELINE_KEY"):
        return os.environ["UNIMEDVL_PIPELINE_KEY"]
    if os.environ.get("KFP_RUN_ID"):
        return f"kfp:{os.environ['KFP_RUN_ID']}"
    return f"dvc:{git_commit(root)}:{manifest_sha256(data_dir)}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> {"a.b.c": "value"} (MLflow params are flat strings, at most 6000 chars)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = (json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v))[:6000]
    return out


class Tracker:
    """Thin wrapper over MlflowClient; every method is a no-op when tracking is disabled."""

    def __init__(self, uri: str, experiment: str = "unimedvl", enabled: bool = True):
        self.enabled = enabled
        self.uri = uri
        if not enabled:
            self.client = None
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)

    def parent_run(self, key: str, tags: dict[str, str]) -> str | None:
        """The parent run of pipeline `key`, created on first use."""
        if not self.enabled:
            return None
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{key}'",
                                        max_results=50)
        for r in found:
            if PARENT_TAG not in r.data.tags:
                return r.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=f"pipeline {key[:40]}",
                                     tags={PIPELINE_KEY_TAG: key, **tags})
        return run.info.run_id

    def child_run(self, parent: str | None, stage: str, params: dict[str, Any], tags: dict[str, str]) -> str | None:
        if not self.enabled:
            return None
        t = {STAGE_TAG: stage, **tags}
        if parent:
            t[PARENT_TAG] = parent
        run = self.client.create_run(self.experiment_id, run_name=stage, tags=t)
        self.log_params(run.info.run_id, flatten(params))
        return run.info.run_id

    def log_params(self, run_id: str | None, params: dict[str, str]) -> None:
        if not self.enabled or not run_id:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str | None, rows: Iterable[tuple[int, dict[str, float]]]) -> None:
        """Many steps at once: [(step, {name: value})]."""
        if not self.enabled or not run_id:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, int(step)) for step, d in rows for k, v in d.items()
                   if v is not None and not math.isnan(float(v))]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])

    def log_artifact(self, run_id: str | None, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.enabled or not run_id:
            return
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self.enabled and run_id:
            self.client.set_terminated(run_id, status)


class SystemMetrics:
    """MLflow's system metrics monitor (CPU, memory, disk, network; GPU where present) on a run."""

    def __init__(self, uri: str, run_id: str | None, interval: float = 2.0, enabled: bool = True):
        self.monitor = None
        if not (enabled and run_id):
            return
        try:
            import mlflow
            from mlflow.system_metrics.system_metrics_monitor import (
                SystemMetricsMonitor,
            )

            mlflow.set_tracking_uri(uri)
            self.monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1)
            self.monitor.start()
        except Exception:  # noqa: BLE001 - system metrics are a nicety; never fail a training run over them
            self.monitor = None

    def stop(self) -> None:
        if self.monitor is not None:
            try:
                self.monitor.finish()
            except Exception:  # noqa: BLE001, S110 - best effort at shutdown
                pass


def loss_curves_png(rows: list[dict[str, float]], heldout: list[dict[str, float]], out: Path, title: str) -> Path:
    """Training ce / mse / total per step (and held-out points) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes, ("loss", "ce", "mse"), strict=True):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], lw=0.8, label="train")
        if heldout:
            ax.plot([h["step"] for h in heldout], [h[key] for h in heldout], "o-", label="held-out")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def image_grid_png(images: list, captions: list[str], out: Path) -> Path:
    """Images [3, H, W] in [-1, 1] side by side with their prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.8))
    axes = [axes] if n == 1 else list(axes)
    for ax, img, cap in zip(axes, images, captions, strict=True):
        arr = ((img.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
        ax.imshow(arr)
        ax.set_title(cap[:28], fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out

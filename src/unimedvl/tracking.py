"""MLflow tracking for every step: one parent run per pipeline run, one child run per step, one experiment.

Every step (ingest, qc, heldout, tokenizer, autoencoder, stage1-3, benchmark, judge, evaluate, register,
promote) logs through this module, so the MLflow UI shows one parent per pipeline run with each step
under it::

    from unimedvl.tracking import step_run

    with step_run("evaluate", params={"evaluate": cfg.model_dump()}, data="data/qc") as run:
        run.log_metrics({"vqa.closed.accuracy": 0.71})       # step 0 unless step= is given
        run.log_artifact("eval/metrics.json")                # a second call for the same file is skipped
        run.log_dataset("data/qc", context="test")           # mlflow.log_input of the shards manifest
        run.run_id, run.parent_id                            # None when tracking is disabled

Leaving the block normally marks the child FINISHED; an exception marks it FAILED (KeyboardInterrupt:
KILLED) and re-raises. Either way the parent's status becomes the worst status among the latest child
of each step (FAILED > KILLED > RUNNING > FINISHED), so a pipeline whose steps all finished is FINISHED.

Which parent. The pipeline run's key is env `UNIMEDVL_RUN_ID` (KFP sets it from its run id, `make repro`
exports a fresh one); a bare `dvc repro` (each stage its own process) falls back to
`dvc:<commit>:<params.yaml hash>:<data id>`, where the data id is the sha256 of the ingest manifest
(a QC'd data set records its input's sha256, so qc and the training stages agree). A step that finds
its own child already FINISHED under the newest parent of that key opens a new parent, tagged
`unimedvl.previous_parent` with the old one: re-running a step is a new pipeline run, never a tenth
child of the same parent. ingest, whose data id only exists once it has written its manifest, passes
`defer_parent=True`: its child is attached to the parent when it exits.

KFP's `ExitHandler` closes the parent with `finish_pipeline(failed=...)`.

Killed runs. A child of the same step still RUNNING under the parent when the step starts again belongs
to a process that died (SIGKILL, OOM, a lost node): it is marked KILLED and the new child carries tag
`unimedvl.retry_of` (and `run.retry_of`) so training can copy the killed run's curve onto it; a FAILED
one is linked the same way.

Tags on every child: `mlflow.source.git.commit`, `mlflow.source.name` (the entry point), `mlflow.source.type`,
`mlflow.user`, `unimedvl.step`, `unimedvl.pipeline_key`, the host and process id.

The tracking URI: env `MLFLOW_TRACKING_URI`, else `tracking.uri` in params.yaml, else SQLite in the
repository folder (`sqlite:///<repo>/mlflow.db`, artefacts in `<repo>/mlruns`); an `mlflow server` URI
works the same. MLflow's own client (`MlflowClient`) does the work; this module only decides names and
lifecycle.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .data.shards import manifest_sha256, read_manifest

RUN_ID_ENV = "UNIMEDVL_RUN_ID"
PIPELINE_KEY_TAG = "unimedvl.pipeline_key"
ROLE_TAG = "unimedvl.role"  # "pipeline" on parents
STEP_TAG = "unimedvl.step"
PARENT_TAG = "mlflow.parentRunId"
PREVIOUS_PARENT_TAG = "unimedvl.previous_parent"
RETRY_OF_TAG = "unimedvl.retry_of"
HOST_TAG, PID_TAG = "unimedvl.host", "unimedvl.pid"
# Worst first: the parent takes the first of these that any step's latest child has.
_SEVERITY = ("FAILED", "KILLED", "RUNNING", "SCHEDULED", "FINISHED")


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
        for base in (git, _common_dir(git)):
            if (base / ref).exists():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        return "unborn"
    except OSError:
        return "unknown"


def _common_dir(git: Path) -> Path:
    # A worktree's branch refs live in the main repository's .git (named by `commondir`).
    f = git / "commondir"
    return (git / f.read_text().strip()).resolve() if f.exists() else git


def data_id(data_dir: str | Path | None) -> str:
    """The pipeline's data identity: the ingest manifest's sha256, read through a QC'd set's record of
    its input (`input_manifest_sha256`), so every step of one run names the same data."""
    if data_dir is None:
        return "none"
    try:
        m = read_manifest(Path(data_dir))
    except (OSError, ValueError, KeyError):
        return manifest_sha256(Path(data_dir))
    return m.get("input_manifest_sha256") or manifest_sha256(Path(data_dir))


def params_file_hash(root: Path | None = None) -> str:
    """sha256 (12 hex) of params.yaml's content, plus the profile env var, which changes what runs."""
    p = repo_root(root) / "params.yaml"
    blob = p.read_bytes() if p.exists() else b""
    return hashlib.sha256(blob + os.environ.get("UNIMEDVL_PROFILE", "").encode()).hexdigest()[:12]


def pipeline_key(data_dir: str | Path | None = None, root: Path | None = None) -> str:
    if os.environ.get(RUN_ID_ENV):
        return os.environ[RUN_ID_ENV]
    return f"dvc:{git_commit(root)[:12]}:{params_file_hash(root)}:{data_id(data_dir)[:12]}"


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


def source_tags(step: str) -> dict[str, str]:
    """MLflow's standard source tags plus where this process runs (to tell a dead run from a live one)."""
    from mlflow.utils import mlflow_tags as t

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    entry = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500] if sys.argv and sys.argv[0] else f"unimedvl {step}"
    return {t.MLFLOW_GIT_COMMIT: git_commit(), t.MLFLOW_SOURCE_NAME: entry, t.MLFLOW_SOURCE_TYPE: "JOB",
            t.MLFLOW_USER: user, STEP_TAG: step, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


class Tracker:
    """Thin wrapper over MlflowClient for code that only has a run id (Ray workers); every method is a
    no-op when tracking is disabled."""

    def __init__(self, uri: str, experiment: str = "unimedvl", enabled: bool = True):
        self.enabled = enabled
        self.uri = uri
        self.client = None
        if not enabled:
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is not None:
            self.experiment_id = exp.experiment_id
        else:
            location = None
            if uri.startswith("sqlite:///"):  # artefacts next to the database, wherever the command runs
                location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    def log_params(self, run_id: str | None, params: dict[str, str]) -> None:
        if not self.enabled or not run_id:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str | None, rows: Iterable[tuple[int, dict[str, float]]]) -> None:
        """Many steps at once: [(step, {name: value})]; NaN and None are left out."""
        if not self.enabled or not run_id:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, int(step)) for step, d in rows for k, v in d.items()
                   if v is not None and not math.isnan(float(v))]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])


def _alive(run) -> bool:
    """Whether the process that owns a RUNNING run still exists (only knowable on the same host)."""
    tags = run.data.tags
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    pid = int(tags[PID_TAG])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class StepRun:
    """One step's child run. With tracking disabled every method is a no-op and `run_id` is None."""

    def __init__(self, tracker: Tracker, step: str, run_id: str | None, parent_id: str | None, key: str,
                 retry_of: str | None = None):
        self.tracker, self.step, self.run_id, self.parent_id, self.key = tracker, step, run_id, parent_id, key
        self.retry_of = retry_of
        self._logged: set[str] = set()

    @property
    def client(self):
        return self.tracker.client

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_params(self, params: dict[str, Any]) -> None:
        self.tracker.log_params(self.run_id, flatten(params))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.tracker.log_metrics(self.run_id, [(step, metrics)])

    def log_metric_rows(self, rows: Iterable[tuple[int, dict[str, float]]]) -> None:
        self.tracker.log_metrics(self.run_id, rows)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> str | None:
        """Log a file or folder once per run; returns its artefact path (None if skipped or disabled)."""
        if not self.enabled:
            return None
        path = Path(path)
        dest = f"{artifact_path}/{path.name}" if artifact_path and not path.is_dir() else (artifact_path or path.name)
        if dest in self._logged:
            return None
        self._logged.add(dest)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        return dest

    def log_dataset(self, data_dir: str | Path, context: str = "train", name: str | None = None) -> None:
        """`mlflow.log_input` of a shard set: its manifest is the source, its sha256 the digest, its counts the profile."""
        if not self.enabled:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.entities import Dataset, DatasetInput, InputTag

        data_dir = Path(data_dir)
        manifest = data_dir / "manifest.json"
        with warnings.catch_warnings():  # two equivalent local sources are registered; either is right
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(manifest.resolve()))
        try:
            m = read_manifest(data_dir)
            profile = json.dumps({k: m.get(k) for k in ("step", "accepted", "quarantined", "by_split", "by_task")})
        except (OSError, ValueError, KeyError):
            profile = None
        entity = Dataset(name=name or data_dir.name, digest=manifest_sha256(data_dir)[:16], source_type=source._get_source_type(),
                         source=source.to_json(), profile=profile)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])

    def copy_metrics_from(self, run_id: str, names: Iterable[str], before_step: int) -> int:
        """Copy another run's points (steps < before_step) onto this one: a resumed run's full curve."""
        if not self.enabled:
            return 0
        rows = [(m.step, {name: m.value}) for name in names for m in self.client.get_metric_history(run_id, name)
                if m.step < before_step]
        self.log_metric_rows(rows)
        return len(rows)


# ----------------------------------------------------------------------------------------------------
# Parents and children.


def _search(tracker: Tracker, filt: str, order: list[str] | None = None):
    return tracker.client.search_runs([tracker.experiment_id], filter_string=filt, max_results=1000,
                                      order_by=order or ["attributes.start_time DESC"])


def _create_parent(tracker: Tracker, key: str, previous: str | None, data_dir) -> str:
    tags = {PIPELINE_KEY_TAG: key, ROLE_TAG: "pipeline", "mlflow.source.git.commit": git_commit(),
            "unimedvl.params_hash": params_file_hash(), "unimedvl.data_id": data_id(data_dir)}
    if previous:
        tags[PREVIOUS_PARENT_TAG] = previous
    return tracker.client.create_run(tracker.experiment_id, run_name=f"pipeline {key[:48]}", tags=tags).info.run_id


def _children(tracker: Tracker, parent: str, step: str | None = None):
    filt = f"tags.`{PARENT_TAG}` = '{parent}'" + (f" and tags.`{STEP_TAG}` = '{step}'" if step else "")
    return _search(tracker, filt)


def resolve_parent(tracker: Tracker, key: str, step: str, data_dir=None) -> str:
    """The newest parent of `key`, or a new one when it has none or already holds a FINISHED `step`."""
    found = _search(tracker, f"tags.`{PIPELINE_KEY_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'pipeline'")
    if not found:
        return _create_parent(tracker, key, None, data_dir)
    parent = found[0].info.run_id
    if any(c.info.status == "FINISHED" for c in _children(tracker, parent, step)):
        return _create_parent(tracker, key, parent, data_dir)
    return parent


def _close_dead_siblings(tracker: Tracker, parent: str, step: str, me: str | None) -> str | None:
    """Mark this step's dead RUNNING children KILLED; return the newest failed or killed one."""
    link = None
    for c in _children(tracker, parent, step):
        if c.info.run_id == me:
            continue
        if c.info.status == "RUNNING" and not _alive(c):
            tracker.client.set_terminated(c.info.run_id, "KILLED")
            link = link or c.info.run_id
        elif c.info.status in ("FAILED", "KILLED"):
            link = link or c.info.run_id
    return link


def update_parent_status(tracker: Tracker, parent: str) -> str:
    """Parent status = the worst among the latest child of each step (retried ones do not count)."""
    latest: dict[str, str] = {}
    for c in _children(tracker, parent):  # newest first
        latest.setdefault(c.data.tags.get(STEP_TAG, c.info.run_name), c.info.status)
    status = next((s for s in _SEVERITY if s in latest.values()), "FINISHED")
    if status == "RUNNING":
        tracker.client.update_run(parent, status="RUNNING")
    else:
        tracker.client.set_terminated(parent, status)
    return status


def _tracking_cfg(tracking):
    if tracking is not None:
        return tracking
    from .config import load_params

    return load_params(repo_root() / "params.yaml").tracking


@contextlib.contextmanager
def step_run(step: str, *, params: dict[str, Any] | None = None, data: str | Path | None = None, tracking=None,
             tags: dict[str, Any] | None = None, defer_parent: bool = False, enabled: bool | None = None,
             dataset_context: str | None = "train") -> Iterator[StepRun]:
    """The child run of `step` under this pipeline run's parent (see the module docstring).

    `params` (nested dict) are logged flattened; `data` is the step's input shard folder: it names the
    pipeline's data for the parent key and, unless `dataset_context` is None, is logged as a dataset
    input. `tracking` is the `tracking` section (`TrackingConfig`); None reads the repository's
    params.yaml. `enabled=False` (or `tracking.enabled: false`) yields a no-op run.
    """
    cfg = _tracking_cfg(tracking)
    on = cfg.enabled if enabled is None else enabled
    tracker = Tracker(tracking_uri(cfg.uri), cfg.experiment, enabled=on)
    if not on:
        yield StepRun(tracker, step, None, None, "")
        return
    key = pipeline_key(data)
    parent = None if defer_parent else resolve_parent(tracker, key, step, data)
    child_tags = {**source_tags(step), PIPELINE_KEY_TAG: key, **{k: str(v) for k, v in (tags or {}).items()}}
    if parent:
        child_tags[PARENT_TAG] = parent
    retry_of = _close_dead_siblings(tracker, parent, step, None) if parent else None
    if retry_of:
        child_tags[RETRY_OF_TAG] = retry_of
    run_id = tracker.client.create_run(tracker.experiment_id, run_name=step, tags=child_tags).info.run_id
    run = StepRun(tracker, step, run_id, parent, key, retry_of)
    if parent:
        tracker.client.update_run(parent, status="RUNNING")
    if params:
        run.log_params(params)
    if data is not None and dataset_context and (Path(data) / "manifest.json").exists():
        run.log_dataset(data, dataset_context)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if run.parent_id is None:  # deferred: the data id exists now
            run.key = pipeline_key(data)
            run.parent_id = resolve_parent(tracker, run.key, step, data)
            run.set_tags({PARENT_TAG: run.parent_id, PIPELINE_KEY_TAG: run.key})
            link = _close_dead_siblings(tracker, run.parent_id, step, run_id)
            if link:
                run.set_tags({RETRY_OF_TAG: link})
        tracker.client.set_terminated(run_id, status)
        update_parent_status(tracker, run.parent_id)


def finish_pipeline(tracking=None, data: str | Path | None = None, failed: bool = False) -> tuple[str | None, str]:
    """Close this pipeline run's parent (KFP's ExitHandler calls it): the worst status among the latest
    child of each step, or FAILED when the pipeline itself failed. Returns (parent id, status)."""
    cfg = _tracking_cfg(tracking)
    if not cfg.enabled:
        return None, "DISABLED"
    tracker = Tracker(tracking_uri(cfg.uri), cfg.experiment)
    key = pipeline_key(data)
    found = _search(tracker, f"tags.`{PIPELINE_KEY_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'pipeline'")
    if not found:
        return None, "NONE"
    parent = found[0].info.run_id
    status = update_parent_status(tracker, parent)
    if failed and status != "FAILED":
        tracker.client.set_terminated(parent, "FAILED")
        status = "FAILED"
    return parent, status


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

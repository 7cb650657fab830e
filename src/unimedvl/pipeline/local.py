"""`unimedvl pipeline run-local`: the whole Kubeflow DAG on this machine with `kfp.local`.

`SubprocessRunner(use_venv=False)` runs each component in this interpreter's environment (the
project's own), with the same artefact passing as on a cluster; the training stages run in-process
(`pipeline_train_executor=local`), as `dvc repro` runs them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def import_pipeline(retries: int | None = None):
    """The pipeline from `pipelines/` at the repository root (compile-time code, not in the image);
    `retries` given: built with that many retries per task."""
    from ..tracking import repo_root

    root = str(repo_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    from pipelines.unimedvl import build, unimedvl

    return unimedvl if retries is None else build(retries)


def run_local(pipeline_root: str | Path, arguments: dict[str, Any] | None = None,
              params: str | Path | None = None, pipeline=None) -> Path:
    """Run the pipeline (or another one built from the same components) with `arguments` (form values)
    and return this run's folder under `pipeline_root` (one sub-folder per task, one per output artefact)."""
    from kfp import local

    from ..tracking import repo_root

    from .params import resolve

    args = {**({} if pipeline else {"pipeline_train_executor": "local"}), **(arguments or {})}
    # Bad form values fail here, in one line, not as the first task's traceback.
    resolve({k: v for k, v in args.items() if k not in ("params_override", "data_version", "run_ablation")},
            args.get("params_override", ""), Path(params) if params else None)
    pipeline = pipeline or import_pipeline(retries=0)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # Components read params.yaml from here: the one given, else this repository's.
    saved = os.environ.get("UNIMEDVL_PARAMS")
    os.environ["UNIMEDVL_PARAMS"] = str(Path(params or repo_root() / "params.yaml").resolve())
    before = {p.name for p in root.iterdir()}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    t0 = time.perf_counter()
    try:
        pipeline(**args)
    finally:
        if saved is None:
            os.environ.pop("UNIMEDVL_PARAMS", None)
        else:
            os.environ["UNIMEDVL_PARAMS"] = saved
    new = sorted((p for p in root.iterdir() if p.name not in before and p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"kfp.local wrote no run folder under {root}")
    (new[-1] / "wall_s.txt").write_text(f"{time.perf_counter() - t0:.2f}\n")
    return new[-1]

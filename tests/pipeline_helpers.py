"""Shared by the pipeline tests and benchmarks/bench_pipeline.py: `dvc repro` of the smoke profile in a
fresh copy of the repository (the same setup as tests/e2e/test_cli.py's repro test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def smoke_params(phantoms: int = 120, phantoms_only: bool = False) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["profile"] = "smoke"
    params["ingest"]["phantom"]["count"] = phantoms
    if phantoms_only:
        params["ingest"]["sources"] = [{"name": "phantom"}]
        from tests.pipeline_fixture import SPLITS

        params["ingest"]["split_fractions"] = dict(SPLITS)
    return params


def dvc_repro_smoke(work: Path, key: str, phantoms: int = 120, env_extra: dict | None = None,
                    phantoms_only: bool = False) -> Path:
    """A git + DVC repository at `work` with this repo's dvc.yaml, src/ and the smoke params, reproduced."""
    work.mkdir(parents=True)
    for name in ("dvc.yaml", "src", "infra"):  # promote reads the staging overlay under infra/
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    (work / "params.yaml").write_text(yaml.safe_dump(smoke_params(phantoms, phantoms_only), sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "UNIMEDVL_SECRET_KEY": key, **(env_extra or {})}
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)
    done = subprocess.run([str(BIN / "dvc"), "repro"], cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"dvc repro failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return work

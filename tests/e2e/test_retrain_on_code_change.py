"""Changing a line of training code and running `dvc repro stage1` retrains from step 0 (the
checkpoint key holds the code's hash), in a temporary copy of the repository on the smoke profile."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # trains under local Ray (params.yaml: backend ray): one Ray at a time
def test_code_change_retrains_stage1_from_step_0(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "src"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["profile"] = "smoke"
    params["ingest"]["sources"] = [{"name": "phantom"}]
    params["ingest"]["phantom"]["count"] = 120
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The copy's code, not the installed one, is what runs.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(work / "src"),
           "UNIMEDVL_SECRET_KEY": "repro-key", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # pragma: allowlist secret
    env.pop("UNIMEDVL_PROFILE", None)
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)

    def repro():
        done = subprocess.run([str(BIN / "dvc"), "repro", "stage1"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=1200)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr, json.loads((work / "models" / "stage1.metrics.json").read_text())

    def weights():
        return hashlib.sha256((work / "models" / "stage1" / "ema.safetensors").read_bytes()).hexdigest()

    _, first = repro()
    before = weights()
    loop = work / "src" / "unimedvl" / "train" / "loop.py"
    text = loop.read_text()
    assert "BETAS = (0.9, 0.95)" in text
    loop.write_text(text.replace("BETAS = (0.9, 0.95)", "BETAS = (0.8, 0.95)"))
    log, second = repro()
    assert first["start_step"] == 0 and second["start_step"] == 0 and second["steps"] == first["steps"]
    if second["checkpoint_dir"] == first["checkpoint_dir"]:  # same params and inputs: only the code differs
        assert "ignoring the checkpoint" in log and "training starts at step 0" in log, log[-3000:]
    assert second["code_sha256"] != first["code_sha256"] and weights() != before

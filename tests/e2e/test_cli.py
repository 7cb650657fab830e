"""The command line as a user runs it: real subprocesses, real exit codes, real messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import write_png

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def run(*args, cwd=None, env_extra=None):
    env = {**os.environ, "UNIMEDVL_SECRET_KEY": "cli-test-key", **(env_extra or {})}  # pragma: allowlist secret
    return subprocess.run([str(BIN / "unimedvl"), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def imagefolder(root: Path, bad: bool = False) -> Path:
    rows = ["image,text,split"]
    for i in range(4):
        write_png(root / f"img{i}.png", seed=i)
        rows.append(f"img{i}.png,Chest radiograph number {i}.,{['train', 'val', 'test', 'train'][i]}")
    if bad:
        rows = ["image,text,split"] + [f"../escape{i}.png,caption,train" for i in range(3)]
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_help_lists_steps_and_sources():
    out = run("--help")
    assert out.returncode == 0 and "ingest" in out.stdout
    out = run("ingest", "--help")
    assert out.returncode == 0 and "--source" in out.stdout and "imagefolder" in out.stdout
    out = run("sources")
    assert out.returncode == 0 and "packaged" in out.stdout and "dicom" in out.stdout


def test_ingest_imagefolder_writes_the_contract(tmp_path):
    src = imagefolder(tmp_path / "in")
    out = run("ingest", "--source", "imagefolder", "--input", str(src), "--output", str(tmp_path / "out"), "--no-mlflow")
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["accepted"] == 4 and manifest["by_split"] == {"test": 1, "train": 2, "val": 1}
    assert manifest["by_source"]["imagefolder"]["seen"] == 4
    assert (tmp_path / "out" / "quarantine.jsonl").exists() and (tmp_path / "out" / "summary.txt").exists()


def test_ingest_errors_are_clear_and_nonzero(tmp_path):
    out = run("ingest", "--source", "imagefolder", "--output", str(tmp_path / "o"))
    assert out.returncode == 2 and "--input" in out.stderr
    out = run("ingest", "--source", "nosuch", "--input", str(tmp_path), "--output", str(tmp_path / "o"))
    assert out.returncode == 1 and "unknown source 'nosuch'" in out.stderr
    out = run("ingest", "--source", "imagefolder", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    bad = imagefolder(tmp_path / "bad", bad=True)
    out = run("ingest", "--source", "imagefolder", "--input", str(bad), "--output", str(tmp_path / "o2"))
    assert out.returncode == 1 and "nothing could be read" in out.stderr and "Traceback" not in out.stderr
    lines = (tmp_path / "o2" / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["reason"] == "path_escape" for line in lines)


def test_bad_params_file_is_reported_with_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text("ingest:\n  max_side: -1\n")
    out = run("ingest", "--output", str(tmp_path / "o"), "--params", str(tmp_path / "params.yaml"))
    assert out.returncode == 1 and "ingest.max_side" in out.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # trains under local Ray (params.yaml: backend ray): one Ray at a time
def test_dvc_repro_runs_the_pipeline_on_the_packaged_corpus(tmp_path):
    """The README's main command underneath: `dvc repro` of every stage in a fresh git repository."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "src"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    # The smoke profile: the same stages with fewer steps and phantoms (the demo is `make repro`).
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["profile"] = "smoke"
    params["ingest"]["phantom"]["count"] = 120
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "UNIMEDVL_SECRET_KEY": "repro-key"}  # pragma: allowlist secret
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)
    done = subprocess.run([str(BIN / "dvc"), "repro"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((work / "data" / "ingest" / "manifest.json").read_text())
    assert manifest["by_source"]["packaged"]["accepted"] > 1000 and manifest["distinct_images"] >= 1000
    qc = json.loads((work / "qc" / "metrics.json").read_text())
    assert qc["accepted"] + qc["quarantined"] == qc["seen"] == manifest["accepted"]
    for stage in ("tokenizer", "autoencoder", "stage1", "stage2", "stage3"):
        assert (work / "models" / stage / "lineage.json").exists(), stage
    for name in ("ema.safetensors", "ae.safetensors", "llm_config.json", "vit_config.json", "tokenizer.json"):
        assert (work / "models" / "stage3" / name).exists(), name
    assert (work / "dvc.lock").exists()

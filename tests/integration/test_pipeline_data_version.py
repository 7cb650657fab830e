"""`data_version`: the ingest and qc components take DVC-tracked outputs at a git rev (read through
DVCFileSystem from the DVC remote, the local cache emptied first) instead of recomputing them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def sh(*cmd, cwd):
    subprocess.run([str(c) for c in cmd], cwd=cwd, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def versioned_repo(tmp_path_factory):
    """A git + DVC repository whose data/ingest changed between two commits, pushed to a local remote."""
    from tests.train_helpers import make_dataset

    root = tmp_path_factory.mktemp("dv")
    repo = root / "repo"
    repo.mkdir()
    sh("git", "init", "-q", cwd=repo)
    sh("git", "config", "user.email", "t@example.org", cwd=repo)
    sh("git", "config", "user.name", "t", cwd=repo)
    sh(BIN / "dvc", "init", "-q", cwd=repo)
    sh(BIN / "dvc", "remote", "add", "-d", "store", str(root / "remote"), cwd=repo)
    revs = []
    for per_task in (2, 3):
        if (repo / "data" / "ingest").exists():
            shutil.rmtree(repo / "data" / "ingest")
        make_dataset(repo / "data" / "ingest", per_task=per_task)
        sh(BIN / "dvc", "add", "data/ingest", cwd=repo)
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", f"data {per_task}", cwd=repo)
        sh(BIN / "dvc", "push", "-q", cwd=repo)
        revs.append(subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip())
    shutil.rmtree(repo / ".dvc" / "cache")  # what a fresh pod has: only the remote
    return repo, revs


def test_fetch_output_reads_the_data_of_that_rev(versioned_repo, tmp_path):
    from unimedvl.pipeline.data_version import DataVersionError, fetch_output

    repo, (first, second) = versioned_repo
    a = fetch_output(str(repo), first, "data/ingest", tmp_path / "a")
    b = fetch_output(str(repo), second, "data/ingest", tmp_path / "b")
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["accepted"] < mb["accepted"]
    for m, folder in ((ma, a), (mb, b)):
        from unimedvl.data.shards import shard_paths

        assert len(shard_paths(folder)) == len(m["shards"])  # every shard present, sha256 verified
    with pytest.raises(DataVersionError, match="tracks no 'data/qc'"):
        fetch_output(str(repo), first, "data/qc", tmp_path / "c")
    with pytest.raises(DataVersionError, match="cannot open"):
        fetch_output(str(repo), "no-such-rev", "data/ingest", tmp_path / "d")


def test_ingest_component_step_uses_data_version(versioned_repo, tmp_path):
    from kfp.dsl import Dataset, Metrics

    from unimedvl.pipeline.steps import ingest_step

    repo, (first, _) = versioned_repo
    ds, metrics = Dataset(name="dataset", uri=str(tmp_path / "ds")), Metrics(name="metrics", uri=str(tmp_path / "m"))
    manifest = ingest_step(ds, metrics, {}, "", first, str(repo), "run-1")
    assert ds.metadata["data_version"] == first and manifest["accepted"] == ds.metadata["records"]
    assert json.loads((tmp_path / "m").read_text())["accepted"] == manifest["accepted"] == metrics.metadata["accepted"]

"""DVC remotes for real: the committed default (a local folder) works on a fresh clone, and the `s3`
remote, configured from the one storage settings object, round-trips pipeline outputs through a
real S3 server: push from one clone, pull into a clean clone, identical checksums."""

from __future__ import annotations

import configparser
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unimedvl import storage

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _dvc(*args: str, cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def _git(*args: str, cwd: Path) -> str:
    return _run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd)


def _checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC project with the repository's .dvc/config and params.yaml, holding real ingest
    outputs (a small phantom run) tracked by DVC and committed."""
    root = tmp_path_factory.mktemp("dvcproj") / "proj"
    root.mkdir()
    _git("init", "-q", "-b", "main", cwd=root)
    _dvc("init", "-q", cwd=root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / ".gitignore").write_text("/dvc-remote/\n")
    _run([sys.executable, "-m", "unimedvl.cli", "ingest", "--source", "phantom", "--count", "24",
          "--output", "data/ingest", "--no-mlflow"], root)
    _dvc("add", "data/ingest", cwd=root)
    _git("add", "-A", cwd=root)
    _git("commit", "-q", "-m", "ingest outputs", cwd=root)
    return root


def test_committed_config_names_both_remotes_from_the_settings():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert config["core"]["remote"] == "local"
    local = Path(config['\'remote "local"\'']["url"])
    assert not local.is_absolute() and (REPO / ".dvc" / local).resolve() == REPO / "dvc-remote"
    s3 = dict(config['\'remote "s3"\''])
    assert s3 == storage.load_settings(REPO / "params.yaml", env={}).dvc_remote_options()


def test_default_local_remote_works_on_a_fresh_clone(project, tmp_path):
    clone = tmp_path / "clone"
    _git("clone", "-q", str(project), str(clone), cwd=tmp_path)
    shutil.copytree(project / "data" / "ingest", clone / "data" / "ingest")  # what its `dvc repro` would make
    _dvc("commit", "-q", "-f", cwd=clone)
    _dvc("push", "-q", cwd=clone)  # no remote named: the committed default
    assert any((clone / "dvc-remote").rglob("*")), "nothing pushed to the local-folder remote"


def test_s3_remote_round_trip(project, s3_env, tmp_path):
    options = storage.configure_dvc_remote(project, local=True)  # the loopback endpoint, not committed
    assert options["endpointurl"] == s3_env.endpoint and options["url"] == "s3://unimedvl-dvc/dvc"
    _dvc("push", "-q", "-r", "s3", cwd=project)
    pushed = [p for p in (s3_env.root / "unimedvl-dvc" / "dvc").rglob("*") if p.is_file()]
    assert len(pushed) >= 4, pushed  # the folder's .dir listing and its files

    clone = tmp_path / "clean"
    _git("clone", "-q", str(project), str(clone), cwd=tmp_path)
    assert not (clone / "data" / "ingest").exists()
    storage.configure_dvc_remote(clone, local=True)
    _dvc("pull", "-q", "-r", "s3", cwd=clone)
    original = _checksums(project / "data" / "ingest")
    assert "manifest.json" in original and any(k.startswith("shards/") for k in original)
    assert _checksums(clone / "data" / "ingest") == original


def test_s3_remote_with_wrong_secret_fails_clearly(project, s3_env, monkeypatch):
    storage.configure_dvc_remote(project, local=True)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    proc = subprocess.run([sys.executable, "-m", "dvc", "push", "-r", "s3"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "SignatureDoesNotMatch" in proc.stderr or "Forbidden" in proc.stderr or "403" in proc.stderr, proc.stderr


@pytest.mark.slow  # ingest + QC (Great Expectations, MLflow) of 80 phantoms: ~30-60 s on two cores
def test_s3_round_trip_of_ingest_and_qc_outputs(s3_env, tmp_path, monkeypatch):
    """The lean test above round-trips ingest outputs; this one adds the QC step's (accepted shards,
    quarantine, report), the outputs the training stages start from."""
    root = tmp_path / "proj"
    root.mkdir()
    _git("init", "-q", "-b", "main", cwd=root)
    _dvc("init", "-q", cwd=root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / ".gitignore").write_text("/dvc-remote/\n/mlflow.db\n/mlruns/\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cli = [sys.executable, "-m", "unimedvl.cli"]
    _run([*cli, "ingest", "--source", "phantom", "--count", "80", "--output", "data/ingest"], root)
    _run([*cli, "qc", "--input", "data/ingest", "--output", "data/qc", "--report", "qc/report",
          "--metrics", "qc/metrics.json"], root)
    _dvc("add", "data/ingest", "data/qc", "qc/report", cwd=root)
    _git("add", "-A", cwd=root)
    _git("commit", "-q", "-m", "ingest + qc outputs", cwd=root)
    storage.configure_dvc_remote(root, local=True)
    _dvc("push", "-q", "-r", "s3", cwd=root)

    clone = tmp_path / "clean"
    _git("clone", "-q", str(root), str(clone), cwd=tmp_path)
    storage.configure_dvc_remote(clone, local=True)
    _dvc("pull", "-q", "-r", "s3", cwd=clone)
    for out in ("data/ingest", "data/qc", "qc/report"):
        original = _checksums(root / out)
        assert original, out
        assert _checksums(clone / out) == original, out

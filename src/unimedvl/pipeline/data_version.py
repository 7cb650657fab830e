"""`data_version`: a pipeline output (e.g. the QC'd shards) as DVC tracked it at a git rev.

`dvc.api.DVCFileSystem` reads the `dvc.lock` of that commit and streams the files from the DVC remote
(S3 on the cluster) or the local cache, so a pipeline run can train on exactly the data of an
earlier commit without re-running ingest and qc.
"""

from __future__ import annotations

import shutil
from pathlib import Path


class DataVersionError(RuntimeError):
    pass


def fetch_output(repo: str, rev: str, path: str, dest: str | Path) -> Path:
    """Copy the DVC-tracked `path` (file or folder) of `repo` at `rev` to `dest`."""
    from dvc.api import DVCFileSystem

    from ..tracking import repo_root

    repo = repo or str(repo_root())
    dest = Path(dest)
    try:
        fs = DVCFileSystem(repo, rev=rev)
        fs.ls("/")  # the filesystem opens lazily: a bad repo or rev fails here, not as "path missing"
    except Exception as e:  # dvc raises scmrepo / NotDvcRepo errors with useful messages
        raise DataVersionError(f"cannot open {repo} at rev {rev!r}: {e}") from None
    if not fs.exists(path):
        raise DataVersionError(f"{repo} at rev {rev!r} tracks no {path!r} (was `dvc repro` committed there?)")
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if fs.isdir(path):
        fs.get(path, str(dest), recursive=True)
    else:
        fs.get_file(path, str(dest))
    return dest

"""The in-progress checkpoint folder of a stage (`<checkpoint_dir>/<stage>-<params hash>/`): which
checkpoint a run may resume from, and pruning.

A checkpoint is resumed only by the code that wrote it. The folder records the sha256 of the training
and model source (`code_hash()`, file `CODE`); a run under different code ignores the old checkpoints
(a log line says so, they are deleted) and starts at step 0, so a changed optimizer or loss retrains
instead of "resuming" at the final step. A run that completed (marker `FINISHED`, written after the
stage's outputs) is not resumed either: checkpoints exist to finish interrupted runs, so a forced
re-run (`dvc repro -f`) trains again. Only the last `keep` step folders are kept.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

STATE_FILE = "state.pt"
DONE_MARK = "COMPLETE"
CODE_FILE = "CODE"
FINISHED = "FINISHED"
_SOURCES = Path(__file__).resolve().parents[1]  # src/unimedvl


def code_hash(root: Path = _SOURCES) -> str:
    """sha256 of the training and model code (every .py under train/ and model/, by path and content)."""
    h = hashlib.sha256()
    for sub in ("train", "model"):
        for p in sorted((root / sub).rglob("*.py")):
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def latest_checkpoint(ckpt_dir: Path) -> tuple[int, Path] | None:
    best = None
    for d in ckpt_dir.glob("step-*"):
        if (d / DONE_MARK).exists():
            step = int(d.name.split("-")[1])
            if best is None or step > best[0]:
                best = (step, d)
    return best


def clear(ckpt_dir: Path) -> None:
    for d in ckpt_dir.glob("step-*"):
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(ckpt_dir / "deepspeed", ignore_errors=True)
    for name in ("losses.jsonl", FINISHED, "failed-once"):
        (ckpt_dir / name).unlink(missing_ok=True)


def prepare(ckpt_dir: Path, code: str | None = None, log=print) -> str | None:
    """Make `ckpt_dir` safe to resume from under this code; returns why old checkpoints were ignored."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    code = code or code_hash()
    marker = ckpt_dir / CODE_FILE
    old = marker.read_text().strip() if marker.exists() else None
    found = latest_checkpoint(ckpt_dir)
    reason = None
    if found is not None and old != code:
        reason = (f"ignoring the checkpoint at step {found[0]} in {ckpt_dir}: it was written by training/model "
                  f"code {str(old)[:12]}, this is code {code[:12]}; training starts at step 0")
    elif found is not None and (ckpt_dir / FINISHED).exists():
        reason = (f"the run in {ckpt_dir} finished (step {found[0]}); checkpoints only resume interrupted runs, "
                  "so training starts at step 0")
    if reason:
        log(reason)
        clear(ckpt_dir)
    (ckpt_dir / FINISHED).unlink(missing_ok=True)
    marker.write_text(code + "\n")
    return reason


def mark_finished(ckpt_dir: Path) -> None:
    (ckpt_dir / FINISHED).write_text("the stage's outputs were written\n")


def prune(ckpt_dir: Path, keep: int = 2) -> None:
    """Keep the last `keep` complete step folders (and their DeepSpeed shards)."""
    done = sorted((int(d.name.split("-")[1]), d) for d in ckpt_dir.glob("step-*") if (d / DONE_MARK).exists())
    for _, d in done[: max(0, len(done) - max(1, keep))]:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(ckpt_dir / "deepspeed" / d.name, ignore_errors=True)

"""`unimedvl pipeline compile`: the checked-in YAML under pipelines/compiled/, regenerated in one go."""

from __future__ import annotations

from pathlib import Path


def compiled_dir() -> Path:
    from ..tracking import repo_root

    return repo_root() / "pipelines" / "compiled"


def compile_all(out_dir: str | Path | None = None) -> list[Path]:
    """Compile the KFP pipeline (and render the Argo variant, when present) into `out_dir`."""
    from kfp import compiler

    from .local import import_pipeline

    out = Path(out_dir) if out_dir else compiled_dir()
    out.mkdir(parents=True, exist_ok=True)
    pipeline = import_pipeline()
    path = out / "unimedvl.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    written = [path]
    try:
        from pipelines import argo
    except ImportError:
        return written
    written += argo.render(out)
    return written

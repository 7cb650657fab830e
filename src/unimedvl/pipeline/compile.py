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
    # hera replaces PyYAML's str representer when imported, which changes how KFP writes multi-line
    # strings; importing it first makes the compiled YAML the same whether or not the process had
    # imported hera before (the freshness test runs inside a suite that has).
    pipeline = import_pipeline()  # also puts the repository root on sys.path for `pipelines`
    try:
        from pipelines import argo
    except ImportError:
        argo = None
    path = out / "unimedvl.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    written = [path]
    if argo is not None:
        written += argo.render(out)
    return written

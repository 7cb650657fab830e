"""`unimedvl infra validate ...`: the offline manifest validators (unimedvl.manifests) as a command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from . import manifests

infra_app = typer.Typer(help="Kubernetes manifests: render and validate offline.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@infra_app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="YAML files, or kustomization folders to render first")],
) -> None:
    """Validate every document: core kinds strictly (kubernetes-validate), custom resources against
    their CRDs (infra/crds). Prints each error as `Kind/name: $.json.path: what`; exit 1 on any."""
    errors: list[str] = []
    total = 0
    for path in paths:
        try:
            docs = manifests.kustomize_build(path) if path.is_dir() else manifests.load_docs(path)
        except (OSError, RuntimeError, yaml.YAMLError, manifests.ManifestError) as e:
            errors.append(f"{path}: {e}")
            continue
        total += len(docs)
        errors += [f"{path}: {e}" for e in manifests.validate_all(docs)]
    for e in errors:
        err.print(e, markup=False, highlight=False)
    if errors:
        err.print(f"[bold red]{len(errors)} error(s)[/] in {total} document(s)")
        raise typer.Exit(1)
    out.print(f"{total} document(s) valid (Kubernetes {manifests.K8S_VERSION} core kinds, CRDs in infra/crds)")


@infra_app.command()
def render(
    directory: Annotated[Path, typer.Argument(help="a kustomization folder, e.g. infra/overlays/staging")],
) -> None:
    """Render a kustomization with `kubectl kustomize`, validate it, and print the YAML."""
    try:
        docs = manifests.kustomize_build(directory)
        manifests.check(docs)
    except (RuntimeError, manifests.ManifestError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)

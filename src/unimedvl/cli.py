"""`unimedvl <step> ...`: every pipeline step as a command. Each command is a thin wrapper over one
library function, the same one the DVC stage and the KFP component call."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .config import ParamsError, SourceSpec, load_params
from .data.sources import SOURCES, UnknownSource, get_source
from .model.cli import model_app

app = typer.Typer(
    name="unimedvl",
    help="UniMedVL platform: raw medical images and text -> a unified medical vision-language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(model_app, name="model")
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def pair_sources(names: list[str], inputs: list[Path]) -> list[SourceSpec]:
    """Pair `--source` and `--input` options: inputs go, in order, to the sources that need one.

    `--source packaged --source slake --input ./SLAKE` gives packaged no input and SLAKE ./SLAKE.
    """
    needing = []
    specs = []
    for name in names:
        module = get_source(name)
        specs.append([name, None])
        if module.NEEDS_INPUT:
            needing.append(len(specs) - 1)
    if len(inputs) != len(needing):
        wanted = ", ".join(names[i] for i in needing) or "none"
        raise typer.BadParameter(
            f"got {len(inputs)} --input for {len(needing)} source(s) that need one ({wanted}); "
            "give one --input per dataset source, in the same order (packaged needs none)",
            param_hint="--input",
        )
    for idx, path in zip(needing, inputs, strict=True):
        specs[idx][1] = str(path)
    return [SourceSpec(name=n, input=i) for n, i in specs]


@app.command()
def ingest(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for shards/, manifest.json, quarantine.jsonl.")],
    source: Annotated[
        list[str] | None,
        typer.Option("--source", "-s", help=f"Source format (repeatable): {', '.join(sorted(SOURCES))}."),
    ] = None,
    input: Annotated[
        list[Path] | None,
        typer.Option("--input", "-i", help="Input folder for each source that needs one, in order (repeatable)."),
    ] = None,
    params: Annotated[Path, typer.Option(help="params.yaml to read the `ingest` section from.")] = Path("params.yaml"),
) -> None:
    """Read raw sources into de-identified Parquet shards with a manifest and a quarantine file.

    Without --source, the sources listed under `ingest.sources` in params.yaml are used (the
    embedded default is the packaged real corpus). Every input item ends up either in a shard or,
    with a reason, in quarantine.jsonl.
    """
    from .data.ingest import IngestError
    from .data.ingest import ingest as run_ingest

    try:
        cfg = load_params(params).ingest
        specs = pair_sources(source, input or []) if source else list(cfg.sources)
        run_ingest(specs, output, cfg)
    except (ParamsError, UnknownSource, IngestError) as e:
        _fail(str(e), 1)


@app.command()
def sources() -> None:
    """List the source formats ingest understands."""
    for name in sorted(SOURCES):
        module = get_source(name)
        doc = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        typer.echo(f"{name:16} {'needs --input' if module.NEEDS_INPUT else 'built in    '}  {doc}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

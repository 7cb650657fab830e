"""`unimedvl model ...`: inspect the model presets (wired into the main CLI as a Typer sub-app)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .config import PRESETS, flops_per_token, get_preset

model_app = typer.Typer(
    help="The unified model: preset sizes, tensor and parameter counts, FLOPs per token.",
    no_args_is_help=True,
    add_completion=False,
)


@model_app.callback()
def _group() -> None:
    """The unified model: preset sizes, tensor and parameter counts, FLOPs per token."""
    # A callback keeps `info` a subcommand (`unimedvl model info`) even while it is the only one.


def preset_info(preset: str, seq_len: int = 4096) -> dict:
    """Counts of a preset, built on the meta device so even `paper` costs no memory."""
    from .unimedvl import build_model, count

    cfg = get_preset(preset)
    counts = count(build_model(cfg, "meta"))
    return {"preset": preset, **counts, "flops_per_token": flops_per_token(cfg, seq_len), "seq_len": seq_len}


@model_app.command()
def info(
    preset: Annotated[str, typer.Option("--preset", "-p", help=f"One of: {', '.join(PRESETS)}.")] = "tiny",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    seq_len: Annotated[int, typer.Option(help="Sequence length assumed by the attention FLOPs.")] = 4096,
) -> None:
    """Parameters and tensors of the main model and of the autoencoder, and training FLOPs per token."""
    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", param_hint="--preset")
    data = preset_info(preset, seq_len)
    if as_json:
        typer.echo(json.dumps(data))
        return
    typer.echo(f"preset {preset}")
    typer.echo(f"  main model:   {data['parameters']:,} parameters in {data['tensors']:,} tensors")
    typer.echo(f"  autoencoder:  {data['autoencoder_parameters']:,} parameters in {data['autoencoder_tensors']:,} tensors")
    typer.echo(f"  training FLOPs per token (seq {seq_len}): {data['flops_per_token']:.4g}")

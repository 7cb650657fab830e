"""`unimedvl model ...`: inspect the model presets (wired into the main CLI as a Typer sub-app)."""

from __future__ import annotations

import json
from pathlib import Path
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


def _rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Start a fresh high-water mark (Linux: `5` into clear_refs resets VmHWM), so the peak read after
    the load is the load's own and not one left by imports or start-up. False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def load_info(folder: Path, dtype: str = "float32") -> dict:
    """Load a model folder and measure it: counts, the load report, and peak resident memory (the
    process's high-water mark over the load, minus what it held before) against the files' size."""
    import time

    import torch

    from .checkpoint import inspect_folder, load_model
    from .unimedvl import count

    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
              "float16": torch.float16, "fp16": torch.float16}
    if dtype not in dtypes:
        raise typer.BadParameter(f"unknown dtype {dtype!r}; choose one of {', '.join(dtypes)}", param_hint="--dtype")
    files = [p for p in (folder / "ema.safetensors", folder / "ae.safetensors") if p.exists()]
    inspect_folder(folder)  # imports and builds the meta model once, so the measure is the weights'
    _reset_peak_rss()
    before = _rss_bytes()
    t0 = time.perf_counter()
    model, report = load_model(folder, dtype=dtypes[dtype])
    seconds = time.perf_counter() - t0
    peak = _peak_rss_bytes()
    size = sum(p.stat().st_size for p in files)
    return {"folder": str(folder), "dtype": dtype, **count(model), "report_ok": report.ok,
            "missing": report.missing[:5], "unexpected": report.unexpected[:5], "mismatched": report.mismatched[:5],
            "file_bytes": size, "rss_before_bytes": before, "peak_rss_bytes": peak,
            "load_peak_bytes": peak - before, "peak_over_file_size": round((peak - before) / max(size, 1), 4),
            "load_seconds": round(seconds, 2)}


@model_app.command()
def info(
    preset: Annotated[str, typer.Option("--preset", "-p", help=f"One of: {', '.join(PRESETS)}.")] = "tiny",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    seq_len: Annotated[int, typer.Option(help="Sequence length assumed by the attention FLOPs.")] = 4096,
    load: Annotated[Path | None, typer.Option("--load", help="A model folder to load and measure (peak memory) instead of a preset.")] = None,
    dtype: Annotated[str, typer.Option(help="With --load: the dtype to load into (float32, bf16, fp16).")] = "float32",
) -> None:
    """Parameters and tensors of the main model and of the autoencoder, and training FLOPs per token;
    with --load FOLDER, the folder's model loaded and its peak resident memory over the load."""
    if load is not None:
        from .checkpoint import MissingTokenizer

        if not (load / "ema.safetensors").exists():
            raise typer.BadParameter(f"{load} is not a model folder (no ema.safetensors)", param_hint="--load")
        try:
            data = load_info(load, dtype)
        except MissingTokenizer as e:
            raise typer.BadParameter(str(e), param_hint="--load") from None
        if as_json:
            typer.echo(json.dumps(data))
            return
        typer.echo(f"model folder {load} ({dtype})")
        typer.echo(f"  main model:   {data['parameters']:,} parameters in {data['tensors']:,} tensors; loads cleanly: {data['report_ok']}")
        typer.echo(f"  files {data['file_bytes'] / 2**20:,.1f} MiB; peak resident memory over the load "
                   f"{data['load_peak_bytes'] / 2**20:,.1f} MiB ({data['peak_over_file_size']:.2f}x the files) in {data['load_seconds']} s")
        return
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

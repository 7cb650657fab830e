"""`unimedvl storage ...`: inspect and use the one S3 configuration (unimedvl.storage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from . import storage
from .config import ParamsError

storage_app = typer.Typer(
    help="The S3 settings shared by DVC, MLflow, the KFP pipeline root and the models bucket.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)
ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml whose `storage:` section to use")]


def _settings(params: Path) -> storage.S3Settings:
    try:
        return storage.load_settings(params)
    except ParamsError as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(1)


@storage_app.command()
def show(params: ParamsOpt = Path("params.yaml")) -> None:
    """Print the resolved settings (params.yaml + environment) and the four locations; never the secret."""
    s = _settings(params)
    out.print(f"endpoint        {s.endpoint}  (region {s.region})")
    out.print(f"credentials     {'AWS_ACCESS_KEY_ID=' + s.access_key if s.access_key else 'not set'}"
              f"{'' if s.secret_key else ' (AWS_SECRET_ACCESS_KEY not set)'}")
    out.print(f"dvc remote      {s.dvc_remote_url}")
    out.print(f"mlflow          {s.mlflow_artifacts_uri}")
    out.print(f"pipeline root   {s.pipeline_root}")
    out.print(f"models          {s.uri('models')}")


@storage_app.command()
def check(
    params: ParamsOpt = Path("params.yaml"),
    create: Annotated[bool, typer.Option("--create", help="create the buckets that are missing")] = False,
) -> None:
    """Connect with the configured credentials and report which of the four buckets exist."""
    s = _settings(params)
    try:
        found = storage.ensure_buckets(s, create=create)
    except storage.StorageError as e:
        _fail(e)
    missing = [b for b, existed in found.items() if not existed]
    for bucket, existed in found.items():
        state = "ok" if existed else ("created" if create else "[red]missing[/]")
        out.print(f"{bucket:<32} {state}")
    if missing and not create:
        err.print(f"[bold red]error:[/] {len(missing)} bucket(s) missing: rerun with --create")
        raise typer.Exit(1)


@storage_app.command("dvc-remote")
def dvc_remote(
    params: ParamsOpt = Path("params.yaml"),
    name: Annotated[str, typer.Option(help="remote name")] = "s3",
    local: Annotated[bool, typer.Option("--local", help="write .dvc/config.local (not committed)")] = False,
    default: Annotated[bool, typer.Option("--default", help="make it the default remote")] = False,
) -> None:
    """Write the DVC S3 remote from these settings (credentials stay in AWS_* variables)."""
    try:
        options = storage.configure_dvc_remote(params.parent, _settings(params), name=name, local=local, default=default)
    except storage.StorageError as e:
        _fail(e)
    out.print(f"remote {name}: " + ", ".join(f"{k}={v}" for k, v in options.items()))


@storage_app.command()
def upload(
    folder: Annotated[Path, typer.Argument(help="local folder to copy")],
    uri: Annotated[str, typer.Argument(help="destination prefix, s3://bucket/prefix/")],
    params: ParamsOpt = Path("params.yaml"),
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Copy a folder to S3; every object is read back and its size and sha256 checked."""
    try:
        objects = storage.upload_folder(folder, uri, _settings(params), progress=progress)
    except storage.StorageError as e:
        _fail(e)
    out.print(f"uploaded {len(objects)} files, {sum(o.size for o in objects):,} bytes to {uri} (sha256 verified)")

"""`unimedvl pipeline compile | run-local | submit`: the Kubeflow pipeline from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

pipeline_app = typer.Typer(help="The Kubeflow pipeline: compile it, run it locally (kfp.local), submit it to a cluster.",
                           no_args_is_help=True)
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@pipeline_app.command("compile")
def compile_cmd(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder (default pipelines/compiled/).")] = None,
) -> None:
    """Compile the pipeline to the checked-in YAML (KFP IR, and the Argo WorkflowTemplate/CronWorkflow)."""
    from .compile import compile_all

    for path in compile_all(output):
        typer.echo(f"wrote {path}")


def _arguments(profile: str | None, sets: list[str], override: Path | None) -> dict:
    import yaml

    args: dict = {}
    if profile:
        args["train_profile"] = profile
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: use NAME=VALUE (a pipeline parameter)", param_hint="--set")
        args[name.strip()] = yaml.safe_load(value)
    if override is not None:
        args["params_override"] = override.read_text()
    return args


@pipeline_app.command("run-local")
def run_local_cmd(
    profile: Annotated[str, typer.Option("--profile", help="params.yaml profile (train_profile).")] = "smoke",
    set_: Annotated[list[str] | None, typer.Option("--set", help="A pipeline parameter NAME=VALUE (repeatable).")] = None,
    override: Annotated[Path | None, typer.Option("--params-override", help="YAML file merged over params.yaml.")] = None,
    root: Annotated[Path, typer.Option("--root", help="Local pipeline root: one folder per run.")] = Path("build/kfp-local"),
) -> None:
    """Run the whole DAG on this machine with kfp.local (each component in this environment)."""
    from ..config import ParamsError
    from .local import run_local
    from .params import resolve

    args = _arguments(profile, set_ or [], override)
    try:
        resolve({k: v for k, v in args.items() if k in ("train_profile",)}, args.get("params_override", ""))
    except ParamsError as e:
        _fail(str(e))
    run = run_local(root, args)
    typer.echo(f"run folder: {run}")


@pipeline_app.command("submit")
def submit_cmd(
    host: Annotated[str, typer.Option("--host", help="KFP API (e.g. http://ml-pipeline-ui.kubeflow) or Argo server URL.")],
    experiment: Annotated[str | None, typer.Option("--experiment", help="KFP experiment (created if missing).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="kfp (the compiled pipeline) or argo (WorkflowTemplate + a Workflow).")] = "kfp",
    set_: Annotated[list[str] | None, typer.Option("--set", help="A pipeline parameter NAME=VALUE (repeatable).")] = None,
    override: Annotated[Path | None, typer.Option("--params-override", help="YAML file merged over params.yaml.")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Argo namespace (default pipeline.ray.namespace).")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Pipeline version name (default: git commit + time).")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="UNIMEDVL_PIPELINE_TOKEN", help="Bearer token.")] = None,
) -> None:
    """Upload the compiled pipeline as a new version and start a run (params_override validated first)."""
    from ..config import ParamsError
    from .submit import SubmitError, submit_argo, submit_kfp

    args = _arguments(None, set_ or [], override)
    try:
        if engine == "kfp":
            out = submit_kfp(host, args, experiment=experiment, version=version, token=token)
        elif engine == "argo":
            out = submit_argo(host, args, namespace=namespace, token=token)
        else:
            raise typer.BadParameter("use kfp or argo", param_hint="--engine")
    except (ParamsError, SubmitError) as e:
        _fail(str(e))
    for k, v in out.items():
        typer.echo(f"{k}: {v}")


@pipeline_app.command("sync")
def sync_cmd(
    src: Annotated[str, typer.Argument(help="s3://bucket/prefix or a local file/folder.")],
    dst: Annotated[str, typer.Argument(help="A local folder/file or s3://bucket/prefix.")],
) -> None:
    """Copy a folder or file between S3 and this machine (the RayJob entrypoint's data movement).
    Uploads are read back and checked (size, sha256) by unimedvl.storage."""
    from ..storage import StorageError
    from .sync import sync

    try:
        n = sync(src, dst)
    except StorageError as e:
        _fail(str(e))
    typer.echo(f"copied {n} file(s) {src} -> {dst}")

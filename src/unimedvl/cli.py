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
from .pipeline.cli import pipeline_app
from .manifests_cli import infra_app
from .storage_cli import storage_app

app = typer.Typer(
    name="unimedvl",
    help="UniMedVL platform: raw medical images and text -> a unified medical vision-language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(model_app, name="model")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(storage_app, name="storage")
app.add_typer(infra_app, name="infra")
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
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Phantom source: records to generate (overrides ingest.phantom.count).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="Phantom source: generator seed (overrides ingest.phantom.seed).")
    ] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log a child run under the pipeline's MLflow run.")] = True,
) -> None:
    """Read raw sources into de-identified Parquet shards with a manifest and a quarantine file.

    Without --source, the sources listed under `ingest.sources` in params.yaml are used (the
    embedded default is the packaged real corpus). Every input item ends up either in a shard or,
    with a reason, in quarantine.jsonl.
    """
    from .data.ingest import IngestError, log_run
    from .data.ingest import ingest as run_ingest

    try:
        loaded = load_params(params)
        cfg = _with_phantom(loaded.ingest, count, seed)
        specs = pair_sources(source, input or []) if source else list(cfg.sources)
        result = run_ingest(specs, output, cfg)
        if mlflow and loaded.tracking.enabled:
            log_run(output, cfg.model_copy(update={"sources": tuple(specs)}), result, tracking=loaded.tracking)
    except (ParamsError, UnknownSource, IngestError) as e:
        _fail(str(e), 1)


def _with_phantom(cfg, count: int | None, seed: int | None):
    """`cfg` (an IngestConfig) with the phantom count / seed overridden where given."""
    update = {k: v for k, v in (("count", count), ("seed", seed)) if v is not None}
    if not update:
        return cfg
    phantom = type(cfg.phantom).model_validate({**cfg.phantom.model_dump(), **update})
    return cfg.model_copy(update={"phantom": phantom})


@app.command("phantom-grid")
def phantom_grid(
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write.")] = Path("docs/phantoms.png"),
    count: Annotated[int, typer.Option("--count", min=1, max=64, help="Phantoms in the grid.")] = 12,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Generator seed.")] = 0,
    params: Annotated[Path, typer.Option(help="params.yaml to read `ingest.phantom` from.")] = Path("params.yaml"),
) -> None:
    """Render a grid of phantoms (chest radiographs, brain MRIs in each contrast) with their captions."""
    from .data.phantoms.grid import write_grid

    try:
        cfg = load_params(params).ingest.phantom
    except ParamsError as e:
        _fail(str(e), 1)
    path = write_grid(output, cfg, count=count, seed=seed)
    typer.echo(f"wrote {path}")


@app.command()
def sources() -> None:
    """List the source formats ingest understands."""
    for name in sorted(SOURCES):
        module = get_source(name)
        doc = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        typer.echo(f"{name:16} {'needs --input' if module.NEEDS_INPUT else 'built in    '}  {doc}")


@app.command()
def train(
    stage: Annotated[str, typer.Option("--stage", help="tokenizer | autoencoder | stage1 | stage2 | stage3.")],
    data: Annotated[Path, typer.Option("--data", help="QC'd shard folder (manifest.json + shards/).")] = Path("data/qc"),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder (default models/<stage>).")] = None,
    from_: Annotated[Path | None, typer.Option("--from", help="Previous stage's folder (default: sibling models/<previous>).")] = None,
    init: Annotated[Path | None, typer.Option("--init", help="tokenizer: an existing tokenizer.json; autoencoder: a pretrained ae.safetensors (skips fitting).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many steps (a quick run).")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Join an existing Ray cluster instead of starting one.")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Entry of `profiles` in params.yaml (e.g. smoke).")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml to read.")] = Path("params.yaml"),
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    heldout: Annotated[Path | None, typer.Option("--heldout", help="The `heldout` step's folder (default: the data folder's sibling `heldout`).")] = None,
) -> None:
    """Train one curriculum stage (DESIGN section 6): each starts from the previous stage's folder and
    writes a model folder in the released layout; tracked in MLflow."""
    import json

    from .train.stages import StageError, run_stage

    try:
        summary = run_stage(stage, data, output or Path("models") / stage, load_params(params), init=init,
                            prev_dir=from_, max_steps=max_steps, ray_address=ray_address, profile=profile,
                            progress=progress, heldout_dir=heldout)
    except (ParamsError, StageError, FileNotFoundError) as e:
        _fail(str(e), 1)
    keep = ("stage", "steps", "wall_s", "run_id")
    out = {k: summary[k] for k in keep if k in summary}
    for k in ("heldout_start", "heldout_end"):
        if k in summary:
            out[k] = {m: summary[k].get(m) for m in ("weights", "loss", "ce", "mse") if m in summary[k]}
    typer.echo(json.dumps(out))


@app.command()
def heldout(
    data: Annotated[Path, typer.Option("--data", help="QC'd shard folder (manifest.json + shards/).")] = Path("data/qc"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for heldout.json.")] = Path("data/heldout"),
    params: Annotated[Path, typer.Option(help="params.yaml to read the `heldout` section from.")] = Path("params.yaml"),
) -> None:
    """Choose the fixed held-out set of this data version (val split, every task family and source,
    `heldout.per_family` each): every training stage measures its start and end on it."""
    import json

    from .train.heldout import run_heldout
    from .train.stages import StageError

    try:
        summary = run_heldout(data, output, load_params(params))
    except (ParamsError, StageError) as e:
        _fail(str(e), 1)
    typer.echo(json.dumps({"n": summary["n"], "families": {f: {k: v[k] for k in ("n", "available", "flag")}
                                                           for f, v in summary["families"].items()}}))


@app.command()
def qc(
    input: Annotated[Path, typer.Option("--input", "-i", help="Ingested data set (manifest.json + shards/).")] = Path("data/ingest"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for accepted shards, quarantine.jsonl, quarantine/.")] = Path("data/qc"),
    report: Annotated[Path, typer.Option(help="Folder for the HTML report, its figures and GE results.")] = Path("qc/report"),
    metrics: Annotated[Path, typer.Option(help="metrics.json for `dvc metrics show`.")] = Path("qc/metrics.json"),
    engine: Annotated[str, typer.Option(help="local (one process) or ray (Ray Data map_batches over the shards).")] = "local",
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the run and report to MLflow.")] = True,
    params: Annotated[Path, typer.Option(help="params.yaml to read the `qc` section from.")] = Path("params.yaml"),
) -> None:
    """Quality-control an ingested data set: Great Expectations on the metadata, image and text checks,
    duplicates and cross-split leakage, a report. Rejected records go to quarantine with a reason."""
    import json

    from .qc import QCError, run_qc
    from .qc.expectations import SuiteFailed

    try:
        m = run_qc(input, output, load_params(params).qc, engine=engine, report_dir=report, metrics_path=metrics,
                   log_to_mlflow=None if mlflow else False)
    except (ParamsError, QCError, SuiteFailed) as e:
        _fail(str(e), 1)
    keep = ("seen", "accepted", "quarantined", "quarantine_reasons", "report", "mlflow_run_id")
    typer.echo(json.dumps({k: m[k] for k in keep if k in m}))


# --- serving, registry, promotion (src/unimedvl/serve, src/unimedvl/promote) ----------------------


def _serve_limits_help() -> str:
    from .config import ServeConfig

    lines = []
    for name, f in ServeConfig.model_fields.items():
        if name in ("host", "port", "model_name"):
            continue
        note = f" ({f.description})" if f.description else ""
        lines.append(f"{name} = {f.default}{note}")
    return "Limits (params.yaml `serve` section; defaults shown):\n\n" + "\n\n".join(lines)


@app.command(epilog=_serve_limits_help())
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="A model folder, models:/NAME@ALIAS or models:/NAME/VERSION.")],
    host: Annotated[str | None, typer.Option(help="Address to bind (default serve.host, 127.0.0.1; 0.0.0.0 only in a container).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port, 8080; 0 picks a free one and prints it).")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml to read the `serve` (limits) and `ingest` sections from.")] = Path("params.yaml"),
) -> None:
    """Serve a model on the KServe model server: v1 :predict and v2 (Open Inference Protocol) /infer,
    tasks vqa, report, generate, edit, explain; health, metadata and Prometheus /metrics."""
    from .serve.server import ModelURIError
    from .serve.server import serve as run_server

    try:
        p = load_params(params)
        run_server(model, p.serve, p.ingest, host=host, port=port)
    except (ParamsError, ModelURIError, OSError) as e:
        _fail(str(e), 1)


@app.command("register")
def register_cmd(
    run_id: Annotated[str | None, typer.Option("--run-id", help="MLflow run that logged the model folder (default: stage3's, from register.stage_metrics).")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml to read `register` and `tracking` from.")] = Path("params.yaml"),
) -> None:
    """Register the stage3 model in the MLflow registry: a pyfunc flavour over the folder stage3 logged
    (no second upload of the weights), tagged with git commit, data, params and code hashes, evaluation
    inputs and headline metrics, and the SPDX licences of the training sources; writes register/version.json."""
    import json

    from mlflow.exceptions import MlflowException

    from .promote.registry import RegisterError, register

    try:
        summary = register(load_params(params), params, run_id=run_id)
    except (ParamsError, RegisterError, FileNotFoundError) as e:
        _fail(str(e), 1)
    except MlflowException as e:
        _fail(f"MLflow registry: {e.message}", 1)
    typer.echo(json.dumps({k: summary[k] for k in ("name", "version", "model_uri", "run_id")}))


@app.command("promote")
def promote_cmd(
    confirm: Annotated[str | None, typer.Option("--confirm", help="'staging': move the staging alias to the staging-candidate (the Argo CD PostSync Job runs this once the InferenceService is Ready).")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Restore the previous staging version (alias and overlay).")] = False,
    to: Annotated[str | None, typer.Option("--to", help="'production': set the champion alias to the current staging version.")] = None,
    commit_branch: Annotated[str | None, typer.Option("--commit-branch", help="Commit the rewritten staging overlay on this new branch for review (S3 mode).")] = None,
    push: Annotated[bool, typer.Option("--push", help="Push the rewritten staging overlay to the GitOps repository pipeline.gitops.repo_url as the review branch pipeline.gitops.branch (S3 mode; token from env UNIMEDVL_GIT_TOKEN).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 3 when the candidate is rejected (default: exit 0 and record the decision).")] = False,
    params: Annotated[Path, typer.Option(help="params.yaml to read `promote`, `register`, `storage` and `tracking` from.")] = Path("params.yaml"),
) -> None:
    """Gate the registered candidate on eval/metrics.json (promote.gates, licence gate), then copy it to
    s3://<models bucket>/<name>/<version>/, pin it in the staging overlay and set staging-candidate.
    Without an S3 endpoint (AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL) it renders promote/overlay/ and
    sets staging directly. Writes promote/decision.json, the audit log and the model card."""
    import json

    import os

    from mlflow.exceptions import MlflowException

    from .promote import promotion
    from .promote.gitops import OverlayError
    from .promote.registry import RegisterError
    from .storage import StorageError

    try:
        p = load_params(params)
        if sum(bool(x) for x in (confirm, rollback, to)) > 1:
            raise promotion.PromoteError("give one of --confirm, --rollback, --to")
        if confirm:
            # What the Argo CD PostSync Job synced (infra/overlays/staging/promote-postsync.yaml).
            result = promotion.confirm(p, confirm, name=os.environ.get("UNIMEDVL_MODEL_NAME"),
                                       version=os.environ.get("UNIMEDVL_MODEL_VERSION"),
                                       storage_uri=os.environ.get("UNIMEDVL_STORAGE_URI"))
        elif rollback:
            result = promotion.rollback(p, commit_branch=commit_branch)
        elif to:
            if to != "production":
                raise promotion.PromoteError(f"--to takes 'production' (got {to!r})")
            result = promotion.to_production(p)
        else:
            if push and commit_branch:
                raise promotion.PromoteError("give one of --push (pipeline.gitops.branch) and --commit-branch")
            result = promotion.promote_and_push(p, params) if push else promotion.promote(p, params, commit_branch=commit_branch)
            failed = [g["gate"] + ": " + (g["reason"] or "") for g in result["gates"] if not g["passed"]]
            typer.echo(json.dumps({"passed": result["passed"], "version": result["candidate"]["version"],
                                   "mode": result["mode"], "uploaded": result["uploaded"],
                                   "aliases": result["aliases"], "failed": failed,
                                   **({"pushed": result["pushed"]} if result.get("pushed") else {})}))
            if not result["passed"] and strict:
                raise typer.Exit(promotion.EXIT_REJECTED_STRICT)
            return
    except (ParamsError, promotion.PromoteError, RegisterError, OverlayError, StorageError, FileNotFoundError) as e:
        _fail(str(e), 1)
    except MlflowException as e:
        _fail(f"MLflow registry ({os.environ.get('MLFLOW_TRACKING_URI') or p.tracking.uri or 'sqlite:///mlflow.db'}): {e.message}", 1)
    typer.echo(json.dumps(result))

# --- evaluation: benchmark, judge, evaluate (src/unimedvl/evaluate) --------------------------------

def _eval_params(path: Path):
    """params.yaml with the selected profile applied (env UNIMEDVL_PROFILE or train.profile), once:
    the library functions take resolved params."""
    from .train.stages import StageError, resolve_params

    try:
        return resolve_params(load_params(path))
    except StageError as e:
        raise ParamsError(str(e)) from None


@app.command()
def benchmark(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the benchmark's shards/ + manifest.json.")] = Path("data/benchmark"),
    params: Annotated[Path, typer.Option(help="params.yaml to read `evaluate.benchmark` and `ingest.phantom` from.")] = Path("params.yaml"),
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Generate the phantom evaluation set (finding questions, open questions, report and generation
    prompts, image pairs) from `evaluate.benchmark.seed`, with exact ground truth."""
    import json

    from .evaluate.benchmark import BenchmarkError, build_benchmark

    try:
        m = build_benchmark(output, _eval_params(params), progress=progress)
    except (ParamsError, BenchmarkError) as e:
        _fail(str(e), 1)
    typer.echo(json.dumps({"output": str(output), "items": m["accepted"], **m["benchmark"]["kinds"]}))


@app.command()
def judge(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for judge.safetensors, judge.json, metrics.json.")] = Path("models/judge"),
    data: Annotated[Path | None, typer.Option("--data", help="QC'd data set whose real train images join the phantoms.")] = Path("data/qc"),
    params: Annotated[Path, typer.Option(help="params.yaml to read `evaluate.judge` from.")] = Path("params.yaml"),
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train the generation judge (finding classifier + feature extractor) on phantoms of its own seed
    and the QC'd real train images; never on generated images. Fails if a finding's held-out AUROC is
    below `evaluate.judge.min_auroc`."""
    import json

    from .evaluate.judge import JudgeError, train_judge

    try:
        m = train_judge(output, _eval_params(params), data if data and data.exists() else None, progress=progress)
    except (ParamsError, JudgeError) as e:
        _fail(str(e), 1)
    typer.echo(json.dumps({k: m[k] for k in ("auroc", "passes", "wall_s")}))
    if not m["passes"]:
        _fail(f"the judge's held-out AUROC {m['auroc']} is below evaluate.judge.min_auroc for some finding: "
              "raise evaluate.judge.phantoms or epochs", 1)


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Model folder (stage3's output).")] = Path("models/stage3"),
    data: Annotated[Path, typer.Option("--data", help="QC'd data set (its test split is scored).")] = Path("data/qc"),
    bench: Annotated[Path, typer.Option("--benchmark", help="Benchmark folder (`unimedvl benchmark`).")] = Path("data/benchmark"),
    judge_dir: Annotated[Path, typer.Option("--judge", help="Judge folder (`unimedvl judge`).")] = Path("models/judge"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for metrics.json, plots/, report/.")] = Path("eval"),
    params: Annotated[Path, typer.Option(help="params.yaml to read `evaluate` from.")] = Path("params.yaml"),
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log a child run under the pipeline's MLflow run.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    ablation: Annotated[bool, typer.Option("--ablation", help="Also run the synergy ablation (about an hour of CPU): "
                                           "unified vs generation-only vs understanding-only training, written to docs/synergy.md.")] = False,
    autoencoder: Annotated[Path, typer.Option("--autoencoder", help="Ablation: the autoencoder folder the variants start from.")] = Path("models/autoencoder"),
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="Ablation seeds (repeatable; default pipeline.ablation.seeds).")] = None,
    ablation_dir: Annotated[Path, typer.Option("--ablation-dir", help="Ablation: working folder for the variants.")] = Path("build/ablation"),
) -> None:
    """Score a model: VQA (test split + phantom benchmark, blind and majority baselines), reports,
    generation (judge faithfulness vs an untrained model, domain Frechet distance), image pairs.
    Writes metrics.json (docs/metrics.md), DVC plots and an HTML report. Exit 0 unless no metric
    could be computed."""
    from .evaluate.run import EvaluateError
    from .evaluate.run import evaluate as run_evaluate

    try:
        result = run_evaluate(model, data, bench, judge_dir, output, _eval_params(params), progress=progress,
                              log_to_mlflow=None if mlflow else False)
    except (ParamsError, EvaluateError) as e:
        _fail(str(e), 1)
    ok = result.computed()
    typer.echo(f"{ok} of {len(result.metrics)} metrics computed; wrote {output / 'metrics.json'} and {output / 'report' / 'index.html'}")
    for key in ("vqa.finding.accuracy", "vqa.finding.blind.accuracy", "vqa.finding.mcnemar_p",
                "generation.faithfulness.mean", "generation.faithfulness.untrained.mean", "generation.faithfulness.permutation_p"):
        m = result.metrics.get(key)
        if m is not None:
            typer.echo(f"  {key}: {m.value if m.value is not None else m.status.value}")
    if ok == 0:
        _fail("no metric could be computed: see the reasons in metrics.json", 1)
    if ablation:
        from .evaluate.synergy import SynergyError, run_ablation

        try:
            rows = run_ablation(data, bench, judge_dir, autoencoder, ablation_dir, _eval_params(params),
                                seeds=tuple(seeds) if seeds else None, progress=progress)
        except SynergyError as e:
            _fail(str(e), 1)
        typer.echo(f"wrote docs/synergy.md ({len(rows)} rows)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""`unimedvl register`: an MLflow model version over the model folder stage3 logged.

The pyfunc flavour (MLmodel, code, signature, input example; a few kB) is added to stage3's `model`
artefact folder beside the weights, and the version's source is that folder: the weights are
uploaded once, by stage3. The version carries the lineage tags of `lineage.version_tags`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import Params
from ..tracking import git_commit, tracking_uri
from .lineage import version_tags

MODEL_ARTIFACT = "model"


class RegisterError(RuntimeError):
    pass


def client(params: Params):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri(params.tracking.uri))


def stage3_run_id(params: Params) -> str:
    """The MLflow run that logged the model folder: stage3's metrics file names it."""
    path = Path(params.register.stage_metrics)
    if not path.exists():
        raise RegisterError(f"{path} is missing: run stage3 first (`unimedvl train --stage stage3`) or pass --run-id")
    run_id = json.loads(path.read_text()).get("run_id")
    if not run_id:
        raise RegisterError(f"{path} names no MLflow run (stage3 ran with tracking disabled): "
                            "enable `tracking` and rerun stage3, or pass --run-id")
    return run_id


def register(params: Params, params_path: str | Path = "params.yaml", run_id: str | None = None) -> dict[str, Any]:
    """The register step: `_register` inside its child run of the pipeline's MLflow run."""
    from ..tracking import step_run

    with step_run("register", params={"register": params.register.model_dump()}, data=params.register.data_dir,
                  tracking=params.tracking, dataset_context=None):
        return _register(params, params_path, run_id)


def _register(params: Params, params_path: str | Path = "params.yaml", run_id: str | None = None) -> dict[str, Any]:
    """Register a version; returns (and writes to register.output) its summary."""
    from mlflow.exceptions import MlflowException

    from ..evaluate.schema import load_metrics

    rc = params.register
    model_dir = Path(rc.model_dir)
    if not (model_dir / "ema.safetensors").exists():
        raise RegisterError(f"{model_dir} is not a model folder (no ema.safetensors)")
    metrics = load_metrics(rc.eval_metrics)
    c = client(params)
    run_id = run_id or stage3_run_id(params)
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        raise RegisterError(f"MLflow run {run_id}: {e.message}") from None
    logged = {Path(f.path).name for f in c.list_artifacts(run_id, MODEL_ARTIFACT)}
    missing = sorted({"ema.safetensors", "ae.safetensors", "tokenizer.json"} - logged)
    if missing:
        raise RegisterError(f"run {run_id} has no complete `{MODEL_ARTIFACT}` folder (missing {missing}); "
                            "stage3 logs it: rerun stage3 with tracking enabled")
    _check_same_weights(model_dir, c, run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"
    if "MLmodel" not in logged:
        with tempfile.TemporaryDirectory() as tmp:
            from .pyfunc import save_flavour

            flavour = Path(tmp) / "flavour"
            save_flavour(flavour, model_uri=f"runs:/{run_id}/{MODEL_ARTIFACT}")
            c.log_artifacts(run_id, str(flavour), MODEL_ARTIFACT)
    tags = version_tags(model_dir, Path(rc.data_dir), Path(params_path), metrics, rc.headline_metrics, git_commit())
    try:
        c.get_registered_model(rc.model_name)
    except MlflowException:
        c.create_registered_model(rc.model_name, description="UniMedVL unified medical vision-language model "
                                  "(research use; not clinically validated)")
    mv = c.create_model_version(rc.model_name, source=source, run_id=run_id, tags=tags)
    mv = _wait_ready(c, rc.model_name, mv.version)
    # The metrics the version was judged on travel with it (one run can back several versions): a
    # later candidate on the same inputs is compared against these numbers (promotion.incumbent_metrics).
    c.log_artifact(run_id, str(rc.eval_metrics), version_artifacts(rc.model_name, mv.version))
    c.set_tag(run_id, "unimedvl.registered_version", f"{rc.model_name}/{mv.version}")
    summary = {"name": rc.model_name, "version": str(mv.version), "model_uri": f"models:/{rc.model_name}/{mv.version}",
               "run_id": run_id, "source": source, "tags": tags, "registered_at": int(time.time())}
    out = Path(rc.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def version_artifacts(name: str, version: str | int) -> str:
    """Where a version's own files (its metrics, cached re-evaluations) live inside its run."""
    return f"registry/{name}/{version}"


def _check_same_weights(model_dir: Path, c, run_id: str) -> None:
    """The local folder must be the one the run logged (its lineage lists the weights' sha256)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            logged = json.loads(Path(c.download_artifacts(run_id, f"{MODEL_ARTIFACT}/lineage.json", tmp)).read_text())
        except Exception:  # noqa: BLE001 - an older run without lineage.json: nothing to compare
            return
    local = json.loads((model_dir / "lineage.json").read_text()) if (model_dir / "lineage.json").exists() else {}
    if logged.get("files") and local.get("files") and logged["files"] != local["files"]:
        raise RegisterError(f"{model_dir} is not the folder run {run_id} logged (weights sha256 differ): "
                            "register the run that trained it (--run-id) or rerun stage3")


def _wait_ready(c, name: str, version: str, timeout: float = 60.0):
    t0 = time.monotonic()
    while True:
        mv = c.get_model_version(name, version)
        if mv.status == "READY" or time.monotonic() - t0 > timeout:
            return mv
        time.sleep(0.2)

"""`unimedvl pipeline submit`: the compiled pipeline to a Kubeflow Pipelines server (`kfp.Client`:
upload a new pipeline version, start a run) or the Argo variant to an Argo server (hera's
`WorkflowsService`: create or update the WorkflowTemplate and CronWorkflow, submit a Workflow).

The arguments are checked before anything is sent: names against the compiled pipeline's
parameters, values (and `params_override`) through the typed config, as each component will.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml

from .compile import compiled_dir
from .params import resolve


class SubmitError(RuntimeError):
    pass


def _pipeline_parameters(path: Path) -> dict[str, Any]:
    ir = next(yaml.safe_load_all(path.read_text()))
    return ir["root"]["inputDefinitions"]["parameters"]


def check_arguments(arguments: dict[str, Any], package: Path) -> None:
    """Unknown names and invalid values fail here with the reason (ParamsError / SubmitError)."""
    known = _pipeline_parameters(package)
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        raise SubmitError(f"unknown pipeline parameters {unknown}; the pipeline takes: {', '.join(sorted(known))}")
    # The rest are params.yaml keys: validated exactly as the components will.
    values = {k: v for k, v in arguments.items() if k not in ("params_override", "data_version", "run_ablation")}
    resolve(values, arguments.get("params_override", ""))


def _version_name() -> str:
    import subprocess

    from ..tracking import repo_root

    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo_root(), capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{rev or 'nogit'}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"


def submit_kfp(host: str, arguments: dict[str, Any], *, experiment: str | None = None, version: str | None = None,
               token: str | None = None, package: Path | None = None) -> dict[str, str]:
    import kfp

    package = package or compiled_dir() / "unimedvl.yaml"
    if not package.exists():
        raise SubmitError(f"{package} is missing: run `unimedvl pipeline compile`")
    check_arguments(arguments, package)
    ir = next(yaml.safe_load_all(package.read_text()))
    name = ir["pipelineInfo"]["name"]
    client = kfp.Client(host=host, existing_token=token)
    try:
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:  # the first upload creates the pipeline and its first (default) version
            pipeline_id = client.upload_pipeline(str(package), pipeline_name=name,
                                                 description=ir["pipelineInfo"].get("description")).pipeline_id
            versions = client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1).pipeline_versions
            if not versions:
                raise SubmitError(f"KFP server {host} created pipeline {pipeline_id} but lists no version of it")
            version_id = versions[0].pipeline_version_id
        else:
            version_id = client.upload_pipeline_version(str(package), pipeline_version_name=version or _version_name(),
                                                        pipeline_id=pipeline_id).pipeline_version_id
        exp = client.create_experiment(experiment) if experiment else None
        run = client.run_pipeline(experiment_id=exp.experiment_id if exp else None,
                                  job_name=f"{name} {arguments.get('train_profile') or ''}".strip(),
                                  params=arguments, pipeline_id=pipeline_id, version_id=version_id)
    except SubmitError:
        raise
    except Exception as e:  # kfp_server_api.ApiException and connection errors: say where and what
        status = getattr(e, "status", None)
        raise SubmitError(f"KFP server {host} refused the submission"
                          + (f" ({status} {getattr(e, 'reason', '')}: {getattr(e, 'body', '')})" if status else f": {e}")) from None
    return {"pipeline_id": pipeline_id, "version_id": version_id, "run_id": run.run_id,
            "run_url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}


def _create_or_update(svc, kind: str, doc: dict[str, Any], ns: str, create_request, update_request) -> None:
    """Create the Argo object `doc` (`kind`: hera's method suffix, e.g. cron_workflow); if it exists,
    update it at the server's current resourceVersion (Argo refuses an update without it)."""
    from hera.exceptions import AlreadyExists

    name = doc["metadata"]["name"]
    try:
        getattr(svc, f"create_{kind}")(create_request(), namespace=ns)
    except AlreadyExists:
        current = getattr(svc, f"get_{kind}")(name, namespace=ns)
        doc["metadata"]["resourceVersion"] = current.metadata.resource_version
        getattr(svc, f"update_{kind}")(name, update_request(), namespace=ns)


def submit_argo(host: str, arguments: dict[str, Any], *, namespace: str | None = None, token: str | None = None,
                folder: Path | None = None) -> dict[str, str]:
    """Create or update the WorkflowTemplate and the CronWorkflow, then submit one Workflow from it."""
    from hera.workflows import WorkflowsService
    from hera.workflows.models import (
        CreateCronWorkflowRequest,
        CronWorkflow,
        SubmitOpts,
        UpdateCronWorkflowRequest,
        WorkflowSubmitRequest,
        WorkflowTemplate,
        WorkflowTemplateCreateRequest,
        WorkflowTemplateUpdateRequest,
    )

    from ..config import load_params
    from .params import params_file

    folder = folder or compiled_dir()
    wt = yaml.safe_load((folder / "argo-workflowtemplate.yaml").read_text())
    cron = yaml.safe_load((folder / "argo-cronworkflow.yaml").read_text())
    known = {p["name"] for p in wt["spec"].get("arguments", {}).get("parameters", [])}
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise SubmitError(f"unknown Argo workflow parameters {unknown}; the template takes: {', '.join(sorted(known))}")
    if "train_profile" in arguments:
        resolve({"train_profile": arguments["train_profile"]})
    ns = namespace or load_params(params_file()).pipeline.ray.namespace
    svc = WorkflowsService(host=host, token=token, namespace=ns, verify_ssl=host.startswith("https://"))
    name, cname = wt["metadata"]["name"], cron["metadata"]["name"]
    try:
        _create_or_update(svc, "workflow_template", wt, ns,
                          lambda: WorkflowTemplateCreateRequest(template=WorkflowTemplate.parse_obj(wt)),
                          lambda: WorkflowTemplateUpdateRequest(template=WorkflowTemplate.parse_obj(wt)))
        _create_or_update(svc, "cron_workflow", cron, ns,
                          lambda: CreateCronWorkflowRequest(cron_workflow=CronWorkflow.parse_obj(cron)),
                          lambda: UpdateCronWorkflowRequest(cron_workflow=CronWorkflow.parse_obj(cron)))
        wf = svc.submit_workflow(WorkflowSubmitRequest(
            namespace=ns, resource_kind="WorkflowTemplate", resource_name=name,
            submit_options=SubmitOpts(parameters=[f"{k}={v}" for k, v in sorted(arguments.items())])), namespace=ns)
    except Exception as e:
        raise SubmitError(f"Argo server {host} refused the submission: {e}") from None
    return {"workflow_template": name, "cron_workflow": cname, "workflow": wf.metadata.name or "",
            "workflow_url": f"{host.rstrip('/')}/workflows/{ns}/{wf.metadata.name}"}

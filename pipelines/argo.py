"""The Argo Workflows variant (clusters with Argo but no Kubeflow): the dvc.yaml stages as a
WorkflowTemplate DAG and a CronWorkflow for scheduled retraining, built with hera (the Argo
project's Python SDK) and rendered offline into pipelines/compiled/.

Derived, not restated: each task runs its dvc.yaml stage's `cmd` verbatim in the project image
(working dir /app, which holds params.yaml and dvc.yaml), its dependencies are the stages whose
outputs its `deps` name, and the stages' output folders (data/, models/, qc/) live on one
per-workflow volume. GPUs, node selectors, tolerations and retries come from params.yaml `pipeline`.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hera.workflows import DAG, Container, CronWorkflow, Parameter, Task, WorkflowTemplate
from hera.workflows import models as m

from components._base import PARAMS, REPO

P = PARAMS.pipeline
NAME = P.name
WORKDIR = "/app"
OUTPUT_DIRS = ("data", "models", "qc")
GPU_STAGES = set(P.gpus)


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_deps(all_stages: dict[str, dict]) -> dict[str, list[str]]:
    outs = {(next(iter(o)) if isinstance(o, dict) else o): n for n, st in all_stages.items()
            for o in st.get("outs", []) + st.get("metrics", []) + st.get("plots", [])}  # all outputs to DVC
    return {n: sorted({owner for d in st.get("deps", []) for out, owner in outs.items()
                       if owner != n and (d == out or d.startswith(out.rstrip("/") + "/"))})
            for n, st in all_stages.items()}


def _container(name: str, cmd: str) -> Container:
    gpus = P.gpus.get(name, 0) if name in GPU_STAGES else 0
    image = P.gpu_image if name in GPU_STAGES else P.image
    limits = {P.gpu.resource: str(gpus)} if gpus else None
    env = [m.EnvVar(name="UNIMEDVL_PROFILE", value="{{workflow.parameters.train_profile}}"),
           m.EnvVar(name="UNIMEDVL_RUN_ID", value="{{workflow.uid}}")]
    if name == "ingest":
        env.append(m.EnvVar(name="UNIMEDVL_SECRET_KEY", value_from=m.EnvVarSource(
            secret_key_ref=m.SecretKeySelector(name=P.key_secret, key="UNIMEDVL_SECRET_KEY"))))
    return Container(
        name=name,
        image=f"{image}:{{{{workflow.parameters.image_tag}}}}",
        command=["sh", "-ec"],
        args=[cmd],
        working_dir=WORKDIR,
        env=env,
        env_from=[m.EnvFromSource(secret_ref=m.SecretEnvSource(name=P.s3_secret, optional=True))],
        volume_mounts=[m.VolumeMount(name="workspace", mount_path=f"{WORKDIR}/{d}", sub_path=d) for d in OUTPUT_DIRS],
        resources=m.ResourceRequirements(limits=limits, requests=limits) if limits else None,
        node_selector=dict(P.gpu.node_selector) if gpus else None,
        tolerations=[m.Toleration(**t) for t in P.gpu.tolerations] if gpus else None,
        retry_strategy=m.RetryStrategy(limit=str(P.retries), retry_policy="OnError",
                                       backoff=m.Backoff(duration="60s", factor=2)),
        security_context=m.SecurityContext(run_as_non_root=True, allow_privilege_escalation=False),
    )


def workflow_template() -> WorkflowTemplate:
    all_stages = stages()
    deps = stage_deps(all_stages)
    with WorkflowTemplate(
        name=NAME,
        entrypoint="pipeline",
        labels={"app.kubernetes.io/part-of": "unimedvl"},
        annotations={"workflows.argoproj.io/description": "The dvc.yaml stages of UniMedVL (ingest -> ... -> stage3)."},
        arguments=[Parameter(name="train_profile", value=PARAMS.train.profile),
                   Parameter(name="image_tag", value=P.image_tag)],
        volume_claim_templates=[m.PersistentVolumeClaim(
            metadata=m.ObjectMeta(name="workspace"),
            spec=m.PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"],
                                             resources=m.VolumeResourceRequirements(requests={"storage": m.Quantity("200Gi")})))],
        service_account_name="unimedvl-pipeline",
    ) as wt:
        containers = {n: _container(n, st["cmd"]) for n, st in all_stages.items()}
        with DAG(name="pipeline"):
            tasks = {n: Task(name=n, template=containers[n]) for n in all_stages}
            for n, ds in deps.items():
                for d in ds:
                    tasks[d] >> tasks[n]
    return wt


def cron_workflow() -> CronWorkflow:
    return CronWorkflow(
        name=f"{NAME}-retrain",
        schedules=[P.schedule],
        timezone="UTC",
        concurrency_policy="Forbid",
        starting_deadline_seconds=3600,
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=3,
        labels={"app.kubernetes.io/part-of": "unimedvl"},
        workflow_template_ref=m.WorkflowTemplateRef(name=NAME),
    )


def render(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    written = []
    for obj, fname in ((workflow_template(), "argo-workflowtemplate.yaml"), (cron_workflow(), "argo-cronworkflow.yaml")):
        path = out / fname
        path.write_text(obj.to_yaml())
        written.append(path)
    return written

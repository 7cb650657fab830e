"""The UniMedVL Kubeflow pipeline: the dvc.yaml steps as one DAG, plus two KFP-only tasks (the optional
synergy-ablation branch and the ExitHandler that closes the MLflow parent run).

Every step is one line of `_dag`: `_task(component, form, **upstream artefacts)`; a component's
parameters are wired by name from the pipeline's form (the same params.yaml names), so a new step
needs no other wiring. Cluster settings (images, GPUs, node selectors, tolerations, retries, secrets)
come from params.yaml's `pipeline` section.
"""


from typing import Any

from kfp import dsl, kubernetes

import components as C
from components._base import IMAGE, PARAMS
from unimedvl.pipeline.params import defaults
from unimedvl.promote.gitops import GIT_TOKEN_ENV, GIT_USERNAME_ENV
from unimedvl.storage import S3Settings

P = PARAMS.pipeline
# The one S3 settings object (storage:); env={} keeps the compiled YAML independent of this shell.
ROOT = S3Settings.from_config(PARAMS.storage, env={}).pipeline_root
FORM = ["train_profile", "ingest_phantom_count", "autoencoder_steps", "stage1_steps", "stage1_lr", "stage2_steps",
        "stage2_lr", "stage3_steps", "stage3_lr", "pipeline_gpus_stage1",
        "pipeline_gpus_stage2", "pipeline_gpus_stage3", "pipeline_image_tag", "pipeline_train_executor",
        "pipeline_gitops_repo_url", "pipeline_gitops_branch"]
D = defaults(FORM, PARAMS)
TRAINING = ("autoencoder", "stage1", "stage2", "stage3", "ablation")
UNCACHED = ("register", "promote")  # registry state lives outside the artefacts: always re-run
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
          "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI")


def _task(component, form: dict[str, Any], **artefacts) -> dsl.PipelineTask:
    names = component.component_spec.inputs or {}
    task = component(**{n: form[n] for n in names if n in form}, **artefacts)
    name = component.name
    task.set_display_name(name)
    if name in UNCACHED:
        task.set_caching_options(False)
    if form["retries"]:
        task.set_retry(num_retries=form["retries"], backoff_duration="60s", backoff_factor=2.0)
    task.set_container_image(form["image"] if name not in TRAINING else form["gpu_image"])
    kubernetes.use_secret_as_env(task, P.s3_secret, {k: k for k in S3_ENV}, optional=True)
    if name == "ingest":
        kubernetes.use_secret_as_env(task, P.key_secret, {"UNIMEDVL_SECRET_KEY": "UNIMEDVL_SECRET_KEY"})
    if name == "promote":  # the GitOps push's HTTPS credentials (optional: a public or file:// remote needs none)
        kubernetes.use_secret_as_env(task, P.gitops.secret, {k: k for k in (GIT_USERNAME_ENV, GIT_TOKEN_ENV)}, optional=True)
    # The GPU pool: in-pod training steps request GPUs; with the rayjob executor stage1-3 (and the
    # ablation) only submit a RayJob, whose GPU workers carry the same selectors (unimedvl.pipeline.rayjob).
    in_pod = name in ("autoencoder", "ablation") or (name in TRAINING and P.train_executor == "local")
    if in_pod:
        # A constant: kfp.local cannot resolve a pipeline parameter here (the RayJobs' GPUs are in the form).
        task.set_accelerator_type(P.gpu.resource).set_accelerator_limit(P.gpus["stage3" if name == "ablation" else name])
        for k, v in P.gpu.node_selector.items():
            kubernetes.add_node_selector(task, k, v)
        for t in P.gpu.tolerations:
            kubernetes.add_toleration(task, **t)
    return task


def _dag(form: dict[str, Any]) -> dict[str, dsl.PipelineTask]:
    t: dict[str, dsl.PipelineTask] = {}
    t["ingest"] = _task(C.ingest, form)
    t["qc"] = _task(C.qc, form, ingested=t["ingest"].outputs["dataset"])
    data = t["qc"].outputs["dataset"]
    t["heldout"] = _task(C.heldout, form, data=data)
    held = t["heldout"].outputs["dataset"]
    t["tokenizer"] = _task(C.tokenizer, form, data=data)
    t["autoencoder"] = _task(C.autoencoder, form, data=data, previous=t["tokenizer"].outputs["model"])
    t["stage1"] = _task(C.stage1, form, data=data, heldout=held, previous=t["autoencoder"].outputs["model"])
    t["stage2"] = _task(C.stage2, form, data=data, heldout=held, previous=t["stage1"].outputs["model"])
    t["stage3"] = _task(C.stage3, form, data=data, heldout=held, previous=t["stage2"].outputs["model"])
    t["benchmark"] = _task(C.benchmark, form)
    t["judge"] = _task(C.judge, form, data=data)
    t["evaluate"] = _task(C.evaluate, form, model=t["stage3"].outputs["model"], data=data,
                          benchmark=t["benchmark"].outputs["dataset"], judge=t["judge"].outputs["model"])
    t["register"] = _task(C.register, form, model=t["stage3"].outputs["model"], results=t["evaluate"].outputs["results"],
                          data=data)
    t["promote"] = _task(C.promote, form, version=t["register"].outputs["version"], results=t["evaluate"].outputs["results"],
                         data=data, benchmark=t["benchmark"].outputs["dataset"], judge=t["judge"].outputs["model"])
    with dsl.If(form["run_ablation"] == True, "synergy-ablation"):  # noqa: E712 - a KFP condition, not a bool
        t["ablation"] = _task(C.ablation, form, data=data, benchmark=t["benchmark"].outputs["dataset"],
                              judge=t["judge"].outputs["model"], autoencoder=t["autoencoder"].outputs["model"])
    return t


def build(retries: int = P.retries):
    """The pipeline, with `retries` per task (`unimedvl pipeline run-local` builds it with 0: kfp.local
    honours retries with their back-off, and a failing step there is a bug to see at once)."""

    @dsl.pipeline(name=P.name, display_name="UniMedVL: medical data to a promoted model",
                  description="ingest -> qc -> heldout -> tokenizer -> autoencoder -> stage1-3 of the UniMedVL curriculum, then "
                              "benchmark + judge -> evaluate -> register -> promote "
                              "(the same steps and code as `dvc repro`), MLflow-tracked; reports and metrics on each node.",
                  pipeline_root=ROOT)
    def unimedvl(
        data_version: str = "",
        train_profile: str = D["train_profile"],
        ingest_phantom_count: int = D["ingest_phantom_count"],
        autoencoder_steps: int = D["autoencoder_steps"],
        stage1_steps: int = D["stage1_steps"],
        stage1_lr: float = D["stage1_lr"],
        stage2_steps: int = D["stage2_steps"],
        stage2_lr: float = D["stage2_lr"],
        stage3_steps: int = D["stage3_steps"],
        stage3_lr: float = D["stage3_lr"],
        pipeline_gpus_stage1: int = D["pipeline_gpus_stage1"],
        pipeline_gpus_stage2: int = D["pipeline_gpus_stage2"],
        pipeline_gpus_stage3: int = D["pipeline_gpus_stage3"],
        pipeline_image_tag: str = D["pipeline_image_tag"],
        pipeline_train_executor: str = D["pipeline_train_executor"],
        pipeline_gitops_repo_url: str = D["pipeline_gitops_repo_url"],
        pipeline_gitops_branch: str = D["pipeline_gitops_branch"],
        run_ablation: bool = False,
        params_override: str = "",
    ):
        """UniMedVL training pipeline.

        Args:
            data_version: Git rev whose DVC-tracked data/ingest and data/qc to use; empty = ingest ingest.sources now.
            train_profile: params.yaml profile applied first (demo, or smoke for a two-minute check).
            ingest_phantom_count: Phantom records with exact ground truth to generate (ingest.phantom.count).
            autoencoder_steps: Fitting steps of the generation autoencoder (autoencoder.steps).
            stage1_steps: Steps of curriculum stage 1, foundation (stage1.steps).
            stage1_lr: Peak learning rate of stage 1 (stage1.lr).
            stage2_steps: Steps of curriculum stage 2, instruction tuning (stage2.steps).
            stage2_lr: Peak learning rate of stage 2 (stage2.lr).
            stage3_steps: Steps of curriculum stage 3, unified multimodal (stage3.steps).
            stage3_lr: Peak learning rate of stage 3 (stage3.lr).
            pipeline_gpus_stage1: GPU workers of stage 1's RayJob (one GPU each).
            pipeline_gpus_stage2: GPU workers of stage 2's RayJob.
            pipeline_gpus_stage3: GPU workers of stage 3's RayJob (and the ablation's).
            pipeline_image_tag: Tag of the CPU and GPU images (components/images/lock.yaml, make images).
            pipeline_train_executor: rayjob (a KubeRay RayJob per stage) or local (train in the step's pod).
            pipeline_gitops_repo_url: GitOps repository promote pushes the staging overlay's change to (review branch); empty = no push.
            pipeline_gitops_branch: That review branch ({name} and {version} of the candidate are filled in).
            run_ablation: Also run the synergy ablation (evaluate/synergy.py: three training variants, evaluated).
            params_override: YAML text merged over params.yaml last, e.g. "qc: {min_side: 64}"; validated.
        """
        form = dict(locals())
        form["retries"] = retries
        form["image"] = f"{P.image}:{pipeline_image_tag}"
        form["gpu_image"] = f"{P.gpu_image}:{pipeline_image_tag}"
        form["run_id"] = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        close = C.close_run(run_id=form["run_id"]).set_display_name("close MLflow run")
        close.set_caching_options(False)
        close.set_container_image(form["image"])
        kubernetes.use_secret_as_env(close, P.s3_secret, {k: k for k in S3_ENV}, optional=True)
        with dsl.ExitHandler(close, name="mlflow-run"):
            _dag(form)

    return unimedvl


unimedvl = build()

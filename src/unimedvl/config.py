"""Typed params: one class per `params.yaml` section, loaded and validated once.

The CLI, the DVC stages and the KFP components all read their settings through `load_params`, so a
misspelt key or an out-of-range value fails in one place with a message that names the key.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSpec(_Strict):
    """One `--source NAME --input PATH` pair (input may be empty for built-in sources)."""

    name: str
    input: str | None = None


class PackagedConfig(_Strict):
    """How the embedded real corpus slices its volumes and frames."""

    slices_per_volume: int = Field(96, ge=1, description="2D slices taken per plane of each 3D volume")
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    frames_per_series: int = Field(16, ge=1, description="frames taken from each multi-frame DICOM / 4D volume")
    reports: bool = True  # include the 3,955 Indiana University chest X-ray reports

    @field_validator("planes")
    @classmethod
    def _planes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = set(v) - {"axial", "coronal", "sagittal"}
        if bad:
            raise ValueError(f"unknown planes {sorted(bad)}; use axial, coronal, sagittal")
        return v


class PhantomConfig(_Strict):
    """The phantom source: procedurally generated chest radiographs and brain MRIs with ground truth."""

    count: int = Field(400, ge=1, le=1_000_000, description="records to emit (patients have 1-4 records each)")
    seed: int = Field(0, ge=0, description="same seed -> byte-identical shards")
    image_size: int = Field(64, ge=32, le=1024, description="side of every full-resolution phantom, pixels")
    chest_fraction: float = Field(0.6, ge=0.0, le=1.0, description="share of chest (vs brain) patients; cross_modal patients are brain")
    # Share of records per sub task type (normalised; 0 leaves a type out). Every type of DESIGN section 4.
    task_mix: dict[str, float] = {
        "vqa_closed": 0.16, "vqa_open": 0.14, "report": 0.12, "caption": 0.08, "t2i": 0.08,
        "edit": 0.08, "counterfactual": 0.10, "super_resolution": 0.06, "cross_modal": 0.06,
        "reconstruction": 0.06, "text_only": 0.03, "report_structure": 0.03,
    }
    min_visible_px: float = Field(3.0, gt=0.0, le=16.0, description="no finding is drawn smaller than this many pixels")
    super_resolution_factor: int = Field(4, ge=2, le=8, description="downsampling of super_resolution inputs")

    @field_validator("task_mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        known = ("vqa_closed", "vqa_open", "report", "caption", "t2i", "edit", "counterfactual",
                 "super_resolution", "cross_modal", "reconstruction", "text_only", "report_structure")
        bad = set(v) - set(known)
        if bad:
            raise ValueError(f"unknown task types {sorted(bad)}; use {', '.join(known)}")
        if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError("task_mix weights must be non-negative and not all zero")
        return v

    @field_validator("super_resolution_factor")
    @classmethod
    def _factor(cls, v: int, info) -> int:
        size = info.data.get("image_size")
        if size is not None and size % v:
            raise ValueError(f"image_size {size} is not divisible by super_resolution_factor {v}")
        return v


class IngestConfig(_Strict):
    sources: tuple[SourceSpec, ...] = (SourceSpec(name="packaged"),)
    split_fractions: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
    max_side: int = Field(512, ge=0, description="downscale so the longer side is at most this (0 keeps full size)")
    max_pixels: int = Field(64_000_000, gt=0, description="decompression-bomb cap: pixels per image")
    max_decoded_bytes: int = Field(256 << 20, gt=0, description="cap on one decoded image / DICOM frame, bytes")
    keep_16bit: bool = True  # keep 12-16-bit sources as 16-bit PNG
    allow_burned_in: bool = False  # ingest DICOMs flagged BurnedInAnnotation=YES
    allow_secondary_capture: bool = False  # ingest Secondary Capture DICOMs (screenshots, photos) as modality "other"
    # PS3.15 E.3 Retain options the DICOM scrub applies (data/dicom_profile.py); none by default
    dicom_retain: tuple[Literal["longitudinal_modified_dates", "patient_characteristics", "device_identity"], ...] = ()
    mixture_languages: tuple[str, ...] = ("en",)  # languages the default training mixture takes
    shard_max_mb: int = Field(256, gt=0)
    packaged: PackagedConfig = PackagedConfig()
    phantom: PhantomConfig = PhantomConfig()

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        bad = set(v) - {"train", "val", "test"}
        if bad:
            raise ValueError(f"unknown split names {sorted(bad)}; use train, val, test")
        if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError("split fractions must be non-negative and not all zero")
        return v


# --- training: tokenizer, autoencoder, stage1-3 (src/unimedvl/train) -------------------------------

class TokenizerConfig(_Strict):
    """Byte-level BPE trained on the training split's text, or an existing tokenizer.json."""

    vocab_size: int = Field(1024, ge=300, description="including the special tokens")
    max_texts: int = Field(50_000, gt=0, description="texts read from the shards to train it")
    init: str | None = None  # an existing tokenizer.json (e.g. the released Qwen2.5 one): copied, not trained


class VitWarmupConfig(_Strict):
    """The ViT's finding-classifier warm-up in the autoencoder stage (train/vit_warmup.py): a random ViT
    stands in for the paper's pretrained SigLIP, and without the warm-up it never learns findings."""

    steps: int = Field(1500, ge=0, description="0: the ViT stays at its random initialisation")
    lr: float = Field(1e-3, gt=0)
    lr_warmup_steps: int = Field(100, ge=0, description="linear ramp of the learning rate from lr/steps to lr")
    batch_size: int = Field(16, gt=0)
    max_images: int = Field(4096, gt=0, description="phantom training images drawn for it")
    pooling: Literal["lse", "mean"] = Field(
        "lse", description="how per-patch finding scores become the image's: lse (a soft maximum, so a finding in one "
                           "patch counts) or mean (mean-pooled features, a linear head)")
    lse_sharpness: float = Field(4.0, gt=0, description="r of the lse pooling, (1/r) log mean exp(r s): large r, max")


class QuestionWarmupConfig(_Strict):
    """The finding-question warm-up in the autoencoder stage (train/vit_warmup.py), after the ViT's: the
    backbone and connector learn the training split's phantom presence questions over the frozen ViT
    before the curriculum starts, as the paper's pretrained Qwen2.5 and SigLIP already can."""

    steps: int = Field(1000, ge=0, description="0: the curriculum starts from the untrained backbone")
    lr: float = Field(1e-3, gt=0)
    lr_warmup_steps: int = Field(10, ge=0)
    max_tokens: int = Field(1024, gt=0, description="token budget of one packed batch")
    presence_share: float = Field(
        0.85, gt=0, le=1, description="share of the draws that are presence questions (oversampled); the rest are the "
                                      "training split's other phantom image-to-text records, which keep the answers "
                                      "of reports and open questions from collapsing to yes / no")


class GenerationWarmupConfig(_Strict):
    """The text-to-image warm-up at the end of the autoencoder stage (train/vit_warmup.py), once the latent
    scale is fixed: the generation expert alone learns the training split's phantom t2i records (prompts
    that name the findings) before the curriculum mixes them with everything else."""

    steps: int = Field(300, ge=0, description="0: the curriculum alone trains generation")
    lr: float = Field(1e-3, gt=0)
    lr_warmup_steps: int = Field(10, ge=0)
    max_tokens: int = Field(1024, gt=0, description="token budget of one packed batch")


class AutoencoderConfig(_Strict):
    """Fits the generation autoencoder (reconstruction + KL), which then stays frozen."""

    steps: int = Field(300, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, gt=0)
    resolution: int = Field(64, ge=16, description="image scale the AE is fitted at (the stages' vae_resolution)")
    crop: int = Field(32, ge=16, description="random square crops of that size are the training patches (4x cheaper)")
    kl_weight: float = Field(1e-4, ge=0)
    init: str | None = None  # a pretrained ae.safetensors: loaded, fitting skipped
    vit_warmup: VitWarmupConfig = VitWarmupConfig()
    question_warmup: QuestionWarmupConfig = QuestionWarmupConfig()
    generation_warmup: GenerationWarmupConfig = GenerationWarmupConfig()


class DeepSpeedConfig(_Strict):
    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: bool = False  # ZeRO-Offload to CPU (needs DeepSpeed's JIT-built CPU Adam)
    # ZeRO-3: parameters with fewer elements stay whole on every rank (DeepSpeed's default 1e5).
    param_persistence_threshold: int = Field(100_000, ge=0)


class StageConfig(_Strict):
    """Field-by-field overrides of the named curriculum's stage (unset fields keep the curriculum's)."""

    steps: int | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)
    warmup_steps: int | None = Field(None, ge=0)
    schedule: str | None = None
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    weight_decay: float | None = Field(None, ge=0)
    ema_decay: float | None = Field(None, ge=0, lt=1)
    ema_schedule: str | None = None  # ramp: min(ema_decay, (1+n)/(10+n)) after n updates | constant
    grad_clip: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    max_text_tokens: int | None = Field(None, gt=0)
    vit_resolution: int | None = Field(None, ge=8)
    vae_resolution: int | None = Field(None, ge=16)
    mixture: dict[str, float] | None = None
    frozen: tuple[str, ...] | None = None
    text_cond_dropout: float | None = Field(None, ge=0, le=1)
    vit_cond_dropout: float | None = Field(None, ge=0, le=1)
    vae_cond_dropout: float | None = Field(None, ge=0, le=1)


class TrainConfig(_Strict):
    """Settings shared by every training stage: model size, scaling, strategy, checkpoints."""

    profile: str = "demo"  # entry of `profiles` applied on top (env UNIMEDVL_PROFILE or --profile wins)
    preset: str = "tiny"  # model preset (unimedvl.model.config.PRESETS)
    curriculum: str = "tiny"  # named curriculum (unimedvl.train.curriculum.CURRICULA)
    seed: int = 0
    backend: str = "ray"  # ray (TorchTrainer) | local (the same loop in this process, one worker)
    strategy: str = "ddp"  # ddp | deepspeed
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    workers: int = Field(1, ge=1)
    cpus_per_worker: int = Field(1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = {}
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    max_failures: int = Field(1, ge=-1)
    checkpoint_every: int = Field(50, gt=0)
    checkpoint_dir: str = "build/checkpoints"  # outside DVC outputs: a re-run resumes from here
    heldout_samples: int = Field(8, gt=0)  # per family, when a stage gets no `heldout` step output
    keep_checkpoints: int = Field(2, ge=1)  # step folders kept per stage run (older ones are pruned)
    log_every: int = Field(1, gt=0)
    grid_prompts: tuple[str, ...] = (
        "Generate an axial CT image.", "Generate a brain MRI image.",
        "Generate a chest X-ray image.", "Generate an ultrasound image.",
    )
    grid_steps: int = Field(12, ge=2)  # timesteps on the sampling grid (the reference's num_timesteps)

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v not in ("ray", "local"):
            raise ValueError("backend must be ray or local")
        return v

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if v not in ("ddp", "deepspeed"):
            raise ValueError("strategy must be ddp or deepspeed")
        return v

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        if v not in ("auto", "bf16", "fp32"):
            raise ValueError("precision must be auto, bf16 or fp32")
        return v


class HeldoutConfig(_Strict):
    """The `heldout` step: the fixed held-out set every training stage measures (train/heldout.py)."""

    per_family: int = Field(64, gt=0, description="samples per task family (all of them when val has fewer)")
    seed: int = 0
    split: str = "val"
    min_text_tokens: int = Field(2000, ge=0, description="supervised text tokens the set should hold (flagged when short)")


class TrackingConfig(_Strict):
    """MLflow. The URI: env MLFLOW_TRACKING_URI, else `uri`, else sqlite:///<repo>/mlflow.db."""

    uri: str | None = None
    experiment: str = "unimedvl"
    system_metrics: bool = True
    system_metrics_interval: float = Field(2.0, gt=0)
    enabled: bool = True


class QCAlignmentConfig(_Strict):
    """The model-based image-text alignment filter (paper: MedSigLIP/MedGemma score, keep top half).

    Off by default: no such model can be loaded offline. Set `scorer` to "module:callable" returning
    an `unimedvl.qc.alignment.AlignmentScorer`, and `keep_top_fraction` to e.g. 0.5.
    """

    keep_top_fraction: float | None = Field(None, gt=0, le=1, description="null = off")
    scorer: str | None = None


class QCMlflowConfig(_Strict):
    """Whether QC logs its child run; URI and experiment are the `tracking` section's (one experiment)."""

    enabled: bool = True


class QCConfig(_Strict):
    """Thresholds of the QC step (qc/): GE suite, image and text checks, duplicates, leakage."""

    min_side: int = Field(32, ge=1, description="shorter image side, px (paper: 128)")
    max_side: int = Field(4096, ge=1, description="longer image side, px")
    max_aspect: float = Field(4.0, ge=1.0, description="longer side / shorter side")
    caption_min_chars: int = Field(10, ge=0)
    caption_max_chars: int = Field(1024, ge=1)
    max_turn_chars: int = Field(8192, ge=1)
    blank_std: float = Field(0.01, ge=0, description="pixel std as a fraction of the range below which an image is blank")
    saturated_fraction: float = Field(0.5, gt=0, le=1, description="fraction of pixels at the maximum that fails")
    near_dup_hamming: int = Field(8, ge=0, le=32, description="perceptual-hash Hamming radius of candidate pairs")
    near_dup_min_corr: float = Field(0.88, ge=-1, le=1, description="thumbnail correlation that confirms a pair")
    thumbnail_side: int = Field(32, ge=8, le=128)
    # Within a split, duplicate records need pixel-identical images by default: neighbouring slices of one
    # volume with the same caption are near copies but still distinct samples. True also merges near copies.
    near_dup_within_split: bool = False
    text_leak_jaccard: float = Field(0.8, gt=0, le=1)
    text_leak_min_chars: int = Field(100, ge=0)
    text_leak_tasks: tuple[str, ...] = ("report", "text_only", "report_structure")
    text_template_min_patients: int = Field(
        3, ge=2, description="a text shared by this many patients is boilerplate, reported but not removed"
    )
    minhash_perm: int = Field(128, ge=16)
    required_splits: tuple[str, ...] = ("train", "val", "test")
    keep_official_split_sources: tuple[str, ...] = ()  # datasets whose published split is kept as is
    batch_size: int = Field(256, ge=1)
    shard_max_mb: int = Field(256, gt=0)
    thumbnails_per_reason: int = Field(6, ge=0)
    alignment: QCAlignmentConfig = QCAlignmentConfig()
    mlflow: QCMlflowConfig = QCMlflowConfig()

    @field_validator("required_splits")
    @classmethod
    def _splits(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = set(v) - {"train", "val", "test"}
        if bad:
            raise ValueError(f"unknown split names {sorted(bad)}; use train, val, test")
        return v


# --- the Kubeflow pipeline and its cluster settings (pipelines/, components/, unimedvl.pipeline) ---

class PipelineGpuConfig(_Strict):
    """Where GPU work lands: the accelerator resource, node labels and taints of the GPU pool."""

    resource: str = "nvidia.com/gpu"  # the extended resource name requested per GPU
    node_selector: dict[str, str] = {}
    tolerations: tuple[dict[str, str], ...] = ()


class PipelineRayConfig(_Strict):
    """The KubeRay RayJob each of stage1-3 creates on the cluster (unimedvl.pipeline.rayjob)."""

    namespace: str = "kubeflow"
    ray_version: str = "2.60.0"  # the Ray inside the GPU image (kuberay checks head/worker agree)
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    worker_cpu: str = "8"
    worker_memory: str = "48Gi"
    poll_s: float = Field(10.0, gt=0)
    timeout_s: int = Field(7 * 24 * 3600, gt=0)
    ttl_s: int = Field(3600, ge=0, description="the finished RayJob object is deleted after this long")


class PipelineAblationConfig(_Strict):
    """The optional synergy-ablation branch (`run_ablation`): `unimedvl.evaluate.synergy.run_ablation`,
    unified vs generation-only vs understanding-only training from the autoencoder, each evaluated."""

    seeds: tuple[int, ...] = (0, 1, 2)
    max_steps: int | None = Field(None, gt=0, description="cap on each variant stage's steps (null: the stage's own)")


class PipelineGitopsConfig(_Strict):
    """Where promote (S3 mode, on the cluster) pushes the staging overlay's change as a review branch
    (`unimedvl.promote.promotion.promote_and_push`); the HTTPS credentials come from the Secret `secret`
    as env UNIMEDVL_GIT_USERNAME / UNIMEDVL_GIT_TOKEN, never from the URL or the repository."""

    repo_url: str = ""  # "" = no push: the overlay change stays in the task's container
    base_branch: str = "main"
    branch: str = "promote/{name}-{version}"  # the review branch; {name} and {version} of the candidate
    secret: str = "unimedvl-gitops"

    @field_validator("repo_url")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        import re

        if re.match(r"^[a-z][a-z0-9+.-]*://[^/@]*@", v) and not v.startswith("ssh://"):
            raise ValueError("repo_url holds credentials: put them in the Kubernetes Secret "
                             "(UNIMEDVL_GIT_USERNAME / UNIMEDVL_GIT_TOKEN), not in the URL")
        return v

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str) -> str:
        try:
            v.format(name="n", version="1")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"branch may use only {{name}} and {{version}}: {e}") from None
        return v


class PipelineConfig(_Strict):
    """The compiled Kubeflow pipeline: images, GPUs, retries, schedule (its root is `storage`'s pipelines bucket)."""

    name: str = "unimedvl"
    image: str = "ghcr.io/unimedvl/unimedvl-cpu"  # CPU steps; tag = image_tag
    gpu_image: str = "ghcr.io/unimedvl/unimedvl-gpu"  # training steps and the RayJobs
    image_tag: str = "0.1.0"
    train_executor: str = "rayjob"  # rayjob (KubeRay on the cluster) | local (in the step's own process)
    data_repo: str = ""  # git URL that data_version refers to ("" = the repository holding params.yaml)
    gpus: dict[str, int] = {"autoencoder": 1, "stage1": 1, "stage2": 1, "stage3": 1}
    gpu: PipelineGpuConfig = PipelineGpuConfig()
    ray: PipelineRayConfig = PipelineRayConfig()
    retries: int = Field(2, ge=0, description="retries of a failed task (preempted nodes, S3 hiccups)")
    s3_secret: str = "unimedvl-s3"  # Kubernetes secret: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, endpoint
    key_secret: str = "unimedvl-deid-key"  # Kubernetes secret holding UNIMEDVL_SECRET_KEY
    schedule: str = "0 2 * * 0"  # Argo CronWorkflow: weekly retraining
    ablation: PipelineAblationConfig = PipelineAblationConfig()
    gitops: PipelineGitopsConfig = PipelineGitopsConfig()

    @field_validator("train_executor")
    @classmethod
    def _executor(cls, v: str) -> str:
        if v not in ("rayjob", "local"):
            raise ValueError("train_executor must be rayjob or local")
        return v


# --- serving (unimedvl serve; src/unimedvl/serve) -------------------------------------------------


class ServeConfig(_Strict):
    """Limits of the model server. Every one is a client-visible rule: a request over it gets a 4xx
    that names the limit, so the numbers are listed in `unimedvl serve --help` too."""

    host: str = "127.0.0.1"  # loopback unless asked (the container passes --host 0.0.0.0)
    port: int = Field(8080, ge=0, le=65535)
    model_name: str = "unimedvl"
    max_pixels: int = Field(4_194_304, gt=0, description="pixels per input image (2048 x 2048)")
    max_payload_bytes: int = Field(16_777_216, gt=0, description="request body size; larger gets 413")
    max_instances: int = Field(8, ge=1, description="instances per request")
    max_steps: int = Field(50, ge=1, description="Euler steps of generate / edit")
    default_steps: int = Field(20, ge=1)
    max_guidance: float = Field(20.0, gt=0)
    default_guidance: float = Field(4.0, gt=0)
    max_new_tokens: int = Field(128, ge=1, description="answer / report length cap")
    default_new_tokens: int = Field(48, ge=1)
    max_question_tokens: int = Field(256, ge=1, description="question / prompt / instruction length, tokens")
    request_timeout_s: float = Field(120.0, gt=0, description="queue wait + model work per request; over it gets 504")
    queue_length: int = Field(16, ge=1, description="requests waiting or running; one more gets 429")
    torch_threads: int = Field(0, ge=0, description="0: torch's default")
    ignore_eos: bool = False  # decode exactly max_new_tokens (fixed-length decoding for benchmarks)
    device: str = "auto"  # auto: cuda when available (the GPU serving component), else cpu
    dtype: str = "fp32"  # fp32 | bf16 (weights and activations; bf16 only on cuda)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not v.startswith("cuda:"):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ("fp32", "bf16"):
            raise ValueError("dtype must be fp32 or bf16")
        return v


class StorageBucketsConfig(_Strict):
    """The four buckets of the cluster path (created by infra/base/minio/buckets-job.yaml)."""

    dvc: str = "unimedvl-dvc"              # the DVC remote `s3`
    mlflow: str = "unimedvl-mlflow"        # MLflow artefacts (--artifacts-destination)
    pipelines: str = "unimedvl-pipelines"  # the KFP pipeline root
    models: str = "unimedvl-models"        # promoted model folders, read by KServe

    @field_validator("dvc", "mlflow", "pipelines", "models")
    @classmethod
    def _bucket(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v):
            raise ValueError(f"{v!r} is not an S3 bucket name (3-63 of a-z 0-9 . -, no leading/trailing . or -)")
        return v


class StorageConfig(_Strict):
    """One set of S3 settings for DVC, MLflow, the KFP pipeline root and the models bucket.

    Credentials are never here: env AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. The endpoint: env
    AWS_ENDPOINT_URL, else MLFLOW_S3_ENDPOINT_URL, else `endpoint` (see unimedvl.storage).
    """

    endpoint: str = "http://minio:9000"
    region: str = "us-east-1"
    buckets: StorageBucketsConfig = StorageBucketsConfig()
    dvc_prefix: str = "dvc"  # the DVC remote is s3://<buckets.dvc>/<dvc_prefix>

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {v!r} needs a scheme: http://host:port or https://host")
        return v.rstrip("/")


# --- registry and promotion (unimedvl register / promote; src/unimedvl/promote) --------------------


class RegisterConfig(_Strict):
    """The MLflow model version `register` creates over stage3's logged model folder."""

    model_name: str = "unimedvl"
    model_dir: str = "models/stage3"
    stage_metrics: str = "models/stage3.metrics.json"  # holds stage3's MLflow run id
    eval_metrics: str = "eval/metrics.json"
    data_dir: str = "data/qc"  # the training data (manifest sha256, SPDX licences per source)
    output: str = "register/version.json"
    headline_metrics: tuple[str, ...] = ("vqa.closed.accuracy", "vqa.closed.blind.accuracy", "vqa.finding.accuracy",
                                         "report.bleu4", "generation.faithfulness.mean", "explain.pointing_game")


class GateConfig(_Strict):
    """One promotion gate on a metric key of eval/metrics.json (its status must be ok)."""

    metric: str
    min: float | None = None  # value >= min
    baseline: str | None = None  # value >= baseline's value + margin (the baseline must be ok too)
    margin: float = 0.0
    max_regression: float | None = None  # value >= incumbent's value - max_regression (same inputs only)


class PromoteConfig(_Strict):
    """Gates, the target environment and where promotion writes."""

    environment: str = "staging"
    commercial: bool = False  # the environment serves commercially: non-commercial training data is refused
    image: str = "ghcr.io/unimedvl/unimedvl:0.1.0"
    gates: tuple[GateConfig, ...] = (
        # The image must help: the phantom benchmark's finding-presence questions (always enough of them,
        # whatever the data) answered at least as well as by the model itself without the image, and no
        # worse than the incumbent on the same inputs.
        GateConfig(metric="vqa.finding.accuracy", min=0.0, baseline="vqa.finding.blind.accuracy", margin=0.0,
                   max_regression=0.05),
    )
    overlay: str = "infra/overlays/staging"  # the committed overlay (S3 mode only)
    local_overlay: str = "promote/overlay"  # local mode renders here instead
    decision: str = "promote/decision.json"
    audit_log: str = "promote/audit.jsonl"
    model_card: str = "promote/MODEL_CARD.md"
    benchmark_dir: str = "data/benchmark"  # re-evaluating an incumbent on the candidate's inputs
    judge_dir: str = "models/judge"
# --- evaluation: benchmark, judge, evaluate (src/unimedvl/evaluate) ---------------------------------

class BenchmarkConfig(_Strict):
    """The phantom evaluation set: its own seed, a question mix fixed here (docs/metrics.md)."""

    seed: int = Field(7_000_001, ge=0, description="disjoint from ingest.phantom.seed and evaluate.judge.seed")
    image_size: int = Field(64, ge=32, le=1024)
    finding_questions: int = Field(480, ge=2, description="balanced yes/no finding-presence questions (half yes)")
    open_questions: int = Field(200, ge=0)
    report_prompts: int = Field(200, ge=0)
    generation_per_finding: int = Field(100, ge=2, description="t2i prompts per finding: half ask for it, half exclude it")
    counterfactual_pairs: int = Field(40, ge=0)
    super_resolution_pairs: int = Field(40, ge=0)
    cross_modal_pairs: int = Field(40, ge=0)
    shard_max_mb: int = Field(256, gt=0)


class JudgeConfig(_Strict):
    """The generation judge: a small CNN classifier + feature extractor (never trained on generated images)."""

    seed: int = Field(9_000_001, ge=0, description="phantom seed of its training images")
    phantoms: int = Field(4000, ge=20, description="phantom images generated for it (80% train / 20% held out)")
    real_images: int = Field(600, ge=0, description="QC'd real train images added as finding-free negatives")
    epochs: int = Field(16, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(16, ge=4, description="channels of the first conv block (doubles per block)")
    feature_dim: int = Field(32, ge=2, description="feature size used for the domain Frechet distance")
    resolution: int = Field(64, ge=32)
    min_auroc: float = Field(0.95, ge=0.5, le=1.0, description="held-out AUROC each finding must reach")


class EvalSamplingConfig(_Strict):
    """Sampling during evaluation (recorded in metrics.json inputs); the library defaults stay the reference."""

    steps: int = Field(20, ge=1)
    cfg_text_scale: float = Field(4.0, ge=1.0)
    cfg_img_scale: float = Field(1.5, ge=1.0)
    timestep_shift: float = Field(3.0, gt=0)
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    batch_size: int = Field(16, ge=1)
    seed: int = Field(0, ge=0)


class EvaluateConfig(_Strict):
    min_n: int = Field(20, ge=1, description="a family with fewer items is insufficient_samples")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of every interval")
    permutations: int = Field(2000, ge=100)
    seed: int = Field(0, ge=0)
    max_test_items: int = Field(400, ge=0, description="per family (closed, open, report) of the real test split")
    report_max_new_tokens: int = Field(96, ge=1)
    inception_torchscript: str | None = None  # a user-supplied TorchScript Inception: adds generation.fid.*
    grid_images: int = Field(24, ge=0, description="generated images shown in the HTML report")
    worst_examples: int = Field(8, ge=0)
    benchmark: BenchmarkConfig = BenchmarkConfig()
    judge: JudgeConfig = JudgeConfig()
    sampling: EvalSamplingConfig = EvalSamplingConfig()


# The `register` step's section shadows the ABC `register` classmethod every pydantic model inherits
# (never used on instances); the section keeps its step name, and only that one warning is silenced.
warnings.filterwarnings("ignore", message='Field name "register" in "Params" shadows', category=UserWarning)


class Params(_Strict):
    ingest: IngestConfig = IngestConfig()
    qc: QCConfig = QCConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    train: TrainConfig = TrainConfig()
    stage1: StageConfig = StageConfig()
    stage2: StageConfig = StageConfig()
    stage3: StageConfig = StageConfig()
    tracking: TrackingConfig = TrackingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    serve: ServeConfig = ServeConfig()
    register: RegisterConfig = RegisterConfig()  # shadows the ABC's `register` classmethod (see above)
    promote: PromoteConfig = PromoteConfig()
    storage: StorageConfig = StorageConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    heldout: HeldoutConfig = HeldoutConfig()
    # Named overrides of the sections above (e.g. `smoke`); see unimedvl.train.stages.resolve_params.
    profiles: dict[str, dict[str, Any]] = {}


class ParamsError(ValueError):
    pass


def load_params(path: str | Path | None = "params.yaml") -> Params:
    """Read and validate `params.yaml`; a missing file gives the defaults."""
    if path is None or not Path(path).exists():
        return Params()
    raw: Any = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    known = set(Params.model_fields)
    # Sections of steps this version does not know yet are ignored so old code reads new params.
    try:
        return Params(**{k: v for k, v in raw.items() if k in known})
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ParamsError(f"{path} is invalid:\n" + "\n".join(lines)) from None

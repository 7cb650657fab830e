"""`run_stage`: the one function behind `unimedvl train --stage ...`, the DVC stages and the KFP
components, for tokenizer, autoencoder, stage1, stage2 and stage3.

Every stage writes a folder. `tokenizer` writes `tokenizer.json` (+ lineage.json); the others write a
model folder in the released layout (ema.safetensors, model.safetensors, ae.safetensors, the config
JSONs, tokenizer.json, lineage.json). Each starts from the previous stage's folder, by default the
sibling folder named after that stage (`models/stage1` starts from `models/autoencoder`).

Profiles. `params.yaml` holds the demo values; `profiles.<name>` holds overrides of any section,
applied when the profile is selected: `--profile NAME`, else env `UNIMEDVL_PROFILE`, else
`train.profile` (default `demo`, which has no overrides). Under `dvc repro` only `train.profile` (a
param DVC tracks) may choose: a differing `UNIMEDVL_PROFILE` is an error naming both. The `smoke`
profile runs the whole pipeline in under two minutes for the end-to-end tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Params
from ..tracking import SystemMetrics, step_run, tracking_uri
from .curriculum import PREVIOUS, TRAIN_STAGES, StageSpec, get_curriculum


class StageError(RuntimeError):
    """A stage cannot run (missing or incompatible input); the message says what to do."""


# ----------------------------------------------------------------------------------------------------
# Params: profiles and the resolved stage spec.


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "mixture" else v
    return out


def resolve_params(params: Params, profile: str | None = None) -> Params:
    """Apply the selected profile's overrides (validated like params.yaml itself).

    Under `dvc repro` (env DVC_STAGE set) the profile is `train.profile`, the param DVC tracks: an
    `UNIMEDVL_PROFILE` that differs is an error, or DVC would call outputs of another profile up to date.
    """
    env = os.environ.get("UNIMEDVL_PROFILE")
    if os.environ.get("DVC_STAGE") and not profile and env and env != params.train.profile:
        raise StageError(f"UNIMEDVL_PROFILE={env!r} differs from train.profile={params.train.profile!r} in params.yaml "
                         f"under `dvc repro` (stage {os.environ['DVC_STAGE']}): DVC tracks train.profile, so set "
                         f"train.profile: {env} in params.yaml (or unset UNIMEDVL_PROFILE)")
    name = profile or env or params.train.profile
    if name in (None, "", "demo") and "demo" not in params.profiles:
        return params
    if name not in params.profiles:
        raise StageError(f"unknown profile {name!r}; params.yaml defines: {', '.join(['demo', *params.profiles]) }")
    merged = _merge(params.model_dump(), params.profiles[name])
    merged.setdefault("train", {})["profile"] = name
    return Params(**merged)


def stage_spec(params: Params, stage: str) -> StageSpec:
    base = get_curriculum(params.train.curriculum)[stage]
    return base.override(**getattr(params, stage).model_dump())


def params_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------
# Progress bar: rank 0 writes progress.json, the driver shows it.


class _Progress:
    def __init__(self, path: Path, title: str, total: int, enabled: bool):
        self.path, self.enabled = path, enabled
        self._stop = threading.Event()
        self._thread = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:.0f} tok/s"), TimeElapsedColumn(),
                            transient=False)
        self.task = self.bar.add_task(title, total=total, loss=float("nan"), tps=0.0)
        self.bar.start()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.update()

    def update(self, **kw) -> None:
        if not self.enabled:
            return
        if not kw:
            try:
                d = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return
            kw = {"completed": d["step"], "loss": d["loss"], "tps": d.get("tokens_per_s", 0.0)}
        self.bar.update(self.task, **kw)

    def close(self) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join(timeout=2)
        self.update()
        self.bar.stop()


# ----------------------------------------------------------------------------------------------------
# Shared bits.


def _repo_root() -> Path:
    from ..tracking import repo_root

    return repo_root()


def _lineage(data_dir: Path, params_h: str, parent: Path | None, stage: str, extra: dict | None = None) -> dict:
    from ..tracking import git_commit, manifest_sha256

    return {"data_manifest_sha256": manifest_sha256(data_dir), "git_commit": git_commit(), "params_hash": params_h,
            "parent_checkpoint": str(parent) if parent else None, "extra": {"stage": stage, **(extra or {})}}


def _previous(stage: str, out_dir: Path, prev_dir: Path | None) -> Path:
    prev = PREVIOUS[stage]
    folder = Path(prev_dir) if prev_dir else out_dir.parent / prev
    need = "tokenizer.json" if prev == "tokenizer" else "ema.safetensors"
    if not (folder / need).exists():
        raise StageError(
            f"{stage} starts from the {prev} stage's output {folder}, which "
            f"{'does not exist' if not folder.exists() else f'has no {need}'}: run "
            f"`unimedvl train --stage {prev} --output {folder}` first (or point --from at a {prev} folder)")
    if prev != "tokenizer" and (folder / "lineage.json").exists() and not prev_dir:
        got = json.loads((folder / "lineage.json").read_text()).get("extra", {}).get("stage")
        if got and got != prev:
            raise StageError(f"{folder} was written by stage {got!r}, but {stage} starts from a {prev!r} folder")
    return folder


def _check_compatible(folder: Path, params: Params) -> None:
    """Refuse a previous folder whose model does not match the configured preset (apart from the
    vocabulary, which the tokenizer decides) or whose weights do not load cleanly."""
    from ..model.checkpoint import read_config
    from ..model.config import get_preset

    try:
        have = read_config(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StageError(f"{folder} is not a model folder this version can read: {e}") from None
    want = get_preset(params.train.preset)
    diffs = []
    for part in ("llm", "vit", "vae"):
        a, b = getattr(have, part).__dict__, getattr(want, part).__dict__
        for k in a:
            if k in ("vocab_size", "scale_factor", "shift_factor"):
                continue
            if a[k] != b.get(k):
                diffs.append(f"{part}.{k}: folder {a[k]} vs preset {b.get(k)}")
    if diffs:
        raise StageError(f"{folder} holds a model incompatible with train.preset={params.train.preset!r}: "
                         + "; ".join(diffs[:6]) + ("" if len(diffs) <= 6 else f" (+{len(diffs) - 6} more)"))


# ----------------------------------------------------------------------------------------------------
# The stages.


def run_stage(
    stage: str,
    data_dir: str | Path,
    out_dir: str | Path,
    params: Params,
    *,
    init: str | Path | None = None,
    prev_dir: str | Path | None = None,
    max_steps: int | None = None,
    ray_address: str | None = None,
    profile: str | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    metrics_path: str | Path | None = None,
    heldout_dir: str | Path | None = None,
    test_hooks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one pipeline stage; returns its summary (also written to `metrics_path`, by default
    `<out_dir>.metrics.json` beside the output folder, outside it so DVC can track both)."""
    params = resolve_params(params, profile)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not (data_dir / "manifest.json").exists():
        raise StageError(f"{data_dir} holds no data set (no manifest.json): run `unimedvl ingest` / `unimedvl qc` first")
    t0 = time.perf_counter()
    if stage == "tokenizer":
        summary = _tokenizer_stage(data_dir, out_dir, params, init)
    elif stage == "autoencoder":
        from .autoencoder_stage import autoencoder_stage

        summary = autoencoder_stage(data_dir, out_dir, params, init, prev_dir, max_steps, progress)
    elif stage in TRAIN_STAGES:
        summary = _train_stage(stage, data_dir, out_dir, params, prev_dir, max_steps, ray_address, progress,
                               checkpoint_dir, test_hooks or {}, heldout_dir)
    else:
        raise StageError(f"unknown stage {stage!r}; choose one of tokenizer, autoencoder, {', '.join(TRAIN_STAGES)}")
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    mp = Path(metrics_path) if metrics_path else out_dir.with_name(out_dir.name + ".metrics.json")
    mp.parent.mkdir(parents=True, exist_ok=True)
    mp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _tokenizer_stage(data_dir: Path, out_dir: Path, params: Params, init) -> dict[str, Any]:
    from ..model.tokenizer import load_tokenizer, train_tokenizer
    from .data import all_texts

    cfg = params.tokenizer
    out_dir.mkdir(parents=True, exist_ok=True)
    init = init or cfg.init
    if init:
        tok = load_tokenizer(init)
        tok.save(out_dir / "tokenizer.json")
    else:
        tok = train_tokenizer(all_texts(data_dir, "train", cfg.max_texts), cfg.vocab_size, out_dir / "tokenizer.json")
    h = params_hash("tokenizer", cfg.model_dump())
    (out_dir / "lineage.json").write_text(json.dumps(_lineage(data_dir, h, Path(init) if init else None, "tokenizer"),
                                                     indent=2, sort_keys=True) + "\n")
    with step_run("tokenizer", params={"tokenizer": cfg.model_dump()}, data=data_dir, tracking=params.tracking) as run:
        run.log_metrics({"vocab_size": tok.vocab_size})
        run.log_artifact(out_dir / "tokenizer.json")
    return {"stage": "tokenizer", "vocab_size": tok.vocab_size, "run_id": run.run_id}


def _train_stage(stage: str, data_dir: Path, out_dir: Path, params: Params, prev_dir, max_steps, ray_address, progress,
                 checkpoint_dir, hooks: dict[str, Any], heldout_dir=None) -> dict[str, Any]:
    from ..tracking import manifest_sha256

    spec = stage_spec(params, stage)
    tc = params.train
    if tc.use_gpu and not ray_address and not torch.cuda.is_available():
        from .ray_job import no_cuda_message

        raise StageError(no_cuda_message())
    prev = _previous(stage, out_dir, Path(prev_dir) if prev_dir else None)
    _check_compatible(prev, params)
    from ..model.checkpoint import MissingTokenizer, inspect_folder

    try:  # headers only: the workers load the weights once
        report = inspect_folder(prev)
    except MissingTokenizer as e:
        raise StageError(str(e)) from None
    if not report.ok:
        raise StageError(f"{prev} does not load cleanly: missing {report.missing[:3]}, unexpected {report.unexpected[:3]}, "
                         f"mismatched {report.mismatched[:3]}")
    total = spec.steps if max_steps is None else min(spec.steps, max_steps)
    tc = params.train
    prev_files = json.loads((prev / "lineage.json").read_text()).get("files", {}) if (prev / "lineage.json").exists() else {}
    h = params_hash(stage, spec.to_dict(), total, tc.preset, tc.seed, tc.workers, tc.strategy, tc.deepspeed.model_dump(),
                    tc.precision, prev_files, manifest_sha256(data_dir), hooks.get("mixture_by_rank"))
    root = _repo_root()
    ckpt = Path(checkpoint_dir) if checkpoint_dir else (root / tc.checkpoint_dir / f"{stage}-{h}")
    ckpt.mkdir(parents=True, exist_ok=True)
    from .heldout import heldout_dir_for

    heldout_dir = heldout_dir_for(data_dir, heldout_dir, ckpt, tc.heldout_samples)
    resolved = {"stage": spec.to_dict(), "train": tc.model_dump(), "tracking": params.tracking.model_dump(),
                "steps": total, "params_hash": h, "init_from": str(prev), "data": str(data_dir), "heldout": str(heldout_dir)}
    uri = tracking_uri(params.tracking.uri)
    with step_run(stage, params=resolved, data=data_dir, tracking=params.tracking,
                  tags={"unimedvl.profile": tc.profile, "data_manifest_sha256": manifest_sha256(data_dir)}) as run:
        result = _run_and_log(run, stage, data_dir, out_dir, params, spec, total, h, prev, ckpt, root, uri, ray_address,
                              progress, hooks, resolved)
    # Relative to the repo where possible: the metrics file is committed and read on other machines.
    shown = ckpt.resolve().relative_to(root.resolve()) if ckpt.resolve().is_relative_to(root.resolve()) else ckpt
    return {**result, "run_id": run.run_id, "checkpoint_dir": str(shown), "params_hash": h}


def _run_and_log(run, stage, data_dir, out_dir, params, spec, total, h, prev, ckpt, root, uri, ray_address, progress,
                 hooks, resolved) -> dict[str, Any]:
    import yaml

    from .curriculum import TRAIN_STAGES
    from .plots import loss_curves_png
    from .ray_job import LOSSES, PROGRESS, read_losses, run_training

    from .checkpoints import code_hash, mark_finished
    from .native_ops import extensions_dir

    tc = params.train
    code = code_hash()
    run.set_tags({"unimedvl.code_sha256": code})
    sysm = SystemMetrics(uri, run.run_id, params.tracking.system_metrics_interval, params.tracking.system_metrics)
    config = {
        "spec": spec.to_dict(), "total_steps": total, "seed": tc.seed, "strategy": tc.strategy,
        "deepspeed": tc.deepspeed.model_dump(), "precision": tc.precision, "checkpoint_every": tc.checkpoint_every,
        "checkpoint_dir": str(ckpt.resolve()), "data_dir": str(data_dir.resolve()), "init_dir": str(prev.resolve()),
        "out_dir": str(out_dir.resolve()), "run_id": run.run_id, "tracking_uri": uri, "experiment": params.tracking.experiment,
        "heldout_samples": tc.heldout_samples, "log_every": tc.log_every, "progress_file": str((ckpt / PROGRESS).resolve()),
        "languages": list(params.ingest.mixture_languages),
        "lineage": _lineage(data_dir, h, prev, stage, {"curriculum": tc.curriculum, "profile": tc.profile,
                                                        "code_sha256": code}),
        "torch_extensions_dir": str(extensions_dir(root)),
        "code_hash": code, "keep_checkpoints": tc.keep_checkpoints, "heldout_dir": str(Path(resolved["heldout"]).resolve()),
        **hooks,
    }
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", config["torch_extensions_dir"])
    bar = _Progress(ckpt / PROGRESS, stage, total, progress)
    try:
        result = run_training(config, backend="local" if (tc.backend == "local" and not ray_address) else "ray",
                              workers=tc.workers, cpus_per_worker=tc.cpus_per_worker, use_gpu=tc.use_gpu,
                              resources_per_worker=tc.resources_per_worker, max_failures=tc.max_failures,
                              ray_address=ray_address, storage_path=root / "build" / "ray_results",
                              verbose=bool(hooks.get("verbose")))
    finally:
        bar.close()
        sysm.stop()
    rows = read_losses(ckpt)
    art = ckpt / "artifacts"
    art.mkdir(exist_ok=True)
    held = [{"step": 0, **result["heldout_start"]}, {"step": result["steps"], **result["heldout_end"]}]
    n_ce = result["heldout_end"]["ce_tokens"]
    result["heldout_text_tokens_ok"] = n_ce >= params.heldout.min_text_tokens
    if not result["heldout_text_tokens_ok"]:
        print(f"[{stage}] the held-out set holds {n_ce} supervised text tokens (< heldout.min_text_tokens="
              f"{params.heldout.min_text_tokens}): its CE is a noisy signal", flush=True)
    if rows:
        run.log_artifact(loss_curves_png(rows, held, art / "loss_curves.png", f"{stage} ({tc.profile})"))
    (art / "resolved_config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(resolved, default=str)), sort_keys=False))
    run.log_artifact(art / "resolved_config.yaml")
    run.log_artifact(sample_grid(out_dir, tc.grid_prompts, tc.grid_steps, tc.seed, art / "samples.png"))
    run.log_artifact(ckpt / LOSSES)
    if stage == TRAIN_STAGES[-1]:
        # The released model: its folder is logged once, here; `register` adds the pyfunc flavour over
        # these same artefacts (tag unimedvl.model_artifact) instead of uploading the weights again.
        run.log_artifact(out_dir, "model")
        run.set_tags({"unimedvl.model_artifact": "model"})
    else:
        run.log_artifact(out_dir / "lineage.json", "model")
    mark_finished(ckpt)  # a later run of this stage trains again instead of resuming a finished run
    return {**result, "code_sha256": code}


def sample_grid(folder: Path, prompts: tuple[str, ...], steps: int, seed: int, out: Path) -> Path:
    """Images generated by the model in `folder` (EMA weights) from fixed prompts, side by side."""
    from ..model.checkpoint import load_model
    from ..model.layout import chat_layout
    from ..model.tokenizer import load_tokenizer
    from .plots import image_grid_png

    model, _ = load_model(folder, "ema")
    model.eval()
    tok = load_tokenizer(folder)
    contexts = [chat_layout(tok, [prompt]) for prompt in prompts]
    images = model.generate_images(contexts, num_steps=steps, seeds=[seed + i for i in range(len(prompts))])
    return image_grid_png(images, list(prompts), out)

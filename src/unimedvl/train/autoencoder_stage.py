"""The `autoencoder` stage: fit the generation autoencoder (reconstruction + KL), then build the full
model around it with the latent scale and shift measured on the data. Called by `run_stage`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..config import Params
from ..tracking import SystemMetrics, step_run, tracking_uri
from .stages import StageError, _lineage, _previous, _Progress, params_hash


def autoencoder_stage(data_dir: Path, out_dir: Path, params: Params, init, prev_dir, max_steps, progress) -> dict[str, Any]:
    """Fit the generation autoencoder (reconstruction + KL), then build the full model around it with
    the latent scale and shift measured on the data, so latents are roughly unit-variance."""
    from dataclasses import replace

    from ..model.config import get_preset
    from ..model.tokenizer import load_tokenizer
    from ..model.unimedvl import build_model
    from .data import all_images, image_tensor

    cfg = params.autoencoder
    torch.set_num_threads(params.train.cpus_per_worker)
    prev = _previous("autoencoder", out_dir, Path(prev_dir) if prev_dir else None)
    tok = load_tokenizer(prev)
    torch.manual_seed(params.train.seed)
    mcfg = get_preset(params.train.preset)
    mcfg = mcfg.replace(llm=replace(mcfg.llm, vocab_size=tok.vocab_size))
    model = build_model(mcfg)
    ae = model.autoencoder
    images = all_images(data_dir, "train", limit=2048, seed=params.train.seed)
    if not images:
        raise StageError(f"{data_dir} has no training images to fit the autoencoder on")
    res = cfg.resolution
    data = torch.stack([image_tensor(b, res) for b in images])
    held = data[: min(16, len(data))]
    run_params = {"autoencoder": cfg.model_dump(), "train": params.train.model_dump(), "model": mcfg.to_dict()}
    with step_run("autoencoder", params=run_params, data=data_dir, tracking=params.tracking) as run:
        sysm = SystemMetrics(tracking_uri(params.tracking.uri), run.run_id, params.tracking.system_metrics_interval,
                             params.tracking.system_metrics)
        try:
            return _fit_autoencoder(run, data_dir, out_dir, params, cfg, prev, tok, mcfg, model, ae, data, held, init or cfg.init,
                                    max_steps, progress)
        finally:
            sysm.stop()


def _fit_autoencoder(run, data_dir, out_dir, params, cfg, prev, tok, mcfg, model, ae, data, held, init, max_steps, progress):
    from dataclasses import replace

    from safetensors.torch import load_file

    from ..model.checkpoint import save_model
    from ..model.unimedvl import build_model
    from .plots import image_grid_png, loss_curves_png

    res = cfg.resolution
    rows: list[dict] = []

    def recon_loss() -> float:
        with torch.no_grad():
            mean, _ = ae.encoder(held).chunk(2, dim=1)
            return float(((ae.decoder(mean) - held) ** 2).mean())

    start_loss = None
    steps = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    if init:
        state = load_file(str(init))
        missing, unexpected = ae.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise StageError(f"{init} does not fit the {params.train.preset} autoencoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
        steps = 0
    start_loss = recon_loss()
    if steps:
        # Fit in the raw (unscaled) latent space; encode/decode add the scale and shift afterwards.
        ae.requires_grad_(True).train()
        opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())))
        gen = torch.Generator().manual_seed(params.train.seed)
        bar = _Progress(out_dir, "autoencoder", steps, progress)
        t_last = time.perf_counter()
        for step in range(steps):
            idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
            c = min(cfg.crop, res)
            oy, ox = (int(v) for v in torch.randint(res - c + 1, (2,), generator=gen))
            x = data[idx][:, :, oy : oy + c, ox : ox + c]
            mean, logvar = ae.encoder(x).chunk(2, dim=1)
            logvar = logvar.clamp(-30, 20)
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
            recon = ae.decoder(z)
            rec = ((recon - x) ** 2).mean()
            kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
            loss = rec + cfg.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = float(torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0))
            opt.step()
            sched.step()
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            loss, rec, kl = loss.detach(), rec.detach(), kl.detach()
            rows.append({"step": step + 1, "loss": float(loss), "mse": float(rec), "kl": float(kl), "grad_norm": gn,
                         "lr": sched.get_last_lr()[0], "samples_per_s": cfg.batch_size / dt, "ce": float("nan")})
            bar.update(completed=step + 1, loss=float(loss), tps=cfg.batch_size / dt)
        bar.close()
        ae.requires_grad_(False).eval()
        run.log_metric_rows([(r["step"], {k: r[k] for k in ("loss", "mse", "kl", "grad_norm", "lr", "samples_per_s")})
                             for r in rows])
    end_loss = recon_loss()
    # The ViT and question warm-ups first, on the model the autoencoder was fitted in: building the final
    # model draws its (discarded) initial weights from the global generator, and the question warm-up
    # leaves its plateau or not depending on that state (docs/understanding.md, third round).
    vit_summary = _warm_up_vit(run, data_dir, out_dir, params, model, progress)
    question_summary = _warm_up_backbone("question", run, data_dir, out_dir, params, model, tok, progress)
    # Latent statistics -> scale and shift (FLUX's are fixed constants measured the same way).
    with torch.no_grad():
        mean = torch.cat([ae.encoder(data[i : i + 32]).chunk(2, dim=1)[0] for i in range(0, min(len(data), 256), 32)])
    shift, scale = float(mean.mean()), float(1.0 / (mean.std() + 1e-6))
    if init:
        shift, scale = mcfg.vae.shift_factor, mcfg.vae.scale_factor
    final_cfg = mcfg.replace(vae=replace(mcfg.vae, scale_factor=scale, shift_factor=shift))
    final = build_model(final_cfg, special=tok.special)
    final.load_state_dict({**{k: v for k, v in model.state_dict().items() if not k.startswith("autoencoder.")},
                           **{f"autoencoder.{k}": v for k, v in ae.state_dict().items()}})
    # The generation warm-up trains the final model: its velocity is learnt in the final latent units.
    generation_summary = _warm_up_backbone("generation", run, data_dir, out_dir, params, final, tok, progress)
    h = params_hash("autoencoder", cfg.model_dump(), params.train.preset, params.train.seed)
    lineage = _lineage(data_dir, h, prev, "autoencoder", {"heldout_recon_start": start_loss, "heldout_recon_end": end_loss,
                                                           "init": str(init) if init else None,
                                                           "vit_warmup": vit_summary,
                                                           "question_warmup": question_summary,
                                                           "generation_warmup": generation_summary})
    save_model(final, out_dir, lineage=lineage, tokenizer=tok)
    art = out_dir.parent / f".{out_dir.name}-artifacts"
    if rows:
        run.log_artifact(loss_curves_png(rows, [{"step": 0, "loss": start_loss, "ce": float("nan"), "mse": start_loss},
                                                            {"step": steps, "loss": end_loss, "ce": float("nan"), "mse": end_loss}],
                                                     art / "loss_curves.png", "autoencoder"))
    with torch.no_grad():
        recon = final.autoencoder(held[:4]).clamp(-1, 1)
    run.log_artifact(image_grid_png([*held[:4], *recon], ["input"] * len(held[:4]) + ["reconstruction"] * len(recon),
                                                art / "reconstructions.png"))
    run.log_metric_rows([(steps, {"heldout_recon_start": start_loss, "heldout_recon_end": end_loss,
                                          "latent_scale": scale, "latent_shift": shift})])
    return {"stage": "autoencoder", "steps": steps, "heldout_start": {"loss": start_loss}, "heldout_end": {"loss": end_loss},
            "latent_scale": scale, "latent_shift": shift, "run_id": run.run_id, "fitted": not init,
            "vit_warmup": vit_summary, "question_warmup": question_summary, "generation_warmup": generation_summary}


def _warm_up_vit(run, data_dir, out_dir, params, model, progress) -> dict[str, Any]:
    """The ViT's finding warm-up (train/vit_warmup.py) on the training split's phantoms, logged."""
    from .stages import stage_spec
    from .vit_warmup import warm_up_vit, warmup_set

    cfg = params.autoencoder.vit_warmup
    res = stage_spec(params, "stage1").vit_resolution
    images, targets = warmup_set(data_dir, res, cfg.max_images, params.train.seed) if cfg.steps else (torch.zeros(0), None)
    bar = _Progress(out_dir, "vit warm-up", cfg.steps, progress and cfg.steps > 0 and len(images) >= 20)
    summary = warm_up_vit(model.vit_model, images, targets, cfg, params.train.seed,
                          lambda step, loss: bar.update(completed=step, loss=loss, tps=0.0))
    bar.close()
    auroc = {f"vit_warmup_auroc_{k}": v for k, v in summary["heldout_auroc"].items() if v is not None}
    auroc |= {f"vit_warmup_auroc_abnormal_{k}": v for k, v in summary.get("heldout_auroc_abnormal", {}).items()
              if v is not None}
    if auroc:
        run.log_metric_rows([(summary["steps"], auroc)])
    return summary


def _warm_up_backbone(kind: str, run, data_dir, out_dir, params, model, tok, progress) -> dict[str, Any]:
    """A backbone warm-up of train/vit_warmup.py, logged: `question` (the finding questions, over the
    warmed-up ViT) or `generation` (the generation expert, on the model with its final latent scale)."""
    from . import vit_warmup
    from .stages import stage_spec

    warm_up, loss = {"question": (vit_warmup.warm_up_questions, "ce"),
                     "generation": (vit_warmup.warm_up_generation, "mse")}[kind]
    cfg = getattr(params.autoencoder, f"{kind}_warmup")
    bar = _Progress(out_dir, f"{kind} warm-up", cfg.steps, progress and cfg.steps > 0)
    summary = warm_up(model, tok, data_dir, stage_spec(params, "stage1"), cfg, params.train.seed,
                      languages=tuple(params.ingest.mixture_languages), precision=params.train.precision,
                      progress=lambda step, value: bar.update(completed=step, loss=value, tps=0.0))
    bar.close()
    if summary["steps"]:
        run.log_metric_rows([(summary["steps"], {f"{kind}_warmup_{loss}_start": summary[f"{loss}_start"],
                                                 f"{kind}_warmup_{loss}_end": summary[f"{loss}_end"]})])
    return summary

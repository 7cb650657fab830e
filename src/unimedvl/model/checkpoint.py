"""Checkpoints as folders in the released UniMedVL/BAGEL layout.

    ema.safetensors     the weights to serve (EMA when training; otherwise the weights themselves)
    model.safetensors   the raw training weights (only when an EMA copy exists beside them)
    ae.safetensors      the autoencoder in the FLUX layout
    llm_config.json     HF Qwen2-style backbone shape
    vit_config.json     HF SigLIP-style encoder shape (num_hidden_layers counts the dropped layer)
    tokenizer.json      the tokenizer the model was trained with
    unimedvl_config.json  everything else our presets vary (absent from released folders)
    lineage.json        data manifest sha256, git commit, params hash, parent checkpoint, file hashes

A released folder (no unimedvl_config.json) loads too: shapes come from the two JSON files and from
the position tables stored in ema.safetensors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.shards import sha256_file
from .config import PRESETS, LLMConfig, ModelConfig, VAEConfig, ViTConfig
from .unimedvl import DEFAULT_SPECIAL, UniMedVL, autoencoder_state_dict, main_state_dict

LLM_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings")
VIT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
            "patch_size", "image_size", "layer_norm_eps")


@dataclass
class Lineage:
    """Where a checkpoint came from: enough to rebuild it or to refuse it."""

    data_manifest_sha256: str | None = None
    git_commit: str | None = None
    params_hash: str | None = None
    parent_checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadReport:
    """What loading matched: keys the model expected but the files lack, keys the model has no place for."""

    folder: str
    weights_file: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ae_missing: list[str] = field(default_factory=list)
    ae_unexpected: list[str] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.ae_missing or self.ae_unexpected)


def llm_config_json(cfg: LLMConfig) -> dict[str, Any]:
    """The backbone shape under HF Qwen2 key names, as the released llm_config.json."""
    d = {k: getattr(cfg, k) for k in LLM_KEYS}
    # Fixed by the model code; written for readers, ignored on load (as the released code does).
    d.update(model_type="qwen2", hidden_act="silu", tie_word_embeddings=False, qk_norm=True,
             layer_module="Qwen2MoTDecoderLayer")
    return d


def vit_config_json(cfg: ViTConfig) -> dict[str, Any]:
    """The encoder shape under HF SigLIP key names, as the released vit_config.json."""
    d = {k: getattr(cfg, k) for k in VIT_KEYS}
    d.update(model_type="siglip_vision_model", hidden_act="gelu_pytorch_tanh")
    return d


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def save_model(
    model: UniMedVL,
    folder: str | Path,
    lineage: Lineage | dict[str, Any] | None = None,
    ema: nn.Module | None = None,
    tokenizer=None,
) -> Path:
    """Write `model` (and its EMA copy, when training keeps one) as a checkpoint folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if ema is not None:
        _save_tensors(main_state_dict(ema), folder / "ema.safetensors")
        _save_tensors(main_state_dict(model), folder / "model.safetensors")
    else:
        _save_tensors(main_state_dict(model), folder / "ema.safetensors")
    _save_tensors(autoencoder_state_dict(model), folder / "ae.safetensors")
    (folder / "llm_config.json").write_text(json.dumps(llm_config_json(model.cfg.llm), indent=2) + "\n")
    (folder / "vit_config.json").write_text(json.dumps(vit_config_json(model.cfg.vit), indent=2) + "\n")
    (folder / "unimedvl_config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(folder / "tokenizer.json")
    lin = asdict(lineage) if isinstance(lineage, Lineage) else dict(lineage or {})
    lin["files"] = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
    (folder / "lineage.json").write_text(json.dumps(lin, indent=2, sort_keys=True) + "\n")
    return folder


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def read_config(folder: str | Path) -> ModelConfig:
    """The model shape a folder describes (ours: unimedvl_config.json; released: the JSONs + tensors)."""
    folder = Path(folder)
    ours = folder / "unimedvl_config.json"
    if ours.exists():
        return ModelConfig.from_dict(json.loads(ours.read_text()))
    llm = json.loads((folder / "llm_config.json").read_text())
    vit = json.loads((folder / "vit_config.json").read_text())
    llm_cfg = LLMConfig(**{k: llm[k] for k in LLM_KEYS if k in llm})
    vit_cfg = ViTConfig(**{k: vit[k] for k in VIT_KEYS if k in vit})
    cfg = PRESETS["paper"].replace(llm=llm_cfg, vit=vit_cfg)
    ae = folder / "ae.safetensors"
    if ae.exists():
        cfg = cfg.replace(vae=_vae_config_from_shapes(_tensor_shapes(ae), cfg.vae))
    weights = folder / "ema.safetensors"
    if weights.exists():
        shape = _tensor_shapes(weights).get("latent_pos_embed.pos_embed")
        if shape:
            cfg = cfg.replace(max_latent_size=round(shape[0] ** 0.5))
    return cfg


def _vae_config_from_shapes(shapes: dict[str, tuple[int, ...]], base: VAEConfig) -> VAEConfig:
    """Width, multipliers, depth and latent channels of a FLUX-layout autoencoder, read off its tensors
    (the scale and shift factors are not stored; FLUX's are kept)."""
    ch = shapes["encoder.conv_in.weight"][0]
    levels = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down.")})
    mult = tuple(shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] // ch for i in levels)
    blocks = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down.0.block.")})
    return replace(base, ch=ch, ch_mult=mult, num_res_blocks=blocks,
                   in_channels=shapes["encoder.conv_in.weight"][1], out_channels=shapes["decoder.conv_out.weight"][0],
                   z_channels=shapes["decoder.conv_in.weight"][1])


def _load_into(
    module: nn.Module, tensors: dict[str, torch.Tensor], own: dict[str, torch.Tensor] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """Load what fits; `own` narrows the expected keys (the main file leaves the autoencoder out)."""
    own = module.state_dict() if own is None else own
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    mismatched = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    usable = {k: v for k, v in tensors.items() if k in own and k not in mismatched}
    module.load_state_dict(usable, strict=False)
    return missing, unexpected, mismatched


def load_model(
    folder: str | Path,
    weights: str = "ema",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[UniMedVL, LoadReport]:
    """Rebuild the model a folder describes and load its weights (`ema` or the raw `model` file).

    Never raises on a key mismatch: the report lists missing, unexpected and mismatched keys, and the
    caller decides (fine-tuning from the released model tolerates none; a test may tolerate some).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_config(folder)
    special = DEFAULT_SPECIAL
    if (folder / "tokenizer.json").exists():
        from .tokenizer import load_tokenizer

        special = load_tokenizer(folder).special
    with torch.device(device):
        model = UniMedVL(cfg, special=special)
    if dtype is not None:
        model = model.to(dtype)
    wfile = folder / f"{weights}.safetensors"
    report = LoadReport(folder=str(folder), weights_file=wfile.name)
    m_missing, m_unexpected, m_mismatched = _load_into(
        model, load_file(str(wfile), device=str(device)), main_state_dict(model))
    report.missing, report.unexpected, report.mismatched = m_missing, m_unexpected, m_mismatched
    ae_file = folder / "ae.safetensors"
    if ae_file.exists():
        a_missing, a_unexpected, a_mismatched = _load_into(model.autoencoder, load_file(str(ae_file), device=str(device)))
        report.ae_missing, report.ae_unexpected = a_missing, a_unexpected
        report.mismatched += [f"ae:{k}" for k in a_mismatched]
    else:
        report.ae_missing = sorted(model.autoencoder.state_dict())
    if (folder / "lineage.json").exists():
        report.lineage = json.loads((folder / "lineage.json").read_text())
    return model, report


"""Checkpoints as folders in the released UniMedVL/BAGEL layout.

    ema.safetensors     the weights to serve (EMA when training; otherwise the weights themselves)
    model.safetensors   the raw training weights (only when an EMA copy exists beside them)
    ae.safetensors      the autoencoder in the FLUX layout
    llm_config.json     HF Qwen2-style backbone shape
    vit_config.json     HF SigLIP-style encoder shape (num_hidden_layers counts the dropped layer)
    tokenizer.json      the tokenizer the model was trained with
    unimedvl_config.json  everything else our presets vary (absent from released folders)
    lineage.json        data manifest sha256, git commit, params hash, parent checkpoint, file hashes

A released folder (no unimedvl_config.json) loads too: shapes come from the two JSON files, and every
table size (vocabulary, position tables) from the stored tensors. Loading builds the model on the meta
device and reads the files straight into the target dtype: about one copy of the weights in memory.
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
from .tokenizer import SpecialTokens
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


class MissingTokenizer(FileNotFoundError):
    """A model folder without tokenizer.json: its special-token ids are unknown."""


# safetensors dtype names -> torch dtypes (the format's spec lists these).
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v["shape"]) for k, v in _header(path)[0].items()}


def read_safetensors(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                     keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, each read with plain reads straight into its own buffer, then cast
    to `dtype` (floating tensors) and moved to `device` one at a time.

    Not `safetensors.torch.load_file`: it maps the file, and the mapped pages it touches count in the
    process's resident memory next to the copies, so peak host memory would be two copies of the
    weights; here it is one copy plus one tensor. (The format is a JSON header and raw little-endian data.)
    """
    path = Path(path)
    header, base = _header(path)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if keys is not None and name not in keys:
                continue
            t = torch.empty(info["shape"], dtype=_ST_DTYPES[info["dtype"]])
            start, end = info["data_offsets"]
            if end > start:
                f.seek(base + start)
                view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                got = f.readinto(view)
                if got != end - start:
                    raise ValueError(f"{path} is truncated at tensor {name}")
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            out[name] = t.to(device) if str(device) != "cpu" else t
    return out


def read_config(folder: str | Path) -> ModelConfig:
    """The model shape a folder describes (ours: unimedvl_config.json; released: the JSONs), with every
    table size read off the stored tensors: vocabulary, ViT patch-position table (and so its image
    size), the frozen ViT and latent position tables, and the autoencoder's shape."""
    folder = Path(folder)
    ours = folder / "unimedvl_config.json"
    if ours.exists():
        cfg = ModelConfig.from_dict(json.loads(ours.read_text()))
    else:
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
        cfg = _tables_from_shapes(cfg, _tensor_shapes(weights))
    return cfg


def _side(rows: int, what: str) -> int:
    side = round(rows**0.5)
    if side * side != rows:
        raise ValueError(f"{what} has {rows} rows, not a square grid")
    return side


def _tables_from_shapes(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
    vocab = shapes.get("language_model.model.embed_tokens.weight")
    if vocab:
        cfg = cfg.replace(llm=replace(cfg.llm, vocab_size=vocab[0]))
    vit_rows = shapes.get("vit_model.vision_model.embeddings.position_embedding.weight")
    if vit_rows:
        side = _side(vit_rows[0], "the ViT position embedding")
        cfg = cfg.replace(vit=replace(cfg.vit, image_size=side * cfg.vit.patch_size))
    table = shapes.get("vit_pos_embed.pos_embed")
    if table:
        side = _side(table[0], "vit_pos_embed.pos_embed")
        cfg = cfg.replace(vit_pos_table_side=None if side == cfg.vit.patches_per_side else side)
    lat = shapes.get("latent_pos_embed.pos_embed")
    if lat:
        cfg = cfg.replace(max_latent_size=_side(lat[0], "latent_pos_embed.pos_embed"))
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


def _special(folder: Path, tokenizer) -> SpecialTokens:
    from .tokenizer import load_tokenizer

    if isinstance(tokenizer, SpecialTokens):
        return tokenizer
    if tokenizer is not None:
        return (load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer).special
    path = folder / "tokenizer.json"
    if not path.exists():
        raise MissingTokenizer(
            f"{path} does not exist: without it the model's special-token ids (image markers, end of turn) are "
            f"unknown. Copy the tokenizer the model was trained with to {path}, or pass tokenizer=... "
            "(a tokenizer.json path, a TextTokenizer or SpecialTokens)")
    return load_tokenizer(path).special


def _compare(expected: dict[str, torch.Size], stored: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[str]]:
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(stored) if tuple(expected[k]) != tuple(stored[k]))
    return missing, unexpected, mismatched


def inspect_folder(folder: str | Path, weights: str = "ema", tokenizer=None) -> LoadReport:
    """What `load_model` would report, from the file headers alone (no weights are read)."""
    folder = Path(folder)
    cfg = read_config(folder)
    model = build_meta(cfg, _special(folder, tokenizer))
    report = LoadReport(folder=str(folder), weights_file=f"{weights}.safetensors")
    report.missing, report.unexpected, report.mismatched = _compare(
        {k: v.shape for k, v in main_state_dict(model).items()}, _tensor_shapes(folder / report.weights_file))
    ae_file = folder / "ae.safetensors"
    expected_ae = {k: v.shape for k, v in model.autoencoder.state_dict().items()}
    if ae_file.exists():
        report.ae_missing, report.ae_unexpected, mism = _compare(expected_ae, _tensor_shapes(ae_file))
        report.mismatched += [f"ae:{k}" for k in mism]
    else:
        report.ae_missing = sorted(expected_ae)
    if (folder / "lineage.json").exists():
        report.lineage = json.loads((folder / "lineage.json").read_text())
    return report


def build_meta(cfg: ModelConfig, special: SpecialTokens = DEFAULT_SPECIAL) -> UniMedVL:
    """The model's structure on the meta device: no memory, no random initialisation."""
    with torch.device("meta"):
        return UniMedVL(cfg, special=special)


def _assign(module: nn.Module, path: Path, expected: dict[str, torch.Tensor], dtype, device):
    """Read the tensors of `path` that fit `module` (shapes checked from the header first) and adopt them
    as its parameters: assign=True keeps no second copy (and each parameter's requires_grad)."""
    missing, unexpected, mismatched = _compare({k: v.shape for k, v in expected.items()}, _tensor_shapes(path))
    usable = set(expected) - set(missing) - set(mismatched)
    module.load_state_dict(read_safetensors(path, dtype, device, keys=usable), strict=False, assign=True)
    return missing, unexpected, mismatched


def _materialise_leftovers(model: nn.Module, device, dtype: torch.dtype) -> None:
    """Parameters the files did not provide are still on the meta device: give them zeros (the report
    names them; a model with missing keys is for inspection, training refuses it)."""
    for mod in model.modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.is_meta:
                setattr(mod, name, nn.Parameter(torch.zeros(p.shape, dtype=dtype, device=device),
                                                requires_grad=p.requires_grad))
        for name, b in list(mod.named_buffers(recurse=False)):
            if b.is_meta:
                mod.register_buffer(name, torch.zeros(b.shape, dtype=b.dtype, device=device))


def load_model(
    folder: str | Path,
    weights: str = "ema",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = torch.float32,
    tokenizer=None,
) -> tuple[UniMedVL, LoadReport]:
    """Rebuild the model a folder describes and load its weights (`ema` or the raw `model` file).

    The model is built on the meta device and the files are read straight into the target dtype and
    device (`read_safetensors`, `load_state_dict(assign=True)`), so peak host memory is about one copy
    of the weights. A folder without tokenizer.json is refused (`MissingTokenizer`) unless `tokenizer`
    is given. Never raises on a key mismatch: the report lists missing, unexpected and mismatched keys,
    and the caller decides (fine-tuning from the released model tolerates none).
    """
    folder = Path(folder)
    special = _special(folder, tokenizer)
    cfg = read_config(folder)
    model = build_meta(cfg, special)
    wfile = folder / f"{weights}.safetensors"
    if not wfile.exists():
        raise FileNotFoundError(f"{wfile} does not exist (weights= is 'ema' or 'model')")
    report = LoadReport(folder=str(folder), weights_file=wfile.name)
    report.missing, report.unexpected, report.mismatched = _assign(model, wfile, main_state_dict(model), dtype, device)
    ae_file = folder / "ae.safetensors"
    if ae_file.exists():
        a_missing, a_unexpected, a_mismatched = _assign(model.autoencoder, ae_file, model.autoencoder.state_dict(),
                                                        dtype, device)
        report.ae_missing, report.ae_unexpected = a_missing, a_unexpected
        report.mismatched += [f"ae:{k}" for k in a_mismatched]
    else:
        report.ae_missing = sorted(model.autoencoder.state_dict())
    _materialise_leftovers(model, device, dtype or torch.float32)
    if (folder / "lineage.json").exists():
        report.lineage = json.loads((folder / "lineage.json").read_text())
    return model, report

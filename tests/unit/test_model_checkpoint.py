"""Checkpoint folders in the released layout: the key list from DESIGN section 5's formulas loads with
nothing missing or unexpected, and save -> load is bit-exact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from unimedvl.model.checkpoint import Lineage, llm_config_json, load_model, save_model, vit_config_json
from unimedvl.model.config import PRESETS, LLMConfig, ModelConfig, ViTConfig
from unimedvl.model.unimedvl import DEFAULT_SPECIAL, build_model, main_state_dict


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def released_shapes(llm: dict, vit: dict, max_latent: int, vit_side: int) -> dict[str, tuple[int, ...]]:
    """ema.safetensors keys and shapes written out from the formulas (28*L+4 LM, 16*Lv+5 ViT, 14 top)."""
    V, H, I, L = llm["vocab_size"], llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]
    hd = H // llm["num_attention_heads"]
    kv = llm["num_key_value_heads"] * hd
    s: dict[str, tuple[int, ...]] = {}
    lm = "language_model.model."
    s[lm + "embed_tokens.weight"] = (V, H)
    for i in range(L):
        p = f"{lm}layers.{i}."
        for g in ("", "_moe_gen"):
            s[f"{p}self_attn.q_proj{g}.weight"] = (H, H)
            s[f"{p}self_attn.q_proj{g}.bias"] = (H,)
            s[f"{p}self_attn.k_proj{g}.weight"] = (kv, H)
            s[f"{p}self_attn.k_proj{g}.bias"] = (kv,)
            s[f"{p}self_attn.v_proj{g}.weight"] = (kv, H)
            s[f"{p}self_attn.v_proj{g}.bias"] = (kv,)
            s[f"{p}self_attn.o_proj{g}.weight"] = (H, H)
            s[f"{p}self_attn.q_norm{g}.weight"] = (hd,)
            s[f"{p}self_attn.k_norm{g}.weight"] = (hd,)
            s[f"{p}mlp{g}.gate_proj.weight"] = (I, H)
            s[f"{p}mlp{g}.up_proj.weight"] = (I, H)
            s[f"{p}mlp{g}.down_proj.weight"] = (H, I)
            s[f"{p}input_layernorm{g}.weight"] = (H,)
            s[f"{p}post_attention_layernorm{g}.weight"] = (H,)
    s[lm + "norm.weight"] = (H,)
    s[lm + "norm_moe_gen.weight"] = (H,)
    s["language_model.lm_head.weight"] = (V, H)
    Hv, Iv, P, C = vit["hidden_size"], vit["intermediate_size"], vit["patch_size"], 3
    Lv = vit["num_hidden_layers"] - 1
    vm = "vit_model.vision_model."
    s[vm + "embeddings.patch_embedding.weight"] = (Hv, C * P * P)
    s[vm + "embeddings.patch_embedding.bias"] = (Hv,)
    s[vm + "embeddings.position_embedding.weight"] = ((vit["image_size"] // P) ** 2, Hv)
    for i in range(Lv):
        p = f"{vm}encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            s[p + n + ".weight"], s[p + n + ".bias"] = (Hv,), (Hv,)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[f"{p}self_attn.{n}.weight"], s[f"{p}self_attn.{n}.bias"] = (Hv, Hv), (Hv,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (Iv, Hv), (Iv,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (Hv, Iv), (Hv,)
    s[vm + "post_layernorm.weight"], s[vm + "post_layernorm.bias"] = (Hv,), (Hv,)
    z = 2 * 2 * 16
    s["connector.fc1.weight"], s["connector.fc1.bias"] = (H, Hv), (H,)
    s["connector.fc2.weight"], s["connector.fc2.bias"] = (H, H), (H,)
    s["vit_pos_embed.pos_embed"] = (vit_side**2, H)
    s["latent_pos_embed.pos_embed"] = (max_latent**2, H)
    s["time_embedder.mlp.0.weight"], s["time_embedder.mlp.0.bias"] = (H, 256), (H,)
    s["time_embedder.mlp.2.weight"], s["time_embedder.mlp.2.bias"] = (H, H), (H,)
    s["vae2llm.weight"], s["vae2llm.bias"] = (H, z), (H,)
    s["llm2vae.weight"], s["llm2vae.bias"] = (z, H), (z,)
    assert len(s) == 28 * L + 4 + 16 * Lv + 5 + 14
    return s


def test_formula_matches_the_released_paper_counts():
    llm = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4}
    vit = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "patch_size": 14, "image_size": 980}
    shapes = released_shapes(llm, vit, 64, 70)
    total = sum(torch.Size(sh).numel() for sh in shapes.values())
    assert (len(shapes), total) == (1223, 14_607_260_128)
    meta = main_state_dict(build_model(PRESETS["paper"], "meta"))
    assert {k: tuple(v.shape) for k, v in meta.items()} == shapes


@pytest.mark.parametrize("preset", ["tiny"])
def test_released_style_folder_loads_with_nothing_missing(tmp_path, preset):
    """A folder as the release ships it (no unimedvl_config.json), with random tensors of the formula
    shapes, loads with no missing, unexpected or mismatched keys, and the values land in place."""
    cfg = PRESETS[preset]
    llm, vit = llm_config_json(cfg.llm), vit_config_json(cfg.vit)
    shapes = released_shapes(llm, vit, max_latent=6, vit_side=cfg.vit.patches_per_side)
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(sh, generator=g) for k, sh in shapes.items()}
    save_file(tensors, str(tmp_path / "ema.safetensors"))
    ae = build_model(cfg, "meta").autoencoder.state_dict()
    save_file({k: torch.randn(v.shape, generator=g) for k, v in ae.items()}, str(tmp_path / "ae.safetensors"))
    (tmp_path / "llm_config.json").write_text(json.dumps(llm))
    (tmp_path / "vit_config.json").write_text(json.dumps(vit))
    model, report = load_model(tmp_path, tokenizer=DEFAULT_SPECIAL)
    assert report.ok, report
    assert model.cfg.max_latent_size == 6  # read from the stored latent position table
    sd = model.state_dict()
    for k in ("language_model.model.layers.0.self_attn.q_proj_moe_gen.weight", "latent_pos_embed.pos_embed",
              "vit_model.vision_model.embeddings.patch_embedding.weight", "llm2vae.bias"):
        assert torch.equal(sd[k], tensors[k])


def test_report_lists_missing_and_unexpected(tmp_path):
    cfg = PRESETS["tiny"]
    model = build_model(cfg)
    save_model(model, tmp_path)
    sd = main_state_dict(model)
    sd.pop("llm2vae.bias")
    sd["extra.weight"] = torch.zeros(2)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "ema.safetensors"))
    _, report = load_model(tmp_path, tokenizer=DEFAULT_SPECIAL)
    assert report.missing == ["llm2vae.bias"] and report.unexpected == ["extra.weight"] and not report.ok


def test_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(llm=LLMConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2),
                      vit=ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                    patch_size=8, image_size=32))
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # every tensor distinct from its initialisation
    ema = build_model(cfg)
    lineage = Lineage(data_manifest_sha256="ab" * 32, git_commit="deadbeef", params_hash="cd" * 32,
                      parent_checkpoint="runs/stage1")
    save_model(model, tmp_path / "ckpt", lineage, ema=ema)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["ae.safetensors", "ema.safetensors", "lineage.json", "llm_config.json", "model.safetensors",
                     "unimedvl_config.json", "vit_config.json"]
    raw, report = load_model(tmp_path / "ckpt", weights="model", tokenizer=DEFAULT_SPECIAL)
    assert report.ok and raw.cfg == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(raw.state_dict()[k], v), k
    smoothed, report = load_model(tmp_path / "ckpt", tokenizer=DEFAULT_SPECIAL)
    assert torch.equal(smoothed.llm2vae.weight, ema.llm2vae.weight)
    assert report.lineage["git_commit"] == "deadbeef" and report.lineage["parent_checkpoint"] == "runs/stage1"
    assert set(report.lineage["files"]) == {"ae.safetensors", "ema.safetensors", "model.safetensors"}
    llm = json.loads((tmp_path / "ckpt" / "llm_config.json").read_text())
    assert llm["num_key_value_heads"] == 2 and llm["vocab_size"] == 256
    vit = json.loads((tmp_path / "ckpt" / "vit_config.json").read_text())
    assert vit["num_hidden_layers"] == 2 and len(raw.vit_model.vision_model.encoder.layers) == 1


def _tiny_folder(tmp_path, tokenizer=True):
    from unimedvl.model.tokenizer import train_tokenizer

    tok = train_tokenizer(["a chest x-ray", "a brain mri"] * 20, 300, tmp_path / "t.json") if tokenizer else None
    from dataclasses import replace

    cfg = PRESETS["tiny"].replace(llm=replace(PRESETS["tiny"].llm, vocab_size=tok.vocab_size if tok else 300))
    torch.manual_seed(1)
    model = build_model(cfg)
    return save_model(model, tmp_path / "m", tokenizer=tok), model


def test_folder_without_tokenizer_is_refused_naming_the_file(tmp_path):
    from unimedvl.model.checkpoint import MissingTokenizer

    folder, _ = _tiny_folder(tmp_path, tokenizer=False)
    with pytest.raises(MissingTokenizer, match=r"m/tokenizer\.json does not exist"):
        load_model(folder)
    _, report = load_model(folder, tokenizer=DEFAULT_SPECIAL)  # the caller may vouch for the ids
    assert report.ok


def test_meta_build_loads_into_the_target_dtype_without_initialising(tmp_path, monkeypatch):
    from unimedvl.model import unimedvl as um
    from unimedvl.model.checkpoint import inspect_folder

    folder, model = _tiny_folder(tmp_path)

    def no_init(*a, **k):
        raise AssertionError("loading must not run a random initialisation")

    monkeypatch.setattr(um.UniMedVL, "init_weights", no_init)
    loaded, report = load_model(folder, dtype=torch.bfloat16)
    assert report.ok and inspect_folder(folder).ok
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in loaded.parameters())
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k].to(torch.bfloat16)), k
    # Frozen tables stay frozen after assign=True.
    assert not loaded.latent_pos_embed.pos_embed.requires_grad and loaded.llm2vae.weight.requires_grad


def test_table_sizes_come_from_the_stored_tensors(tmp_path):
    """A folder whose ViT position table is larger than its ViT image size implies still loads cleanly."""
    from unimedvl.model.checkpoint import inspect_folder

    folder, model = _tiny_folder(tmp_path)
    sd = main_state_dict(model)
    h = model.cfg.llm.hidden_size
    sd["vit_pos_embed.pos_embed"] = torch.randn(12 * 12, h)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "ema.safetensors"))
    assert inspect_folder(folder).ok
    loaded, report = load_model(folder)
    assert report.ok and loaded.cfg.vit_max_num_patch_per_side == 12
    assert torch.equal(loaded.vit_pos_embed.pos_embed, sd["vit_pos_embed.pos_embed"])

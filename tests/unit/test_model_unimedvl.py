"""The whole model: the encoders, both losses, condition dropout, overfitting, and sampling."""

from __future__ import annotations

import math
import random

import pytest
import torch

from unimedvl.model.autoencoder import AutoEncoder, patchify_latent, sincos_2d, unpatchify_latent
from unimedvl.model.config import PRESETS
from unimedvl.model.unimedvl import (
    DEFAULT_SPECIAL,
    LatentImage,
    Text,
    VitImage,
    build_model,
    drop_conditions,
    pack,
)
from unimedvl.model.vision import patchify_image


pytestmark = pytest.mark.usefixtures("one_torch_thread")


EOS = DEFAULT_SPECIAL.eos


def test_vit_patch_order_and_variable_sizes():
    cfg = PRESETS["tiny"]
    img = torch.arange(3 * 16 * 24, dtype=torch.float32).reshape(3, 16, 24)
    patches = patchify_image(img, 8)
    assert patches.shape == (2 * 3, 8 * 8 * 3)
    # (ph, pw, c) order: the first three features are the three channels of pixel (0, 0).
    assert patches[0, :3].tolist() == img[:, 0, 0].tolist()
    assert patches[0, 3:6].tolist() == img[:, 0, 1].tolist()
    model = build_model(cfg)
    batch = pack([[VitImage(torch.zeros(3, 64, 48))], [VitImage(torch.zeros(3, 32, 64))]], cfg)
    assert batch.vit_seqlens == [8 * 6, 4 * 8]
    with torch.no_grad():
        feats = model.vit_model(batch.vit_patches, batch.vit_position_ids, batch.vit_seqlens)
    assert feats.shape == (80, cfg.vit.hidden_size)
    assert len(model.vit_model.vision_model.encoder.layers) == cfg.vit.num_hidden_layers - 1


def test_autoencoder_shapes_and_latent_patches():
    cfg = PRESETS["tiny"].vae
    ae = AutoEncoder(cfg).eval()
    with torch.no_grad():
        z = ae.encode(torch.zeros(1, 3, 64, 48))
        assert z.shape == (1, cfg.z_channels, 8, 6)
        assert ae.decode(z).shape == (1, 3, 64, 48)
    lat = torch.randn(16, 8, 6)
    tok = patchify_latent(lat, 2)
    assert tok.shape == (12, 64)
    assert torch.equal(unpatchify_latent(tok, 4, 3, 2, 16), lat)
    # MAE's table: channels [sin(col w), cos(col w), sin(row w), cos(row w)], w_j = 10000^(-j / 8).
    table = sincos_2d(32, 4)
    assert table.shape == (16, 32)
    for row, col in ((0, 0), (1, 2), (3, 1)):
        w = [10000 ** (-j / 8) for j in range(8)]
        want = ([math.sin(col * x) for x in w] + [math.cos(col * x) for x in w]
                + [math.sin(row * x) for x in w] + [math.cos(row * x) for x in w])
        assert table[row * 4 + col].tolist() == pytest.approx(want, abs=1e-6), (row, col)


def test_zero_initialised_latent_head_and_frozen_position_tables():
    model = build_model(PRESETS["tiny"])
    assert torch.count_nonzero(model.llm2vae.weight) == 0 and torch.count_nonzero(model.llm2vae.bias) == 0
    assert not model.latent_pos_embed.pos_embed.requires_grad and not model.vit_pos_embed.pos_embed.requires_grad
    assert not any(p.requires_grad for p in model.autoencoder.parameters())


def test_condition_dropout_only_touches_generation_samples():
    cfg = PRESETS["tiny"].replace(text_cond_dropout=1.0, vit_cond_dropout=1.0, vae_cond_dropout=1.0)
    img = torch.zeros(3, 32, 32)
    gen = [VitImage(img), LatentImage(image=img, noised=False), Text([5, 6]), LatentImage(image=img)]
    und = [VitImage(img), Text([5, 6]), Text([7, EOS], supervised=True)]
    rng = random.Random(0)
    kept = drop_conditions(gen, cfg, rng)
    # BAGEL: a dropped text vanishes, dropped image views keep their position slot.
    assert [type(s).__name__ for s in kept] == ["Dropped", "Dropped", "LatentImage"] and kept[2].noised
    assert pack([kept], cfg).position_ids.tolist() == [2] * 6  # 2x2 latent tokens + 2 markers
    assert drop_conditions(und, cfg, rng) == und
    template = [Text([1, 2], template=True), LatentImage(image=img)]
    assert drop_conditions(template, cfg, rng) == template  # chat-template pieces are never dropped
    none = PRESETS["tiny"].replace(text_cond_dropout=0.0, vit_cond_dropout=0.0, vae_cond_dropout=0.0)
    assert drop_conditions(gen, none, rng) == gen


def _overfit_batch(cfg):
    g = torch.Generator().manual_seed(3)
    img = torch.rand(3, 64, 64, generator=g) * 2 - 1
    lat = torch.randn(cfg.vae.z_channels, 8, 8, generator=g)
    understanding = [VitImage(img), Text([1, 20, 21, 22, 23]), Text([30, 31, 32, EOS], supervised=True)]
    generation = [Text([1, 40, 41, 42]), LatentImage(latent=lat)]
    return understanding, generation


def test_tiny_model_overfits_one_batch_then_samples():
    """Both losses fall on a fixed batch; then greedy decoding reproduces the answer and stops at
    end-of-sequence, and image sampling returns the requested size."""
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"])
    und, gen = _overfit_batch(model.cfg)
    batch = pack([und, gen], model.cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    first = None
    for step in range(80):
        out = model(batch, generator=torch.Generator().manual_seed(0))  # same noise and t every step
        first = first or {k: float(out[k].detach()) for k in ("ce", "mse")}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["n_ce"] == 4 and out["n_mse"] == 16
    last = {k: float(out[k].detach()) for k in ("ce", "mse")}
    assert last["ce"] < 0.05 * first["ce"], (first, last)
    assert last["mse"] < 0.2 * first["mse"], (first, last)

    model.eval()
    answer = model.generate_text(und[:2], max_new_tokens=10)
    assert answer == [30, 31, 32]  # stopped at EOS, which is not returned
    assert model.generate_text(und[:2], max_new_tokens=2) == [30, 31]  # cut at max_new_tokens, not past it
    # Nucleus sampling on the overfitted model: the learned token holds > 90% of the sharpened mass at
    # every position, so the nucleus is that token alone and every seed samples the answer.
    for seed in range(3):
        sampled = model.generate_text(und[:2], max_new_tokens=10, top_p=0.9, temperature=0.5,
                                      generator=torch.Generator().manual_seed(seed))
        assert sampled == [30, 31, 32], seed

    def sample(**kw):
        return model.generate_image(gen[:1], height=64, width=48, num_steps=3, generator=torch.Generator().manual_seed(0),
                                    **kw)

    image, latent = sample(cfg_text_scale=2.0), sample(cfg_text_scale=2.0, return_latent=True)
    assert image.shape == (3, 64, 48) and latent.shape == (model.cfg.vae.z_channels, 8, 6)
    # The image is the autoencoder's decoding of the sampled latent; the text guidance changes it.
    with torch.no_grad():
        assert torch.allclose(image, model.autoencoder.decode(latent[None])[0].clamp(-1, 1), atol=1e-5)
    assert not torch.allclose(latent, sample(cfg_text_scale=1.0, return_latent=True), atol=1e-3)
    # An edit starts from the source image: another source (same instruction, same noise) gives another result.
    edit = [model.edit_image(src, [1, 40, 41], num_steps=2, generator=torch.Generator().manual_seed(0), return_latent=True)
            for src in (torch.zeros(3, 32, 48), torch.full((3, 32, 48), 0.8))]
    assert edit[0].shape == (model.cfg.vae.z_channels, 4, 6) and not torch.allclose(edit[0], edit[1], atol=1e-3)


def test_image_size_must_fit_the_latent_grid():
    model = build_model(PRESETS["tiny"])
    with pytest.raises(ValueError, match="multiples of 16"):
        model.generate_image([Text([1, 2])], height=40, width=48, num_steps=2)

"""Which way the rectified flow points: the interpolation, the velocity target and the sampler agree.

The training loss is symmetric in the sign of the target and in swapping t and 1-t, so a loss curve
cannot tell a model that learned to generate from one that learned to un-generate. These tests pin
x_t = (1 - t) x0 + t eps, target = eps - x0, and an Euler sampler from t = 1 to t = 0 that reaches
the data a model was overfitted on.
"""

from __future__ import annotations

import pytest
import torch

from unimedvl.model.config import PRESETS
from unimedvl.model.unimedvl import LatentImage, Text, build_model, pack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [1, 40, 41, 42]


def _target_and_noise(cfg, seed=5):
    lat = torch.randn(cfg.vae.z_channels, 8, 8, generator=torch.Generator().manual_seed(11))
    p = cfg.latent_patch_size
    # The sampler's first draw from a generator seeded `seed` is its starting noise, token layout.
    noise = torch.randn(8 // p * (8 // p), p * p * cfg.vae.z_channels, generator=torch.Generator().manual_seed(seed))
    return lat, noise


def test_interpolation_and_velocity_target():
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"])
    lat, noise = _target_and_noise(model.cfg)
    batch = pack([[Text(PROMPT), LatentImage(latent=lat)]], model.cfg)
    seen = {}

    def keep_input(module, args, output):  # returns None: the output is left as it is
        seen["x_t"] = args[0].detach()

    hook = model.vae2llm.register_forward_hook(keep_input)
    try:
        _, _, extra = model.embed(batch, timesteps=torch.tensor([0.25]), noise=noise)
    finally:
        hook.remove()
    clean = model.clean_latent_tokens(batch)
    assert torch.allclose(seen["x_t"], 0.75 * clean + 0.25 * noise, atol=1e-6)
    assert torch.allclose(extra["target"], noise - clean, atol=1e-6)


def test_sampling_reaches_the_overfitted_latent():
    """Overfit one prompt -> latent pair with fixed noise at random t; sampling from that noise must
    land near the latent, not away from it (a flipped target lands at 2 eps - x0)."""
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"])
    lat, noise = _target_and_noise(model.cfg)
    batch = pack([[Text(PROMPT), LatentImage(latent=lat)]], model.cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        t = torch.rand(1, generator=g) * 0.9 + 0.05
        out = model(batch, timesteps=t, noise=noise)
        opt.zero_grad()
        out["mse"].backward()
        opt.step()
    model.eval()
    start = torch.linalg.vector_norm(noise - model.clean_latent_tokens(batch))
    for steps in (2, 8):  # timesteps, as in BAGEL: steps - 1 Euler updates
        sampled = model.generate_image([Text(PROMPT)], height=64, width=64, num_steps=steps, cfg_text_scale=1.0,
                                       generator=torch.Generator().manual_seed(5), return_latent=True)
        assert sampled.shape == lat.shape
        dist = torch.linalg.vector_norm(sampled - lat)
        assert dist < 0.25 * start, (steps, float(dist), float(start))

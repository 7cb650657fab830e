"""The batched reference sampler: a batch of N equals N single calls, and the image sampler reproduces
a trajectory computed here independently (full-sequence forwards, no KV cache) from the published
update rule of BAGEL's `generate_image` / `_forward_flow`."""

from __future__ import annotations

import pytest
import torch

from unimedvl.model.autoencoder import patchify_latent, unpatchify_latent
from unimedvl.model.config import PRESETS
from unimedvl.model.sampling import guidance_contexts
from unimedvl.model.unimedvl import DEFAULT_SPECIAL, LatentImage, Text, VitImage, build_model, pack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SP = DEFAULT_SPECIAL
USER = Text([SP.bos, 11, 12], template=True)
ASSISTANT = Text([SP.eos, 13, SP.bos, 14], template=True)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(PRESETS["tiny"]).eval()
    with torch.no_grad():  # a live velocity head (it is zero-initialised for training)
        m.llm2vae.weight.normal_(0, 0.05)
        m.llm2vae.bias.normal_(0, 0.05)
    return m


def _img(seed, h=32, w=32):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _contexts():
    t2i = [USER, Text([40, 41, 42]), ASSISTANT]
    vqa = [USER, VitImage(_img(1)), Text([50, 51]), ASSISTANT]
    edit = [USER, LatentImage(image=_img(2), noised=False), VitImage(_img(2)), Text([60, 61, 62, 63]), ASSISTANT]
    short = [Text([70])]
    return [t2i, vqa, edit, short]


def test_no_text_context_drops_only_the_last_text():
    a, b = Text([1, 2]), Text([3])
    img = VitImage(_img(0))
    cond, no_text, no_image = guidance_contexts([USER, a, img, b, ASSISTANT])
    assert no_text == [USER, a, img, ASSISTANT] and no_image == [USER, a, b, ASSISTANT]
    # After an image the reference's no-text context is the full context.
    _, no_text, _ = guidance_contexts([USER, a, img])
    assert no_text == [USER, a, img]


def test_batch_of_images_equals_single_calls(model):
    ctx = _contexts()
    seeds = [3, 4, 5, 6]
    kw = dict(height=32, width=32, num_steps=5, return_latent=True)
    batch = model.generate_images(ctx, seeds=seeds, **kw)
    for c, s, got in zip(ctx, seeds, batch, strict=True):
        single = model.generate_image(c, generator=torch.Generator().manual_seed(s), **kw)
        assert torch.allclose(got, single, atol=1e-4, rtol=0), float((got - single).abs().max())
    assert not torch.allclose(batch[0], batch[1])  # different prompts and seeds give different latents


def test_batch_of_texts_equals_single_calls(model):
    ctx = _contexts()
    greedy, logits = model.generate_texts(ctx, max_new_tokens=6, return_logits=True)
    sampled = model.generate_texts(ctx, max_new_tokens=6, top_p=0.9, temperature=1.5, seeds=[1, 2, 3, 4])
    for i, c in enumerate(ctx):
        one, one_logits = model.generate_texts([c], max_new_tokens=6, return_logits=True)
        assert greedy[i] == one[0]
        assert logits[i].shape == one_logits[0].shape and torch.allclose(logits[i], one_logits[0], atol=1e-4, rtol=0)
        assert sampled[i] == model.generate_text(c, max_new_tokens=6, top_p=0.9, temperature=1.5,
                                                 generator=torch.Generator().manual_seed(i + 1))
    # The cached decoding agrees with a full forward over context + generated tokens.
    full = pack([[*ctx[1], Text(greedy[1][:-1])]], model.cfg)
    with torch.no_grad():
        hidden, _ = model.hidden_states(full)
        ref = model.language_model.lm_head(hidden[-len(greedy[1]):]).float()
    assert torch.allclose(ref, logits[1][: len(greedy[1])], atol=1e-4, rtol=0)


# -- the reference trajectory, computed without the sampler's code ------------------------------------


def _velocity_full_sequence(model, context, x, t, h, w):
    """v(x, t | context) from one packed forward of context + a noised block holding exactly x."""
    cfg = model.cfg
    p, zc = cfg.latent_patch_size, cfg.vae.z_channels
    segs = [*context, LatentImage(latent=unpatchify_latent(x, h, w, p, zc), noised=True)]
    batch = pack([segs], cfg, model.special)
    clean = model.clean_latent_tokens(batch)  # for the noised block these are x itself
    t_all = torch.full((len(batch.latents),), float(t))
    with torch.no_grad():
        hidden, _ = model.hidden_states(batch, timesteps=t_all, noise=clean)
        rows = batch.latent_index[-x.shape[0]:]
        return model.llm2vae(hidden[rows]).float()


def _reference_latent(model, cond, no_text, no_image, seed, *, steps, shift, s_text, s_img, interval, renorm,
                      renorm_min=0.0, size=32):
    cfg = model.cfg
    h = w = size // cfg.latent_downsample
    x = torch.randn(h * w, cfg.latent_patch_size ** 2 * cfg.vae.z_channels, generator=torch.Generator().manual_seed(seed))
    ts = torch.linspace(1, 0, steps)
    ts = shift * ts / (1 + (shift - 1) * ts)
    dts = ts[:-1] - ts[1:]
    for i, t in enumerate(ts[:-1]):
        t = float(t)
        inside = interval[0] < t <= interval[1]
        v = _velocity_full_sequence(model, cond, x, t, h, w)
        if inside and s_text > 1.0:
            v_nt = _velocity_full_sequence(model, no_text, x, t, h, w)
            v_ni = _velocity_full_sequence(model, no_image, x, t, h, w)
            if renorm == "text_channel":
                vt = v_nt + s_text * (v - v_nt)
                vt = vt * (v.norm(dim=-1, keepdim=True) / (vt.norm(dim=-1, keepdim=True) + 1e-8)).clamp(renorm_min, 1)
                v = v_ni + s_img * (vt - v_ni)
            else:  # global
                vt = v_nt + s_text * (v - v_nt)
                vg = v_ni + s_img * (vt - v_ni)
                v = vg * (v.norm() / (vg.norm() + 1e-8)).clamp(renorm_min, 1)
        x = x - v * dts[i]
    return unpatchify_latent(x, h, w, cfg.latent_patch_size, cfg.vae.z_channels)


def test_text_to_image_matches_the_reference_trajectory(model):
    prompt = Text([40, 41, 42])
    cond = [USER, prompt, ASSISTANT]
    ref = _reference_latent(model, cond, [USER, ASSISTANT], cond, 7, steps=8, shift=3.0, s_text=4.0, s_img=1.5,
                            interval=(0.4, 1.0), renorm="global")
    got = model.generate_image(cond, height=32, width=32, num_steps=8, generator=torch.Generator().manual_seed(7),
                               return_latent=True)  # the defaults are the reference's t2i settings
    assert torch.allclose(got, ref, atol=1e-4, rtol=0), float((got - ref).abs().max())
    # Guidance matters here, so the comparison is not vacuous.
    plain = model.generate_image(cond, height=32, width=32, num_steps=8, cfg_text_scale=1.0,
                                 generator=torch.Generator().manual_seed(7), return_latent=True)
    assert (plain - got).abs().mean() > 1e-3


def test_edit_matches_the_reference_trajectory(model):
    img = _img(5)
    instr = Text([60, 61, 62])
    cond = [LatentImage(image=img, noised=False), VitImage(img), instr]
    ref = _reference_latent(model, cond, cond[:2], [instr], 9, steps=6, shift=3.0, s_text=4.0, s_img=2.0,
                            interval=(0.0, 1.0), renorm="text_channel", renorm_min=0.0)
    got = model.edit_image(img, [60, 61, 62], num_steps=6, generator=torch.Generator().manual_seed(9), return_latent=True)
    assert torch.allclose(got, ref, atol=1e-4, rtol=0), float((got - ref).abs().max())


def test_patchify_round_trip_used_by_the_reference():
    lat = torch.randn(16, 4, 4)
    assert torch.equal(unpatchify_latent(patchify_latent(lat, 2), 2, 2, 2, 16), lat)


def test_nucleus_keeps_the_smallest_set_holding_top_p_and_temperature_sharpens():
    from unimedvl.model.sampling import _pick

    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    g = torch.Generator().manual_seed(0)

    def drawn(top_p, temperature=1.0, n=300):
        return [_pick(logits, top_p, temperature, g) for _ in range(n)]

    assert _pick(logits[[2, 0, 1, 3]], None, 1.0, None) == 1  # greedy: the arg max, wherever it is
    # top_p 0.7: 0.5 alone holds less, 0.5 + 0.3 holds enough -> exactly tokens 0 and 1, in about 5:3.
    two = drawn(0.7)
    assert set(two) == {0, 1} and 0.5 < two.count(0) / len(two) < 0.75
    assert set(drawn(0.45)) == {0}  # the most likely token alone already holds top_p
    assert set(drawn(1.0)) == {0, 1, 2, 3}
    assert set(drawn(1.0, temperature=0.05)) == {0}  # near-zero temperature: (almost) greedy
    hot = drawn(1.0, temperature=5.0, n=600)  # a flatter distribution: the rare token far more often
    assert hot.count(3) / len(hot) > 0.15 > drawn(1.0, n=600).count(3) / 600

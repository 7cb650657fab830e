"""The MoT backbone: the attention mask, the two attention paths, hard routing, packing, the KV cache."""

from __future__ import annotations

import warnings

import pytest
import torch

from unimedvl.model.config import PRESETS, LLMConfig
from unimedvl.model.mot import (
    AttentionLayout,
    KVCache,
    LanguageModel,
    Routing,
    SampleBlocks,
    attend,
    dense_reference_attention,
)
from unimedvl.model.unimedvl import LatentImage, Text, VitImage, build_model, pack


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SPLITS = [
    [(5, "causal"), (7, "full"), (3, "causal")],  # text, image, text
    [(4, "noise"), (6, "causal")],  # a noised latent image, then text
    [(9, "causal")],  # text only
]


def reference_mask(splits) -> torch.Tensor:
    """The rules written out token by token, independent of AttentionLayout."""
    tokens = []  # (sample, split, mode)
    for s, sample in enumerate(splits):
        for j, (n, mode) in enumerate(sample):
            tokens += [(s, j, mode)] * n
    n = len(tokens)
    m = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            (sq, jq, mq), (sk, jk, mk) = tokens[q], tokens[k]
            if sq != sk:
                continue  # no attention across samples
            if jq == jk:
                m[q, k] = k <= q if mq == "causal" else True  # text causal, images bidirectional
            elif jk < jq:
                m[q, k] = mk != "noise"  # earlier splits are visible unless they are noise
    return m


def test_mask_matches_the_rules():
    layout = AttentionLayout.from_splits(SPLITS)
    dense = layout.dense()
    assert torch.equal(dense, reference_mask(SPLITS))
    # Spot checks of the rules themselves.
    assert dense[5, 11] and dense[11, 5]  # both ends of the image block see each other
    assert not dense[0, 1] and dense[1, 0]  # text is causal
    assert dense[12, 11] and dense[12, 0]  # text after an image sees it and the earlier text
    assert not dense[15:, :15].any() and not dense[:15, 15:].any()  # no cross-sample attention
    assert not dense[19:25, 15:19].any()  # later text does not see the noised image
    assert dense[15:19, 15:19].all()


def _qkv(n, hq=4, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(hq, n, d, generator=g), torch.randn(hkv, n, d, generator=g), torch.randn(hkv, n, d, generator=g))


def test_per_sample_path_equals_dense_reference_with_gradients():
    """SampleBlocks (the CPU path for packs of several samples) gives the reference's outputs and
    gradients, also when the sample ids do not rise along the pack (the rows must go back in order)."""
    layout = AttentionLayout.from_splits(SPLITS)
    relabelled = AttentionLayout(torch.tensor([2, 0, 1])[layout.sample], layout.split, layout.full, layout.noise)
    for lay in (layout, relabelled):
        mask = reference_mask(SPLITS)
        q, k, v = (t.requires_grad_() for t in _qkv(len(lay)))
        ref = dense_reference_attention(q, k, v, mask)
        weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
        (ref * weights).sum().backward()
        ref_grads = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        out = attend(q, k, v, SampleBlocks.from_layout(lay))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        (out * weights).sum().backward()
        for got, want in zip((q.grad, k.grad, v.grad), ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_whole_model_per_sample_path_equals_one_dense_mask():
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]).eval()
    a, b = _samples(model.cfg)
    batch = pack([a, b, a], model.cfg)
    assert isinstance(model.attention_mask(batch.layout), SampleBlocks)
    noise = torch.randn(16, model.cfg.patch_latent_dim)
    with torch.no_grad():
        blocks, _ = model.hidden_states(batch, timesteps=torch.tensor([0.5]), noise=noise)
        model.attention = "sdpa"
        dense, _ = model.hidden_states(batch, timesteps=torch.tensor([0.5]), noise=noise)
    torch.testing.assert_close(blocks, dense, rtol=1e-4, atol=1e-5)


def test_vit_attends_within_each_image_of_a_pack():
    """Packed images of different sizes give each image's features alone, and no image reads another:
    the reference is one dense block-diagonal mask written out here."""
    torch.manual_seed(0)
    vit = build_model(PRESETS["tiny"]).vit_model.vision_model.eval()
    p = vit.cfg.patches_per_side ** 2
    lens = [p, p // 2, p]
    patches = torch.randn(sum(lens), vit.embeddings.patch_embedding.in_features)
    pos = torch.cat([torch.arange(n) for n in lens])
    ids = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    with torch.no_grad():
        packed = vit(patches, pos, lens)
        x = vit.embeddings(patches, pos)
        for layer in vit.encoder.layers:
            a = layer.self_attn
            h = layer.layer_norm1(x)
            q, k, v = (m(h).view(len(h), a.num_heads, -1).transpose(0, 1) for m in (a.q_proj, a.k_proj, a.v_proj))
            y = dense_reference_attention(q, k, v, ids[:, None] == ids[None, :])
            x = x + a.out_proj(y.transpose(0, 1).reshape(len(h), -1))
            x = x + layer.mlp(layer.layer_norm2(x))
        masked = vit.post_layernorm(x)
        alone = vit(patches[p : p + p // 2], pos[p : p + p // 2], [p // 2])
    torch.testing.assert_close(packed, masked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[p : p + p // 2], alone, rtol=1e-4, atol=1e-5)


def test_sdpa_path_equals_dense_reference():
    layout = AttentionLayout.from_splits(SPLITS)
    q, k, v = _qkv(len(layout))
    ref = dense_reference_attention(q, k, v, reference_mask(SPLITS))
    torch.testing.assert_close(attend(q, k, v, layout.dense()), ref, rtol=1e-5, atol=1e-5)


def test_flex_path_equals_dense_reference():
    """The pinned torch (2.13, CPU build) runs flex_attention's forward on CPU, so a failure here is a
    failure, never a skip."""
    layout = AttentionLayout.from_splits(SPLITS)
    q, k, v = _qkv(len(layout))
    ref = dense_reference_attention(q, k, v, reference_mask(SPLITS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": expected on CPU
        out = attend(q, k, v, layout.block_mask())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_auto_attention_on_cpu_is_sdpa_per_sample_and_flex_when_asked():
    """`attention: auto` is flex on GPU; on CPU (flex has no backward there) SDPA per sample for a pack
    of several samples, whose blocks are the reference rules, and one dense mask for a single sample."""
    from torch.nn.attention.flex_attention import BlockMask

    model = build_model(PRESETS["tiny"])
    layout = AttentionLayout.from_splits(SPLITS)
    assert model.attention == "auto"
    blocks = model.attention_mask(layout)
    assert isinstance(blocks, SampleBlocks)
    ref = reference_mask(SPLITS)
    for b, length in enumerate(sum(n for n, _ in sample) for sample in SPLITS):
        rows = blocks.index[b, :length]
        assert blocks.valid[b, :length].all() and not blocks.valid[b, length:].any()
        assert torch.equal(blocks.mask[b, 0, :length, :length], ref[rows][:, rows])
        assert not blocks.mask[b, 0, :length, length:].any()  # real queries never see padding
    single = model.attention_mask(AttentionLayout.from_splits(SPLITS[:1]))
    assert isinstance(single, torch.Tensor) and torch.equal(single, reference_mask(SPLITS[:1]))
    model.attention = "flex"
    assert isinstance(model.attention_mask(layout), BlockMask)
    model.attention = "sdpa"
    dense = model.attention_mask(layout)
    assert isinstance(dense, torch.Tensor) and torch.equal(dense, ref)


def _params(lm: LanguageModel, gen: bool) -> dict[str, torch.nn.Parameter]:
    """Expert-owned parameters: the `_moe_gen` twins, or the understanding weights that have a twin."""
    named = dict(lm.named_parameters())
    twins = {n for n in named if "_moe_gen" in n}
    if gen:
        return {n: named[n] for n in twins}
    return {n.replace("_moe_gen", ""): named[n.replace("_moe_gen", "")] for n in twins} | {"lm_head.weight": lm.lm_head.weight}


@pytest.mark.parametrize("loss_on", ["gen", "und"])
def test_hard_routing_gradients(loss_on):
    """Two packed samples, one all text (understanding), one all latent (generation). A loss on one
    kind of token gives exactly zero gradient to the other expert (and nothing leaks across samples)."""
    torch.manual_seed(0)
    cfg = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    lm = LanguageModel(cfg)
    lm.init_weights()
    n_und, n_gen = 6, 5
    layout = AttentionLayout.from_splits([[(n_und, "causal")], [(n_gen, "full")]])
    is_gen = torch.tensor([False] * n_und + [True] * n_gen)
    x = torch.randn(n_und + n_gen, cfg.hidden_size)
    pos = torch.cat([torch.arange(n_und), torch.zeros(n_gen, dtype=torch.long)])
    h = lm.model(x, Routing.from_gen_mask(is_gen), pos, layout.dense())
    if loss_on == "gen":
        h[is_gen].pow(2).sum().backward()
    else:
        lm.lm_head(h[~is_gen]).pow(2).sum().backward()
    silent = _params(lm, gen=(loss_on == "und"))
    active = _params(lm, gen=(loss_on == "gen"))
    for name, p in silent.items():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    for name, p in active.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_generation_expert_can_start_as_a_copy():
    lm = LanguageModel(LLMConfig(num_hidden_layers=1))
    lm.init_weights()
    lm.copy_und_to_gen()
    layer = lm.model.layers[0]
    assert torch.equal(layer.self_attn.q_proj.weight, layer.self_attn.q_proj_moe_gen.weight)
    assert torch.equal(layer.mlp.down_proj.weight, layer.mlp_moe_gen.down_proj.weight)
    assert layer.self_attn.q_proj.weight.data_ptr() != layer.self_attn.q_proj_moe_gen.weight.data_ptr()


def _samples(cfg):
    g = torch.Generator().manual_seed(1)
    img = torch.rand(3, 64, 48, generator=g) * 2 - 1
    lat = torch.randn(cfg.vae.z_channels, 8, 8, generator=g)
    a = [VitImage(img), Text([5, 6, 7]), Text([8, 9, 2], supervised=True)]
    b = [Text([10, 11, 12]), LatentImage(latent=lat)]
    return a, b


def test_packed_equals_unpacked():
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]).eval()
    with torch.no_grad():  # give the latent head a non-zero output so the check covers it
        model.llm2vae.weight.normal_(std=0.02)
    a, b = _samples(model.cfg)
    noise = torch.randn(16, model.cfg.patch_latent_dim)
    t = torch.tensor([0.7])
    with torch.no_grad():
        packed, _ = model.hidden_states(pack([a, b], model.cfg), timesteps=t, noise=noise)
        alone_a, _ = model.hidden_states(pack([a], model.cfg))
        alone_b, _ = model.hidden_states(pack([b], model.cfg), timesteps=t, noise=noise)
    torch.testing.assert_close(packed, torch.cat([alone_a, alone_b]), rtol=1e-4, atol=1e-5)
    la = pack([a, b], model.cfg)
    with torch.no_grad():
        ab = model(la, timesteps=t, noise=noise)
        sa = model(pack([a], model.cfg))
    torch.testing.assert_close(ab["ce"], sa["ce"], rtol=1e-4, atol=1e-5)


def test_kv_cache_equals_full_forward():
    """Prefilling a context then decoding one token gives the same state as one causal pass."""
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]).eval()
    a, _ = _samples(model.cfg)
    full = pack([a], model.cfg)
    with torch.no_grad():
        ref, _ = model.hidden_states(full)
        cache, last = model.prefill(a[:-1] + [Text([8, 9])])
        lm = model.language_model.model
        x = lm.embed_tokens(torch.tensor([2]))
        out = lm(x, Routing.all_und(1), torch.tensor([cache.next_position]), None, cache, True)
    torch.testing.assert_close(last, ref[-2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[-1], ref[-1], rtol=1e-4, atol=1e-5)
    assert len(cache) == full.length and isinstance(cache, KVCache)


def test_whole_model_flex_equals_sdpa_on_cpu():
    """The GPU training path (FlexAttention + BlockMask) gives the CPU path's hidden states. On CPU
    flex_attention runs forward only (no backward), so this compares under no_grad."""
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]).eval()
    a, b = _samples(model.cfg)
    batch = pack([a, b], model.cfg)
    noise = torch.randn(16, model.cfg.patch_latent_dim)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.attention = "sdpa"
        ref, _ = model.hidden_states(batch, timesteps=torch.tensor([0.5]), noise=noise)
        model.attention = "flex"
        out, _ = model.hidden_states(batch, timesteps=torch.tensor([0.5]), noise=noise)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)

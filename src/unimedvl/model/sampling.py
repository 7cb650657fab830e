"""Sampling, batched: many prompts (and their guidance branches) per forward over one packed KV cache.

The evaluation and serving steps call two functions (also methods of `UniMedVL`)::

    images = generate_images(model, contexts, seeds=[0, 1, 2])           # list of [C, H, W] in [-1, 1]
    texts = generate_texts(model, contexts, max_new_tokens=64, seeds=...)  # list of token-id lists

Each timestep's attention runs as one padded batch (`mot.PaddedAttention`: every query block over its
own context's keys), so its cost grows with the batch, not with its square (`benchmarks/bench_sampling.py`).
`contexts` is a list of segment lists, the model's own input form (`Text`, `VitImage`,
`LatentImage(noised=False)`; build them with `unimedvl.model.layout.chat_layout`). Item i of the result
depends only on context i and seed i: a batch of N gives what N single calls give.

Images follow the reference sampler (BAGEL `inferencer.py` / `modeling/bagel/bagel.py`, which UniMedVL
uses unchanged), with its defaults and semantics:

- timesteps `linspace(1, 0, num_steps)` (num_steps grid points, num_steps - 1 Euler updates), shifted
  `s t / (1 + (s - 1) t)` with `timestep_shift` s = 3; update `x <- x - v (t_i - t_{i+1})`, where v is
  the predicted velocity noise - data;
- guidance only while `cfg_interval[0] < t <= cfg_interval[1]` (default (0.4, 1]) and only when
  `cfg_text_scale > 1`; inside, `v_text = v_nt + s_text (v - v_nt)`, then, when `cfg_img_scale > 1`,
  `v_img = v_ni + s_img (v_text - v_ni)`;
- `cfg_renorm_type`: "global" rescales the guided velocity of each image to at most the conditional
  velocity's norm over the whole image, "channel" per token, "text_channel" rescales the text-guided
  velocity per token before image guidance; the factor is clamped to [cfg_renorm_min, 1];
- the no-text context drops only the last text of the context, and only when the context ends with
  text (chat-template pieces aside); after an image it is the full context, as BAGEL's is. The
  no-image context keeps only the texts. Each context has its own rotary positions.

Defaults: text-to-image `cfg_text_scale=4, cfg_img_scale=1.5, cfg_interval=(0.4, 1), global renorm`;
editing (`edit_image`) `cfg_img_scale=2, cfg_interval=(0, 1), text_channel renorm`, as BAGEL's demo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .autoencoder import flattened_position_ids, unpatchify_latent
from .mot import KVCache, PaddedAttention, Routing

if TYPE_CHECKING:
    from .unimedvl import Segment, UniMedVL

RENORM_TYPES = ("global", "channel", "text_channel")
# BAGEL's demo settings for editing (its text-to-image ones are generate_images' defaults):
#   generate_images(model, edit_contexts, **EDIT_DEFAULTS), edit contexts from
#   chat_layout(tok, [ImageInput(vit=x, latent=x), "instruction"]).
EDIT_DEFAULTS = {"cfg_img_scale": 2.0, "cfg_interval": (0.0, 1.0), "cfg_renorm_type": "text_channel"}


def guidance_contexts(segments: list[Segment]) -> tuple[list[Segment], list[Segment], list[Segment]]:
    """(conditional, no-text, no-image) contexts of one prompt, by the reference's rules."""
    from .unimedvl import LatentImage, Text, VitImage

    last = next((i for i in range(len(segments) - 1, -1, -1)
                 if not (isinstance(segments[i], Text) and segments[i].template)), None)
    no_text = list(segments)
    if last is not None and isinstance(segments[last], Text):
        no_text = segments[:last] + segments[last + 1 :]
    no_image = [s for s in segments if isinstance(s, Text)] if any(
        isinstance(s, VitImage | LatentImage) for s in segments) else list(segments)
    return list(segments), no_text, no_image


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _generators(n: int, seeds: Sequence[int] | None, generators: Sequence[torch.Generator | None] | None):
    if seeds is not None and generators is not None:
        raise ValueError("give seeds or generators, not both")
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} contexts")
        return [torch.Generator().manual_seed(int(s)) for s in seeds]
    if generators is not None:
        if len(generators) != n:
            raise ValueError(f"{len(generators)} generators for {n} contexts")
        return list(generators)
    return [None] * n


@torch.no_grad()
def prefill(model: UniMedVL, contexts: list[list[Segment]]) -> tuple[KVCache, list[torch.Tensor | None]]:
    """Run several contexts in one packed forward; the cache knows which keys are whose. Returns the
    cache and each context's last hidden state (None for an empty context)."""
    from .unimedvl import LatentImage, pack

    for segs in contexts:
        if any(isinstance(s, LatentImage) and s.noised for s in segs):
            raise ValueError("a context holds clean images only (LatentImage(noised=False))")
    dev = model.llm2vae.weight.device
    cache = KVCache.empty(model.cfg.llm.num_hidden_layers)
    batch = pack(contexts, model.cfg, model.special)
    cache.next_positions = list(batch.next_positions)
    cache.owner = torch.zeros(0, dtype=torch.long, device=dev)
    if batch.length == 0:
        return cache, [None] * len(contexts)
    batch = batch.to(dev)
    seq, routing, _ = model.embed(batch)
    hidden = model.language_model.model(seq, routing, batch.position_ids, model.attention_mask(batch.layout), cache, True)
    cache.owner = batch.layout.sample
    cache.next_position = cache.next_positions[0] if len(contexts) == 1 else 0
    ends = torch.cumsum(torch.tensor(batch.sample_lens), 0) - 1
    last = [hidden[int(e)] if n else None for e, n in zip(ends, batch.sample_lens, strict=True)]
    return cache, last


def _forward_new(model: UniMedVL, x: torch.Tensor, routing: Routing, positions: torch.Tensor, owners: torch.Tensor,
                 cache: KVCache, update: bool) -> torch.Tensor:
    """One new token per listed sequence (`owners`), each attending to its own cached keys and itself."""
    mask = PaddedAttention.build(cache.owner, owners.tolist(), 1)
    hidden = model.language_model.model(x, routing, positions, mask, cache, update)
    if update:
        cache.owner = torch.cat([cache.owner, owners])
    return hidden


@torch.no_grad()
def generate_texts(model: UniMedVL, contexts: list[list[Segment]], max_new_tokens: int = 64, top_p: float | None = None,
                   temperature: float = 1.0, seeds: Sequence[int] | None = None,
                   generators: Sequence[torch.Generator | None] | None = None,
                   return_logits: bool = False):
    """Continue each context token by token (greedy, or nucleus sampling with `top_p`), all contexts in
    one forward per token. Each stops at end-of-sequence (not returned) or after `max_new_tokens`.
    Returns the token lists, and with `return_logits` also each item's logits [n_steps, vocab]."""
    if any(not c for c in contexts):
        raise ValueError("text generation needs a non-empty context")
    gens = _generators(len(contexts), seeds, generators)
    cache, last = prefill(model, contexts)
    lm = model.language_model
    dev = model.llm2vae.weight.device
    out: list[list[int]] = [[] for _ in contexts]
    logits_out: list[list[torch.Tensor]] = [[] for _ in contexts]
    active = list(range(len(contexts)))
    hidden = torch.stack([last[i] for i in active])
    for step in range(max_new_tokens):
        logits = lm.lm_head(hidden).float()
        still = []
        for row, i in enumerate(active):
            if return_logits:
                logits_out[i].append(logits[row].cpu())
            tok = _pick(logits[row], top_p, temperature, gens[i])
            if tok != model.special.eos:
                out[i].append(tok)
                still.append(i)
        active = still
        if not active or step == max_new_tokens - 1:
            break
        ids = torch.tensor([out[i][-1] for i in active], device=dev)
        pos = torch.tensor([cache.next_positions[i] for i in active], device=dev)
        owners = torch.tensor(active, device=dev)
        hidden = _forward_new(model, lm.model.embed_tokens(ids), Routing.all_und(len(active)), pos, owners, cache, True)
        for i in active:
            cache.next_positions[i] += 1
    if return_logits:
        return out, [torch.stack(x) if x else torch.zeros(0) for x in logits_out]
    return out


def _pick(logits: torch.Tensor, top_p: float | None, temperature: float, generator: torch.Generator | None) -> int:
    """Greedy when top_p is None, else sample from the smallest set of tokens holding top_p mass."""
    if top_p is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1)
    sorted_p, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # always keeps the most likely token
    sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    choice = torch.multinomial((sorted_p / sorted_p.sum()).cpu(), 1, generator=generator)
    return int(order[choice.to(order.device)])


def combine_guidance(v: torch.Tensor, v_nt: torch.Tensor | None, v_ni: torch.Tensor | None, text_scale: float,
                     img_scale: float, renorm_type: str, renorm_min: float) -> torch.Tensor:
    """The reference's guidance of one image's velocity [tokens, features]."""
    if text_scale <= 1.0 or v_nt is None:
        return v
    v_text = v_nt + text_scale * (v - v_nt)
    if renorm_type == "text_channel":
        scale = (v.norm(dim=-1, keepdim=True) / (v_text.norm(dim=-1, keepdim=True) + 1e-8)).clamp(renorm_min, 1.0)
        v_text = v_text * scale
        return v_ni + img_scale * (v_text - v_ni) if img_scale > 1.0 and v_ni is not None else v_text
    guided = v_ni + img_scale * (v_text - v_ni) if img_scale > 1.0 and v_ni is not None else v_text
    if renorm_type == "global":
        num, den = v.norm(), guided.norm()
    elif renorm_type == "channel":
        num, den = v.norm(dim=-1, keepdim=True), guided.norm(dim=-1, keepdim=True)
    else:
        raise ValueError(f"cfg_renorm_type must be one of {', '.join(RENORM_TYPES)}, not {renorm_type!r}")
    return guided * (num / (den + 1e-8)).clamp(renorm_min, 1.0)


@torch.no_grad()
def generate_images(
    model: UniMedVL,
    contexts: list[list[Segment]],
    *,
    height: int | None = None,
    width: int | None = None,
    num_steps: int = 50,
    timestep_shift: float = 3.0,
    cfg_text_scale: float = 4.0,
    cfg_img_scale: float = 1.5,
    cfg_interval: tuple[float, float] = (0.4, 1.0),
    cfg_renorm_type: str = "global",
    cfg_renorm_min: float = 0.0,
    seeds: Sequence[int] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    return_latent: bool = False,
) -> list[torch.Tensor]:
    """One image per context ([C, H, W] in [-1, 1]; latents [z, h, w] with `return_latent`), all of the
    same size, every context and guidance branch in one forward per timestep (see the module docstring)."""
    if num_steps < 2:
        raise ValueError("num_steps counts timesteps on the grid, as the reference's num_timesteps: at least 2")
    if cfg_renorm_type not in RENORM_TYPES:
        raise ValueError(f"cfg_renorm_type must be one of {', '.join(RENORM_TYPES)}, not {cfg_renorm_type!r}")
    height, width = height or model.cfg.image_size, width or model.cfg.image_size
    ds, p, zc = model.cfg.latent_downsample, model.cfg.latent_patch_size, model.cfg.vae.z_channels
    if height % ds or width % ds:
        raise ValueError(f"height and width must be multiples of {ds}")
    h, w = height // ds, width // ds
    n_tok, feat = h * w, p * p * zc
    gens = _generators(len(contexts), seeds, generators)
    dev, dtype = model.llm2vae.weight.device, model.llm2vae.weight.dtype

    # Branches: every context each item needs, once; a guidance context equal to the conditional one
    # reuses its branch (its velocity is the conditional velocity, as in the reference).
    branches: list[list[Segment]] = []
    item_of_branch: list[int] = []
    roles: list[tuple[int, int | None, int | None]] = []

    def add(ctx: list[Segment], i: int) -> int:
        branches.append(ctx)
        item_of_branch.append(i)
        return len(branches) - 1

    for i, segs in enumerate(contexts):
        cond, no_text, no_image = guidance_contexts(segs)
        c = add(cond, i)
        nt = ni = None
        if cfg_text_scale > 1.0:
            nt = c if _same(no_text, cond) else add(no_text, i)
            if cfg_img_scale > 1.0:
                ni = c if _same(no_image, cond) else add(no_image, i)
        roles.append((c, nt, ni))
    cache, _ = prefill(model, branches)

    lm = model.language_model.model
    nb = len(branches)
    sentinels = lm.embed_tokens(torch.tensor([model.special.start_of_image, model.special.end_of_image], device=dev))
    pos_ids = flattened_position_ids(h, w, model.cfg.max_latent_size, model.cfg.interpolate_pos).to(dev)
    lat_pos = model.latent_pos_embed(pos_ids)
    block = n_tok + 2
    owners = torch.arange(nb, device=dev).repeat_interleave(block)
    padded = PaddedAttention.build(cache.owner, list(range(nb)), block)  # the cache is fixed while sampling
    rope = torch.tensor(cache.next_positions, device=dev).repeat_interleave(block)
    is_gen = torch.zeros(nb, block, dtype=torch.bool, device=dev)
    is_gen[:, 1:-1] = True
    routing = Routing.from_gen_mask(is_gen.flatten())
    lat_rows = is_gen.flatten().nonzero().flatten()
    item_idx = torch.tensor(item_of_branch, device=dev)

    # The state stays in float32 whatever the weights' dtype (the reference keeps its noise's dtype).
    x = torch.stack([torch.randn(n_tok, feat, generator=g) for g in gens]).to(dev)  # [items, tokens, feat]
    ts = torch.linspace(1.0, 0.0, num_steps)
    ts = timestep_shift * ts / (1 + (timestep_shift - 1) * ts)
    for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
        guided = cfg_interval[0] < t <= cfg_interval[1]
        s_text, s_img = (cfg_text_scale, cfg_img_scale) if guided else (1.0, 1.0)
        temb = model.time_embedder(torch.full((1,), t, device=dev)).to(dtype)
        lat = model.vae2llm(x[item_idx].to(dtype)) + temb + lat_pos  # [branches, tokens, H]
        seq = torch.cat([sentinels[:1].expand(nb, 1, -1), lat, sentinels[1:].expand(nb, 1, -1)], dim=1).flatten(0, 1)
        hidden = model.language_model.model(seq, routing, rope, padded, cache, False)
        v_all = model.llm2vae(hidden[lat_rows]).view(nb, n_tok, feat).float()
        vs = []
        for i, (c, nt, ni) in enumerate(roles):
            v = v_all[c]
            if not guided or s_text <= 1.0:
                vs.append(v)
                continue
            vs.append(combine_guidance(v, v_all[nt] if nt is not None else None, v_all[ni] if ni is not None else None,
                                       s_text, s_img, cfg_renorm_type, cfg_renorm_min))
        x = x - torch.stack(vs) * (t - t_next)
    out = []
    ae_dtype = model.autoencoder.decoder.conv_in.weight.dtype
    for i in range(len(contexts)):
        latent = unpatchify_latent(x[i].to(dtype), h, w, p, zc)
        out.append(latent if return_latent else model.autoencoder.decode(latent[None].to(ae_dtype))[0].clamp(-1, 1))
    return out

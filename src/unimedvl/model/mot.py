"""The Mixture-of-Transformer-Experts backbone: a Qwen2-style decoder in which every layer holds two
experts, one for understanding tokens (text, ViT) and one for generation tokens (VAE latents).

Routing is hard, by token type: there is no router, so each token runs exactly one expert, while one
joint attention over the packed sequence lets the two kinds of tokens read each other. Parameter names
follow the released `language_model.*` tensors (each understanding weight has a `_moe_gen` twin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import LLMConfig

# ----------------------------------------------------------------------------------------------------
# The attention layout: one description of the packed sequence from which every mask is derived.


@dataclass
class AttentionLayout:
    """Per-token sample id, split id and split mode of a packed sequence.

    A split is a run of tokens with one attention mode: text splits are causal, image splits are
    bidirectional inside (`full`), and a noised latent image is also hidden from later splits
    (`noise`) so that nothing downstream learns from the noise. No token sees another sample.
    """

    sample: torch.Tensor  # [N] long
    split: torch.Tensor  # [N] long, increasing within a sample
    full: torch.Tensor  # [N] bool: bidirectional within the split
    noise: torch.Tensor  # [N] bool: invisible to later splits

    def __len__(self) -> int:
        return int(self.sample.numel())

    @classmethod
    def from_splits(cls, samples: list[list[tuple[int, str]]], device: torch.device | str = "cpu") -> AttentionLayout:
        """Build from, per sample, a list of (length, mode) with mode in causal | full | noise."""
        sample, split, full, noise = [], [], [], []
        s_id = 0
        for i, splits in enumerate(samples):
            for length, mode in splits:
                if mode not in ("causal", "full", "noise"):
                    raise ValueError(f"unknown attention mode {mode!r}")
                sample += [i] * length
                split += [s_id] * length
                full += [mode != "causal"] * length
                noise += [mode == "noise"] * length
                s_id += 1
        t = lambda x, dt: torch.tensor(x, dtype=dt, device=device)
        return cls(t(sample, torch.long), t(split, torch.long), t(full, torch.bool), t(noise, torch.bool))

    def mask_mod(self) -> Callable:
        """mask_mod(b, h, q, k): True where query q may attend key k; serves the dense and flex paths."""
        sample, split, full, noise = self.sample, self.split, self.full, self.noise

        def mask_mod(b, h, q, k):
            same_sample = sample[q] == sample[k]
            inside = (split[q] == split[k]) & (full[q] | (k <= q))
            earlier = (split[k] < split[q]) & ~noise[k]
            return same_sample & (inside | earlier)

        return mask_mod

    def dense(self) -> torch.Tensor:
        """Boolean [N, N] mask for scaled_dot_product_attention."""
        idx = torch.arange(len(self), device=self.sample.device)
        return self.mask_mod()(None, None, idx[:, None], idx[None, :])

    def block_mask(self, block_size: int = 128):
        """FlexAttention BlockMask: blocks that are fully masked (other samples) are skipped entirely."""
        from torch.nn.attention.flex_attention import create_block_mask

        n = len(self)
        return create_block_mask(self.mask_mod(), B=None, H=None, Q_LEN=n, KV_LEN=n,
                                 device=self.sample.device, BLOCK_SIZE=block_size)


@dataclass
class SampleBlocks:
    """The packed sequence's attention run sample by sample, as one padded batch [B, heads, L, L].

    Samples never see each other, so the dense [N, N] product spends all but sum(L_i^2) of its N^2
    work on masked pairs; this one costs B * max(L_i)^2. On a CPU, a 1,024-token pack of eight
    samples runs its attention (forward and backward) about 10x faster this way. `index` [B, L]
    holds each sample's token positions (padding repeats position 0), `valid` [B, L] marks the real
    ones, `mask` [B, 1, L, L] is the layout's rule inside each sample, and `inverse` [N] puts the
    padded batch's rows back in packed order.
    """

    index: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor
    inverse: torch.Tensor

    @classmethod
    def from_layout(cls, layout: AttentionLayout) -> SampleBlocks:
        sample = layout.sample
        dev, n = sample.device, len(layout)
        counts = torch.bincount(sample)
        nb, width = int(counts.numel()), int(counts.max())
        order = torch.argsort(sample, stable=True)
        owner = sample[order]
        rank = torch.arange(n, device=dev) - (torch.cumsum(counts, 0) - counts)[owner]
        index = torch.zeros(nb, width, dtype=torch.long, device=dev)
        valid = torch.zeros(nb, width, dtype=torch.bool, device=dev)
        index[owner, rank] = order
        valid[owner, rank] = True
        allowed = layout.mask_mod()(None, None, index[:, :, None], index[:, None, :]) & valid[:, None, :]
        # A padding row attends to itself only, so that no softmax row is empty; its output is dropped.
        allowed |= (~valid)[:, :, None] & torch.eye(width, dtype=torch.bool, device=dev)
        return cls(index, valid, allowed[:, None], torch.argsort(order))


_compiled_flex: Callable | None = None


@dataclass
class PaddedAttention:
    """Attention of `nb` equal-length query blocks (`block` tokens each, packed in order), each over its
    own keys: `key_index` [nb, Lk] picks them from the call's keys (cache + new), `key_mask` [nb, Lk]
    marks the real ones. The attention then runs as one padded batch ([nb, heads, block, Lk]) instead
    of one packed [nb * block, all keys] product, so its cost grows with the batch, not its square."""

    nb: int
    block: int
    key_index: torch.Tensor
    key_mask: torch.Tensor

    @classmethod
    def build(cls, owners: torch.Tensor, seq_ids: list[int], block: int) -> PaddedAttention:
        """`owners`: the sequence id of each cached key; the new keys are one block of `block` tokens per
        entry of `seq_ids` (the sequence each block belongs to), in order."""
        n_cache, nb = int(owners.numel()), len(seq_ids)
        rows = []
        for b, sid in enumerate(seq_ids):
            own = torch.nonzero(owners == sid).flatten()
            rows.append(torch.cat([own, n_cache + b * block + torch.arange(block, device=owners.device)]))
        lk = max(int(r.numel()) for r in rows)
        index = torch.zeros(nb, lk, dtype=torch.long, device=owners.device)
        mask = torch.zeros(nb, lk, dtype=torch.bool, device=owners.device)
        for b, r in enumerate(rows):
            index[b, : r.numel()] = r
            mask[b, : r.numel()] = True
        return cls(nb, block, index, mask)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """Grouped-query attention q [Hq, N, d], k/v [Hkv, Nk, d] under a bool mask, a BlockMask, a
    PaddedAttention, SampleBlocks, or none."""
    if isinstance(mask, SampleBlocks):
        hq, n, d = q.shape
        if k.shape[1] != n:
            raise ValueError("SampleBlocks covers a packed sequence without a cache (keys = queries)")
        qb, kb, vb = (t[:, mask.index].transpose(0, 1) for t in (q, k, v))  # [B, H, L, d]
        y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask.mask, enable_gqa=hq != k.shape[0])
        return y.transpose(0, 1)[:, mask.valid][:, mask.inverse]
    if isinstance(mask, PaddedAttention):
        hq, n, d = q.shape
        qb = q.view(hq, mask.nb, mask.block, d).transpose(0, 1)  # [nb, Hq, block, d]
        kb = k[:, mask.key_index].transpose(0, 1)  # [nb, Hkv, Lk, d]
        vb = v[:, mask.key_index].transpose(0, 1)
        y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask.key_mask[:, None, None, :],
                                           enable_gqa=hq != k.shape[0])
        return y.transpose(0, 1).reshape(hq, n, d)
    if mask is not None and not isinstance(mask, torch.Tensor):
        from torch.nn.attention.flex_attention import flex_attention

        global _compiled_flex
        fn = flex_attention
        if q.is_cuda:
            # Uncompiled flex attention materialises the full score matrix; compiled, it is a fused kernel.
            if _compiled_flex is None:
                _compiled_flex = torch.compile(flex_attention, dynamic=False)
            fn = _compiled_flex
        return fn(q[None], k[None], v[None], block_mask=mask, enable_gqa=True)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[0] != k.shape[0])


# ----------------------------------------------------------------------------------------------------
# Routing: which rows of the packed sequence each expert owns.


@dataclass
class Routing:
    """Indices of understanding and generation tokens; `None` when one side is empty (a fast path)."""

    n: int
    und: torch.Tensor | None
    gen: torch.Tensor | None
    # Run both experts even when one side is empty (zero rows): under ZeRO-3 every rank must call the
    # same modules, since each call gathers that module's partitioned parameters collectively.
    uniform: bool = False

    @classmethod
    def from_gen_mask(cls, is_gen: torch.Tensor, uniform: bool = False) -> Routing:
        n = int(is_gen.numel())
        gen = torch.nonzero(is_gen).flatten()
        und = torch.nonzero(~is_gen).flatten()
        if uniform:
            return cls(n, und, gen, True)
        return cls(n, und if und.numel() else None, gen if gen.numel() else None)

    @classmethod
    def all_und(cls, n: int) -> Routing:
        return cls(n, None, None)

    def apply(self, x: torch.Tensor, f_und: Callable, f_gen: Callable) -> torch.Tensor:
        """Run f_und on understanding rows and f_gen on generation rows; rows keep their places."""
        if self.uniform and (self.gen is None or self.und is None):
            raise ValueError("a uniform routing holds both index sets (possibly empty)")
        if self.gen is None:
            return f_und(x)
        if self.und is None:
            return f_gen(x)
        a = f_und(x.index_select(0, self.und))
        b = f_gen(x.index_select(0, self.gen))
        out = a.new_empty((self.n, *a.shape[1:]))
        out.index_copy_(0, self.und, a)
        out.index_copy_(0, self.gen, b)
        return out


# ----------------------------------------------------------------------------------------------------
# Building blocks.


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 (bf16 sums of squares lose too much)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [N, head_dim] of the rotary embedding at integer positions."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim)
    freqs = position_ids.float()[:, None] * inv_freq[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [N, heads, d] by its positions (rotate-half convention, as Qwen2)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoTAttention(nn.Module):
    """Grouped-query attention with QK-norm; projections and norms exist once per expert."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", nn.Linear(h, self.num_heads * d, bias=True))
            setattr(self, f"k_proj{suffix}", nn.Linear(h, self.num_kv_heads * d, bias=True))
            setattr(self, f"v_proj{suffix}", nn.Linear(h, self.num_kv_heads * d, bias=True))
            setattr(self, f"o_proj{suffix}", nn.Linear(self.num_heads * d, h, bias=False))
            setattr(self, f"q_norm{suffix}", RMSNorm(d, cfg.rms_norm_eps))
            setattr(self, f"k_norm{suffix}", RMSNorm(d, cfg.rms_norm_eps))

    def project(self, x: torch.Tensor, gen: bool) -> torch.Tensor:
        """Normed q, k and v of one expert, concatenated so one scatter serves all three."""
        s = "_moe_gen" if gen else ""
        n = x.shape[0]
        q = getattr(self, f"q_norm{s}")(getattr(self, f"q_proj{s}")(x).view(n, self.num_heads, self.head_dim))
        k = getattr(self, f"k_norm{s}")(getattr(self, f"k_proj{s}")(x).view(n, self.num_kv_heads, self.head_dim))
        v = getattr(self, f"v_proj{s}")(x)
        return torch.cat([q.flatten(1), k.flatten(1), v], dim=-1)


class MoTDecoderLayer(nn.Module):
    """One decoder layer: per-expert norms, projections and MLP around one joint attention."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        h = cfg.hidden_size
        self.self_attn = MoTAttention(cfg)
        self.mlp = MLP(h, cfg.intermediate_size)
        self.mlp_moe_gen = MLP(h, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.input_layernorm_moe_gen = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = RMSNorm(h, cfg.rms_norm_eps)

    def _qkv(self, gen: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        norm = self.input_layernorm_moe_gen if gen else self.input_layernorm
        return lambda x: self.self_attn.project(norm(x), gen)

    def _out(self, gen: bool, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
        a = self.self_attn
        o_proj = a.o_proj_moe_gen if gen else a.o_proj
        norm = self.post_attention_layernorm_moe_gen if gen else self.post_attention_layernorm
        mlp = self.mlp_moe_gen if gen else self.mlp

        def run(xy: torch.Tensor) -> torch.Tensor:
            x, y = xy[:, :width], xy[:, width:]
            x = x + o_proj(y)
            return x + mlp(norm(x))

        return run

    def forward(
        self,
        x: torch.Tensor,
        routing: Routing,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a = self.self_attn
        n, width = x.shape
        qkv = routing.apply(x, self._qkv(False), self._qkv(True))
        hq, hk = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        q = qkv[:, :hq].view(n, a.num_heads, a.head_dim)
        k = qkv[:, hq : hq + hk].view(n, a.num_kv_heads, a.head_dim)
        v = qkv[:, hq + hk :].view(n, a.num_kv_heads, a.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k, v = k.transpose(0, 1), v.transpose(0, 1)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        y = attend(q.transpose(0, 1), k, v, mask).transpose(0, 1).reshape(n, hq)
        # The residual travels with the attention output so that one gather/scatter covers the tail.
        out = routing.apply(torch.cat([x, y], dim=-1), self._out(False, width), self._out(True, width))
        return out, (k, v)


@dataclass
class KVCache:
    """Keys and values (after rotary) of a context, per layer: one sequence, or several packed end to
    end (`owner`: which sequence each cached key belongs to; `next_positions`: each one's next rotary
    position), so one forward serves a whole batch of prompts and their guidance branches."""

    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    next_position: int = 0
    owner: torch.Tensor | None = None
    next_positions: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        return cls([None] * num_layers, [None] * num_layers, 0)

    def __len__(self) -> int:
        k = self.keys[0] if self.keys else None
        return 0 if k is None else int(k.shape[1])

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        k = self.keys[i]
        return None if k is None else (k, self.values[i])


class MoTModel(nn.Module):
    """Embedding table, the decoder layers and the per-expert final norms (`language_model.model`)."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        routing: Routing,
        position_ids: torch.Tensor,
        mask,
        cache: KVCache | None = None,
        update_cache: bool = False,
    ) -> torch.Tensor:
        """Packed embeddings [N, H] -> final hidden states [N, H].

        With a cache, queries also see every cached key (the mask covers only the new tokens and is
        widened here); `update_cache` appends this call's keys and values.
        """
        cos, sin = rotary_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if cache is not None and len(cache) and isinstance(mask, torch.Tensor) and mask.shape[1] == x.shape[0]:
            # A mask over the new tokens only: they see the whole (single-sequence) cache. Batched
            # callers pass the full [new, cached + new] mask themselves.
            mask = torch.cat([mask.new_ones(mask.shape[0], len(cache)), mask], dim=1)
        for i, layer in enumerate(self.layers):
            past = cache.layer(i) if cache is not None else None
            x, (k, v) = layer(x, routing, cos, sin, mask, past)
            if update_cache and cache is not None:
                cache.keys[i], cache.values[i] = k, v
        if update_cache and cache is not None:
            cache.next_position = int(position_ids.max()) + 1
        return routing.apply(x, self.norm, self.norm_moe_gen)


class LanguageModel(nn.Module):
    """The backbone and its untied output head (`language_model`)."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        self.model = MoTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def init_weights(self, std: float = 0.02) -> None:
        """Normal(0, std) matrices, zero biases, unit norms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    @torch.no_grad()
    def copy_und_to_gen(self) -> None:
        """Initialise every `_moe_gen` twin as a copy of its understanding weight (the paper's start)."""
        params = dict(self.named_parameters())
        for name, p in params.items():
            if "_moe_gen" in name:
                p.copy_(params[name.replace("_moe_gen", "")])


def dense_reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain softmax(QK^T/sqrt d + mask) V with repeated KV heads: the yardstick for the fast paths."""
    rep = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v

"""The understanding path: a SigLIP-shaped ViT over variable-size images (NaViT packing) and the MLP
connector into the backbone's width.

Names follow the released `vit_model.vision_model.*` tensors: the patch embedding is a Linear over
(ph, pw, c)-ordered patches, the position embedding is a learned table of (image_size/P)^2 rows, and
only num_hidden_layers - 1 layers exist because the model reads the penultimate layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ViTConfig
from .mot import AttentionLayout, SampleBlocks, attend


def patchify_image(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Image [C, H, W] -> patches [(H/P)*(W/P), P*P*C] in (ph, pw, c) order; H and W are cropped to P."""
    c, hh, ww = image.shape
    p = patch_size
    h, w = hh // p, ww // p
    x = image[:, : h * p, : w * p].reshape(c, h, p, w, p)
    return torch.einsum("chpwq->hwpqc", x).reshape(h * w, p * p * c)


class VisionEmbeddings(nn.Module):
    """Linear patch embedding plus a learned absolute position embedding."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_embedding = nn.Linear(cfg.num_channels * cfg.patch_size**2, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.patches_per_side**2, cfg.hidden_size)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(patches) + self.position_embedding(position_ids)


class VisionAttention(nn.Module):
    """Multi-head self-attention restricted to each image of the pack."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, blocks: SampleBlocks | None) -> torch.Tensor:
        """`blocks`: each image of the pack attends within itself (None: the pack is one image)."""
        n, d = x.shape
        q, k, v = (m(x).view(n, self.num_heads, -1).transpose(0, 1) for m in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(attend(q, k, v, blocks).transpose(0, 1).reshape(n, d))


class VisionMLP(nn.Module):
    """Two-layer GELU(tanh) feed-forward."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VisionLayer(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, blocks: SampleBlocks | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), blocks)
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    """The stack of kept layers."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(cfg) for _ in range(cfg.kept_layers))


class VisionTransformer(nn.Module):
    """Packed patches of several images -> one feature vector per patch (penultimate layer, normed)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        x = self.embeddings(patches, position_ids)
        # Several images: per-image attention as one padded batch (the backbone's mechanism), not N^2.
        blocks = (SampleBlocks.from_layout(AttentionLayout.from_splits([[(n, "full")] for n in seqlens], x.device))
                  if len(seqlens) > 1 else None)
        for layer in self.encoder.layers:
            x = layer(x, blocks)
        return self.post_layernorm(x)


class VisionModel(nn.Module):
    """Holder that gives the released `vit_model.vision_model.*` names."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.vision_model = VisionTransformer(cfg)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        return self.vision_model(patches, position_ids, seqlens)


class MLPConnector(nn.Module):
    """ViT features -> backbone width (fc1, GELU(tanh), fc2)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

"""The generation path's pieces: the convolutional VAE (FLUX layout), latent patchify, timestep and 2D
position embeddings.

Parameter names follow the FLUX `ae.safetensors` (encoder.down.{i}.block.{j}, encoder.mid.attn_1,
decoder.up.{i}, ...) so a real FLUX autoencoder loads into the `paper` preset unchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels of a feature map (the VAE's mid block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class ResnetBlock(nn.Module):
    """Two GroupNorm-SiLU-conv stages with a (1x1-projected when widths differ) skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class Downsample(nn.Module):
    """Stride-2 conv; the asymmetric pad keeps FLUX's exact output alignment."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: a list of residual blocks (and the empty `attn` list FLUX keeps)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    """The bottleneck: resnet, attention, resnet."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image [B, C, H, W] in [-1, 1] -> Gaussian moments [B, 2z, H/8, W/8]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        in_mult = (1, *mult)
        block_in = ch
        for i, m in enumerate(mult):
            block_in, block_out = ch * in_mult[i], ch * m
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            level = _Level(blocks)
            if i != len(mult) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B, z, h, w] -> image [B, C, 8h, 8w]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in)
        levels: list[_Level] = []
        for i in reversed(range(len(mult))):
            block_out = ch * mult[i]
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            level = _Level(blocks)
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)
        # Stored lowest resolution last, as FLUX does, so `decoder.up.{i}` names match the file.
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class PosteriorCache:
    """The frozen encoder's output (posterior moments) per image, found by pixel content.

    For training that draws the same few images again and again over a frozen autoencoder: the
    generation warm-up draws the demo's 349 phantom images 5,322 times in 300 steps, and encoding them
    was 38% of its step on 2 CPU cores. A miss is encoded alone, so an image's moments never depend on
    which images it was first batched with (a resumed run gets the same numbers as an uninterrupted
    one); the posterior draw itself is unchanged. Any change to the encoder's weights (an optimizer
    step, a load) empties the cache. Entries stop being added past `max_bytes`."""

    MAX_BYTES = 256 << 20

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self.entries: dict[bytes, torch.Tensor] = {}
        self.weights: tuple | None = None

    @staticmethod
    def _key(image: torch.Tensor) -> bytes:
        head = f"{tuple(image.shape)}{image.dtype}".encode()
        # the raw bytes, so a bf16 image (which numpy cannot hold) has a key too
        return hashlib.blake2b(head + image.contiguous().view(torch.uint8).numpy().tobytes(), digest_size=16).digest()

    def moments(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weights = tuple((p.data_ptr(), p._version) for p in encoder.parameters())
        if weights != self.weights:
            self.entries.clear()
            self.bytes, self.weights = 0, weights
        out = []
        for image in x:
            key = self._key(image)
            m = self.entries.get(key)
            if m is None:
                self.misses += 1
                m = encoder(image[None])[0]
                if self.bytes + m.nbytes <= self.max_bytes:
                    self.entries[key] = m
                    self.bytes += m.nbytes
            else:
                self.hits += 1
            out.append(m)
        return torch.stack(out)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "images": len(self.entries)}


class AutoEncoder(nn.Module):
    """The frozen generation autoencoder: pixels <-> scaled, shifted latents (no quant convs)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.posterior_cache: PosteriorCache | None = None  # see `posterior_cache` below

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents: the posterior mean, or (`sample`, as FLUX's encoder does in BAGEL's training)
        a draw from the posterior, from `generator`. Inside `posterior_cache(self)` (no gradients, on
        CPU) the encoder's output comes from the cache."""
        cache = self.posterior_cache
        use_cache = cache is not None and not torch.is_grad_enabled() and x.device.type == "cpu"
        mean, logvar = (cache.moments(self.encoder, x) if use_cache else self.encoder(x)).chunk(2, dim=1)
        z = mean
        if sample:
            eps = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
            z = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps
        return self.cfg.scale_factor * (z - self.cfg.shift_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z / self.cfg.scale_factor + self.cfg.shift_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


@contextmanager
def posterior_cache(autoencoder: AutoEncoder, max_bytes: int = PosteriorCache.MAX_BYTES) -> Iterator[PosteriorCache]:
    """Encode through a `PosteriorCache` while inside (training over a frozen autoencoder)."""
    autoencoder.posterior_cache = cache = PosteriorCache(max_bytes)
    try:
        yield cache
    finally:
        autoencoder.posterior_cache = None


def patchify_latent(z: torch.Tensor, p: int) -> torch.Tensor:
    """Latent [z, h*p, w*p] -> tokens [h*w, p*p*z] in (row, col, ph, pw, channel) order."""
    c, hh, ww = z.shape
    h, w = hh // p, ww // p
    z = z[:, : h * p, : w * p].reshape(c, h, p, w, p)
    return torch.einsum("chpwq->hwpqc", z).reshape(h * w, p * p * c)


def unpatchify_latent(tokens: torch.Tensor, h: int, w: int, p: int, c: int) -> torch.Tensor:
    """Inverse of `patchify_latent`: tokens [h*w, p*p*c] -> latent [c, h*p, w*p]."""
    z = tokens.reshape(h, w, p, p, c)
    return torch.einsum("hwpqc->chpwq", z).reshape(c, h * p, w * p)


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a scalar timestep per row (cos half first, as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Flow timestep t in [0, 1] -> a hidden-size vector added to each latent token."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_frequencies(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


def sincos_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2D sin-cos table [grid_size^2, embed_dim]: half the channels encode the row, half the column."""

    def one_axis(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh, gw = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64), indexing="ij")
    # Column half first, then row half, in MAE's order (not checked against BAGEL's); the released
    # tables are loaded from the file anyway, so this only matters for freshly built models.
    return np.concatenate([one_axis(embed_dim // 2, gw), one_axis(embed_dim // 2, gh)], axis=1).astype(np.float32)


class PositionEmbedding(nn.Module):
    """Frozen 2D sin-cos position table indexed by flattened (row * max_side + col) ids.

    A parameter (not a buffer) with requires_grad off, because the released files store it.
    """

    def __init__(self, max_num_patch_per_side: int, hidden_size: int):
        super().__init__()
        self.max_num_patch_per_side = max_num_patch_per_side
        self.pos_embed = nn.Parameter(torch.zeros(max_num_patch_per_side**2, hidden_size), requires_grad=False)
        if self.pos_embed.device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        table = sincos_2d(self.pos_embed.shape[1], self.max_num_patch_per_side)
        with torch.no_grad():
            self.pos_embed.copy_(torch.from_numpy(table))

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


def flattened_position_ids(h: int, w: int, max_side: int, interpolate: bool = False) -> torch.Tensor:
    """Position ids of an h x w token grid in a max_side x max_side table.

    Extrapolate (default) indexes the top-left h x w corner, so a token keeps its absolute position
    whatever the image size; interpolate spreads the grid over the whole table instead.
    """
    if h > max_side or w > max_side:
        raise ValueError(f"a {h}x{w} token grid exceeds the {max_side}x{max_side} position table")
    if interpolate:
        rows = (torch.arange(h) * max_side) // h
        cols = (torch.arange(w) * max_side) // w
    else:
        rows, cols = torch.arange(h), torch.arange(w)
    return (rows[:, None] * max_side + cols[None, :]).reshape(-1)

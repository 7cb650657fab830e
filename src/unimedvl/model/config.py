"""Model presets: one small typed config per component, and the four named sizes.

`paper` reproduces the released UniMedVL/BAGEL checkpoint shapes exactly (Qwen2.5-7B-shaped backbone
with two experts per layer, SigLIP-so400m-shaped ViT, FLUX autoencoder); the other presets keep the
same module layout at sizes that fit a laptop (`tiny`), a small GPU (`small`) or one GPU (`base`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class LLMConfig:
    """The Mixture-of-Transformer-Experts backbone (Qwen2-style decoder, two experts per layer)."""

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    # Not read from llm_config.json: the released code forces both, so we do too.
    qk_norm: bool = True
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")


@dataclass(frozen=True)
class ViTConfig:
    """The understanding encoder (SigLIP-style ViT); the last of `num_hidden_layers` is dropped."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 3  # as in vit_config.json; the model keeps num_hidden_layers - 1
    num_attention_heads: int = 4
    num_channels: int = 3
    patch_size: int = 8
    image_size: int = 64
    layer_norm_eps: float = 1e-6

    @property
    def kept_layers(self) -> int:
        return self.num_hidden_layers - 1

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class VAEConfig:
    """The generation autoencoder (FLUX layout): 8x downsampling to `z_channels` latent channels."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 1
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class ModelConfig:
    """How the parts are joined, and the training objective's knobs."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    latent_patch_size: int = 2
    max_latent_size: int = 8  # latent tokens per side: images up to max_latent_size * 16 px
    timestep_shift: float = 1.0
    # Image tokens index the position tables by absolute (row, col) (extrapolate, the released default)
    # or spread a small grid over the whole table (interpolate).
    interpolate_pos: bool = False
    ce_weight: float = 0.25
    mse_weight: float = 1.0
    # Probability that a training sample loses its text / ViT / clean-latent conditions, so that the
    # model also learns the unconditional velocities that classifier-free guidance subtracts.
    text_cond_dropout: float = 0.1
    vit_cond_dropout: float = 0.05
    vae_cond_dropout: float = 0.05
    image_size: int = 64  # default generated image size in pixels
    # Side of the frozen ViT position table (`vit_pos_embed`); None: the ViT's patches per side. A
    # loaded folder sets it from the stored tensor, whatever the ViT image size says.
    vit_pos_table_side: int | None = None

    @property
    def vit_max_num_patch_per_side(self) -> int:
        return self.vit_pos_table_side or self.vit.patches_per_side

    @property
    def patch_latent_dim(self) -> int:
        return self.latent_patch_size**2 * self.vae.z_channels

    @property
    def latent_downsample(self) -> int:
        return self.vae.downsample * self.latent_patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        vae = dict(d.pop("vae", {}))
        if "ch_mult" in vae:
            vae["ch_mult"] = tuple(vae["ch_mult"])
        known = {f.name for f in fields(cls)}
        return cls(
            llm=LLMConfig(**d.pop("llm", {})),
            vit=ViTConfig(**d.pop("vit", {})),
            vae=VAEConfig(**vae),
            **{k: v for k, v in d.items() if k in known},
        )

    def replace(self, **kw: Any) -> ModelConfig:
        return replace(self, **kw)


PRESETS: dict[str, ModelConfig] = {
    # CPU: a few million parameters, 64 px images, trains in minutes.
    "tiny": ModelConfig(),
    "small": ModelConfig(
        llm=LLMConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=2),
        vit=ViTConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=7, num_attention_heads=6,
                      patch_size=16, image_size=256),
        vae=VAEConfig(ch=64, ch_mult=(1, 2, 2, 4), num_res_blocks=1),
        max_latent_size=16, image_size=128,
    ),
    "base": ModelConfig(
        llm=LLMConfig(vocab_size=32000, hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                      num_attention_heads=12, num_key_value_heads=2, rope_theta=1_000_000.0),
        vit=ViTConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=13, num_attention_heads=12,
                      patch_size=16, image_size=512),
        vae=VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2),
        max_latent_size=32, image_size=256,
    ),
    # The released checkpoint: Qwen2.5-7B x 2 experts, SigLIP-so400m (27 layers, 26 kept), FLUX AE.
    "paper": ModelConfig(
        llm=LLMConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, rope_theta=1_000_000.0),
        vit=ViTConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                      patch_size=14, image_size=980),
        vae=VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2),
        max_latent_size=64, timestep_shift=1.0, image_size=1024,
        text_cond_dropout=0.3, vit_cond_dropout=0.05, vae_cond_dropout=0.05,
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The named preset, or an error that lists the names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def active_backbone_params(cfg: LLMConfig) -> int:
    """Parameters one token touches in the backbone: one expert per layer, plus the output head."""
    h, hd, kv = cfg.hidden_size, cfg.head_dim, cfg.num_key_value_heads
    attn = h * h + h + 2 * (h * kv * hd + kv * hd) + h * h + 2 * hd
    mlp = 3 * h * cfg.intermediate_size
    layer = attn + mlp + 2 * h
    return cfg.num_hidden_layers * layer + h + cfg.vocab_size * h


def flops_per_token(cfg: ModelConfig, seq_len: int = 4096, training: bool = True) -> float:
    """Backbone FLOPs per token: 2 per active weight per multiply-add pass, plus attention scores.

    Hard routing means each token runs exactly one expert, so the dense-model formula applies to the
    active parameters (PaLM appendix B): forward 2N + 2*L*S*H for QK^T and AV; training triples it.
    The ViT and autoencoder run once per image and are left out, as MFU is quoted for the backbone.
    """
    llm = cfg.llm
    fwd = 2 * active_backbone_params(llm) + 2 * 2 * llm.num_hidden_layers * seq_len * llm.hidden_size
    return float(3 * fwd if training else fwd)

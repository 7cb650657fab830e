"""UniMedVL: one network that reads medical images (ViT -> understanding expert) and writes them
(autoencoder latents -> generation expert), trained with next-token cross-entropy plus rectified-flow
MSE, and sampled with a KV cache (text) or an Euler ODE with classifier-free guidance (images; the
batched reference sampler is in sampling.py, the per-task segment layouts in layout.py).

Read top to bottom: the segments a sample is made of, packing several samples into one sequence, the
module (whose submodule names are those of the released checkpoint), the losses, then sampling.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import (
    AutoEncoder,
    PositionEmbedding,
    TimestepEmbedder,
    flattened_position_ids,
    patchify_latent,
)
from .config import ModelConfig
from .mot import AttentionLayout, KVCache, LanguageModel, Routing, SampleBlocks
from .tokenizer import SpecialTokens
from .vision import MLPConnector, VisionModel, patchify_image

# Ids of our trained tokenizer's special tokens (the trainer gives them the first ids, in order).
DEFAULT_SPECIAL = SpecialTokens(pad=0, bos=1, eos=2, start_of_image=3, end_of_image=4)

# ----------------------------------------------------------------------------------------------------
# What a sample is made of.


@dataclass
class Text:
    """Token ids; supervised ones are predicted (cross-entropy), the others only condition.

    `template` marks chat-template pieces ("<bos>user\n", "<eos>\n<bos>assistant\n"): they are never
    dropped as a condition, in training or in the no-text guidance context.
    """

    ids: list[int]
    supervised: bool = False
    template: bool = False


@dataclass
class VitImage:
    """An image the model looks at through the ViT: [C, H, W] in [-1, 1]."""

    image: torch.Tensor


@dataclass
class LatentImage:
    """An image in autoencoder latent space: a target to generate (noised) or a clean condition.

    Give `image` ([C, H, W] in [-1, 1]; the model encodes it) or `latent` ([z, h, w], already encoded).
    """

    image: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    noised: bool = True


@dataclass
class Dropped:
    """An image condition removed by condition dropout: no tokens, but it keeps its rotary slot (the
    position still advances by one), as in BAGEL's packer."""


Segment = Text | VitImage | LatentImage | Dropped


def drop_conditions(sample: list[Segment], cfg: ModelConfig, rng: random.Random) -> list[Segment]:
    """Condition dropout for classifier-free guidance, per condition as in BAGEL's packer: in a sample
    that generates an image, each content text vanishes with probability `text_cond_dropout` (its
    positions go too), each ViT view / clean latent view with `vit_cond_dropout` / `vae_cond_dropout`
    becomes `Dropped` (its position slot stays). Supervised text and template pieces are never dropped."""
    if not any(isinstance(s, LatentImage) and s.noised for s in sample):
        return sample
    kept: list[Segment] = []
    for s in sample:
        if isinstance(s, Text) and not (s.supervised or s.template) and rng.random() < cfg.text_cond_dropout:
            continue
        if isinstance(s, VitImage) and rng.random() < cfg.vit_cond_dropout:
            s = Dropped()
        elif isinstance(s, LatentImage) and not s.noised and rng.random() < cfg.vae_cond_dropout:
            s = Dropped()
        kept.append(s)
    return kept


# ----------------------------------------------------------------------------------------------------
# Packing: several samples -> one sequence with index tensors telling each token's kind and place.


@dataclass
class PackedBatch:
    """One packed sequence: where text, ViT and latent tokens go, rotary positions, mask layout, labels."""

    length: int
    text_ids: torch.Tensor
    text_index: torch.Tensor
    position_ids: torch.Tensor
    layout: AttentionLayout
    sample_lens: list[int]
    vit_patches: torch.Tensor | None = None
    vit_position_ids: torch.Tensor | None = None
    vit_index: torch.Tensor | None = None
    vit_seqlens: list[int] = field(default_factory=list)
    latents: list[LatentImage] = field(default_factory=list)
    latent_grids: list[tuple[int, int]] = field(default_factory=list)
    latent_index: torch.Tensor | None = None
    latent_position_ids: torch.Tensor | None = None
    latent_image_of_token: torch.Tensor | None = None
    ce_index: torch.Tensor | None = None
    ce_labels: torch.Tensor | None = None
    next_positions: list[int] = field(default_factory=list)  # per sample: the rotary position after it

    def to(self, device: torch.device | str) -> PackedBatch:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device)
            elif isinstance(v, AttentionLayout):
                v = AttentionLayout(*(getattr(v, n).to(device) for n in ("sample", "split", "full", "noise")))
            out[f.name] = v
        return PackedBatch(**out)


def pack(
    samples: list[list[Segment]],
    cfg: ModelConfig,
    special: SpecialTokens = DEFAULT_SPECIAL,
    dropout_rng: random.Random | None = None,
) -> PackedBatch:
    """Lay samples end to end in BAGEL's layout. Text tokens take consecutive rotary positions. Each
    image is a block <|vision_start|> tokens <|vision_end|> sharing one position (its 2D layout comes
    from the position embeddings); the position advances by one after a ViT or clean latent block and
    after a `Dropped` condition, and does not advance after a noised block. A supervised text's tokens
    are each predicted from the token before, except a first token that follows a noised block (that
    block's end marker carries the noise, so its CE would depend on the draw)."""
    long = lambda x: torch.tensor(x, dtype=torch.long)
    text_ids, text_index, positions, splits, sample_lens = [], [], [], [], []
    vit_patches, vit_pos, vit_index, vit_seqlens = [], [], [], []
    latents, grids, lat_index, lat_pos, lat_img = [], [], [], [], []
    ce_index, ce_labels = [], []
    next_positions = []
    cur = 0
    for sample in samples:
        if dropout_rng is not None:
            sample = drop_conditions(sample, cfg, dropout_rng)
        start, rope, sample_splits = cur, 0, []
        after_noise = False
        for seg in sample:
            if isinstance(seg, Dropped):
                rope += 1
                after_noise = False
                continue
            if isinstance(seg, Text):
                n = len(seg.ids)
                text_ids += seg.ids
                text_index += range(cur, cur + n)
                positions += range(rope, rope + n)
                if seg.supervised:
                    # Token j is predicted from position j - 1, whatever kind of token sits there.
                    for j, tok in enumerate(seg.ids):
                        if cur + j > start and not (j == 0 and after_noise):
                            ce_index.append(cur + j - 1)
                            ce_labels.append(tok)
                sample_splits.append((n, "causal"))
                rope += n
                cur += n
                after_noise = False
                continue
            if isinstance(seg, VitImage):
                p = cfg.vit.patch_size
                h, w = seg.image.shape[1] // p, seg.image.shape[2] // p
                vit_patches.append(patchify_image(seg.image, p))
                vit_pos.append(flattened_position_ids(h, w, cfg.vit_max_num_patch_per_side, cfg.interpolate_pos))
                vit_seqlens.append(h * w)
                vit_index += range(cur + 1, cur + 1 + h * w)
                mode = "full"
            elif isinstance(seg, LatentImage):
                p = cfg.latent_patch_size
                if seg.latent is not None:
                    hh, ww = seg.latent.shape[1:]
                elif seg.image is not None:
                    hh, ww = seg.image.shape[1] // cfg.vae.downsample, seg.image.shape[2] // cfg.vae.downsample
                else:
                    raise ValueError("a LatentImage needs an image or a latent")
                h, w = hh // p, ww // p
                lat_index += range(cur + 1, cur + 1 + h * w)
                lat_pos.append(flattened_position_ids(h, w, cfg.max_latent_size, cfg.interpolate_pos))
                lat_img += [len(latents)] * (h * w)
                latents.append(seg)
                grids.append((h, w))
                mode = "noise" if seg.noised else "full"
            else:
                raise TypeError(f"unknown segment {type(seg).__name__}")
            n = h * w + 2
            text_ids += [special.start_of_image, special.end_of_image]
            text_index += [cur, cur + n - 1]
            positions += [rope] * n
            sample_splits.append((n, mode))
            after_noise = mode == "noise"
            if not after_noise:
                rope += 1
            cur += n
        splits.append(sample_splits)
        sample_lens.append(cur - start)
        next_positions.append(rope)
    return PackedBatch(
        length=cur,
        text_ids=long(text_ids),
        text_index=long(text_index),
        position_ids=long(positions),
        layout=AttentionLayout.from_splits(splits),
        sample_lens=sample_lens,
        vit_patches=torch.cat(vit_patches) if vit_patches else None,
        vit_position_ids=torch.cat(vit_pos) if vit_pos else None,
        vit_index=long(vit_index) if vit_index else None,
        vit_seqlens=vit_seqlens,
        latents=latents,
        latent_grids=grids,
        latent_index=long(lat_index) if lat_index else None,
        latent_position_ids=torch.cat(lat_pos) if lat_pos else None,
        latent_image_of_token=long(lat_img) if lat_img else None,
        ce_index=long(ce_index) if ce_index else None,
        ce_labels=long(ce_labels) if ce_labels else None,
        next_positions=next_positions,
    )


# ----------------------------------------------------------------------------------------------------
# The model.


class UniMedVL(nn.Module):
    """The unified model. Submodules carry the released checkpoint's names; `autoencoder` is frozen and
    saved to its own file (`ae.safetensors`), never into `ema.safetensors`."""

    def __init__(self, cfg: ModelConfig, special: SpecialTokens = DEFAULT_SPECIAL, init_gen_from_und: bool = False,
                 attention: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.special = special
        self.attention = attention  # auto (flex on GPU; on CPU per-sample sdpa) | sdpa (one dense mask) | flex
        # Every module runs on every forward (zero-row or dummy inputs where a batch has none of its
        # tokens): ZeRO-3 gathers a module's parameters collectively when it runs (train/ray_job.py).
        self.uniform_calls = False
        h = cfg.llm.hidden_size
        self.language_model = LanguageModel(cfg.llm)
        self.vit_model = VisionModel(cfg.vit)
        self.connector = MLPConnector(cfg.vit.hidden_size, h)
        self.vit_pos_embed = PositionEmbedding(cfg.vit_max_num_patch_per_side, h)
        self.time_embedder = TimestepEmbedder(h)
        self.vae2llm = nn.Linear(cfg.patch_latent_dim, h)
        self.llm2vae = nn.Linear(h, cfg.patch_latent_dim)
        self.latent_pos_embed = PositionEmbedding(cfg.max_latent_size, h)
        self.autoencoder = AutoEncoder(cfg.vae).requires_grad_(False)
        if self.llm2vae.weight.device.type != "meta":
            self.init_weights(init_gen_from_und)

    @torch.no_grad()
    def init_weights(self, init_gen_from_und: bool = False) -> None:
        self.language_model.init_weights()
        for m in (self.vit_model, self.connector, self.time_embedder, self.vae2llm):
            for sub in m.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, std=0.02)
                    nn.init.zeros_(sub.bias)
        # Zero output head: the untrained model predicts zero velocity instead of noise.
        nn.init.zeros_(self.llm2vae.weight)
        nn.init.zeros_(self.llm2vae.bias)
        if init_gen_from_und:
            self.language_model.copy_und_to_gen()

    # -- embedding the packed sequence ---------------------------------------------------------------

    def _shift(self, t: torch.Tensor) -> torch.Tensor:
        """Timestep shift s t / (1 + (s - 1) t): s > 1 spends more steps near pure noise."""
        s = self.cfg.timestep_shift
        return s * t / (1 + (s - 1) * t)

    def clean_latent_tokens(self, batch: PackedBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """All latent images of the batch as patch tokens [N_latent, p*p*z], encoding images when needed:
        one encoder call per image size; in training the latents are posterior draws (as BAGEL's), in
        eval mode the posterior mean."""
        dev, dtype = self.vae2llm.weight.device, self.vae2llm.weight.dtype
        ae_dtype = self.autoencoder.encoder.conv_in.weight.dtype
        todo: dict[tuple, list[int]] = {}
        for i, seg in enumerate(batch.latents):
            if seg.latent is None:
                todo.setdefault(tuple(seg.image.shape), []).append(i)
        if self.uniform_calls and len(todo) > 1:
            raise ValueError(f"uniform calls need one image size per batch, got {sorted(todo)}")
        zs: list[torch.Tensor | None] = [s.latent for s in batch.latents]
        with torch.no_grad():
            for idx in todo.values():
                stack = torch.stack([batch.latents[i].image for i in idx]).to(dev, ae_dtype)
                for i, z in zip(idx, self.autoencoder.encode(stack, sample=self.training, generator=generator), strict=True):
                    zs[i] = z
            if self.uniform_calls and not todo:  # the encoder's one call of this forward on every rank
                self.autoencoder.encode(torch.zeros(1, self.cfg.vae.in_channels, 16, 16, device=dev, dtype=ae_dtype))
        return torch.cat([patchify_latent(z.to(dev, dtype), self.cfg.latent_patch_size) for z in zs])

    def embed(
        self,
        batch: PackedBatch,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Routing, dict]:
        """Packed input embeddings [N, H], the expert routing, and the flow-matching targets."""
        lm = self.language_model.model
        dev, dtype = lm.embed_tokens.weight.device, lm.embed_tokens.weight.dtype
        seq = torch.zeros(batch.length, self.cfg.llm.hidden_size, device=dev, dtype=dtype)
        seq = seq.index_copy(0, batch.text_index, lm.embed_tokens(batch.text_ids))
        if batch.vit_index is not None:
            feats = self.vit_model(batch.vit_patches.to(dtype), batch.vit_position_ids, batch.vit_seqlens)
            feats = self.connector(feats) + self.vit_pos_embed(batch.vit_position_ids)
            seq = seq.index_copy(0, batch.vit_index, feats)
        elif self.uniform_calls:  # a one-patch dummy keeps the ViT path in every rank's graph, at weight 0
            p = self.cfg.vit.patch_size
            ids = torch.zeros(1, dtype=torch.long, device=dev)
            dummy = self.vit_model(torch.zeros(1, self.cfg.vit.num_channels * p * p, device=dev, dtype=dtype), ids, [1])
            seq = seq + 0.0 * (self.connector(dummy) + self.vit_pos_embed(ids)).sum()
        is_gen = torch.zeros(batch.length, dtype=torch.bool, device=dev)
        extra: dict = {}
        if batch.latent_index is None and self.uniform_calls:
            ids = torch.zeros(1, dtype=torch.long, device=dev)
            with torch.no_grad():  # the encoder's one call of this forward
                self.autoencoder.encode(torch.zeros(1, self.cfg.vae.in_channels, 16, 16, device=dev,
                                                    dtype=self.autoencoder.encoder.conv_in.weight.dtype))
            dummy = self.vae2llm(torch.zeros(1, self.cfg.patch_latent_dim, device=dev, dtype=dtype))
            dummy = dummy + self.time_embedder(torch.zeros(1, device=dev)).to(dtype) + self.latent_pos_embed(ids)
            seq = seq + 0.0 * dummy.sum()
        if batch.latent_index is not None:
            clean = self.clean_latent_tokens(batch, generator)
            noised = torch.tensor([s.noised for s in batch.latents], device=dev)
            if timesteps is None:
                # Logit-normal timesteps, then shifted; clean conditions sit at t = 0.
                t = torch.sigmoid(torch.randn(len(batch.latents), generator=generator).to(dev))
                timesteps = self._shift(t)
            timesteps = torch.where(noised, timesteps.to(dev, torch.float32), torch.zeros((), device=dev))
            if noise is None:
                noise = torch.randn(clean.shape, generator=generator).to(dev, dtype)
            t_tok = timesteps[batch.latent_image_of_token]
            x_t = (1 - t_tok[:, None]) * clean + t_tok[:, None] * noise
            tokens = self.vae2llm(x_t.to(dtype)) + self.time_embedder(t_tok).to(dtype)
            tokens = tokens + self.latent_pos_embed(batch.latent_position_ids)
            seq = seq.index_copy(0, batch.latent_index, tokens)
            is_gen[batch.latent_index] = True
            extra = {"target": (noise - clean), "mse_rows": noised[batch.latent_image_of_token], "timesteps": timesteps}
        return seq, Routing.from_gen_mask(is_gen, self.uniform_calls), extra

    def attention_mask(self, layout: AttentionLayout):
        use_flex = self.attention == "flex" or (self.attention == "auto" and layout.sample.is_cuda)
        if use_flex:
            return layout.block_mask()
        if self.attention == "auto" and len(layout) and int(layout.sample.max()) > 0:
            return SampleBlocks.from_layout(layout)  # several samples: per-sample attention, not N^2
        return layout.dense()

    def hidden_states(self, batch: PackedBatch, **kw) -> tuple[torch.Tensor, dict]:
        seq, routing, extra = self.embed(batch, **kw)
        hidden = self.language_model.model(seq, routing, batch.position_ids, self.attention_mask(batch.layout))
        return hidden, extra

    # -- the losses ----------------------------------------------------------------------------------

    def forward(self, batch: PackedBatch, **kw) -> dict[str, torch.Tensor]:
        """Losses of one packed batch: ce (next token on supervised text), mse (latent velocity), and
        loss = ce_weight * ce + mse_weight * mse."""
        hidden, extra = self.hidden_states(batch, **kw)
        zero = hidden.new_zeros((), dtype=torch.float32)
        ce, n_ce = zero, 0
        if batch.ce_index is not None:
            logits = self.language_model.lm_head(hidden.index_select(0, batch.ce_index)).float()
            ce, n_ce = F.cross_entropy(logits, batch.ce_labels), int(batch.ce_index.numel())
        elif self.uniform_calls:
            ce = ce + 0.0 * self.language_model.lm_head(hidden[:1]).float().sum()
        mse, n_mse = zero, 0
        if extra and bool(extra["mse_rows"].any()):
            rows = batch.latent_index[extra["mse_rows"]]
            pred = self.llm2vae(hidden.index_select(0, rows)).float()
            mse = ((pred - extra["target"][extra["mse_rows"]].float()) ** 2).mean()
            n_mse = int(rows.numel())
        elif self.uniform_calls:
            mse = mse + 0.0 * self.llm2vae(hidden[:1]).float().sum()
        loss = self.cfg.ce_weight * ce + self.cfg.mse_weight * mse
        return {"loss": loss, "ce": ce, "mse": mse, "n_ce": n_ce, "n_mse": n_mse}

    # -- sampling ------------------------------------------------------------------------------------

    # Sampling lives in sampling.py (batched, the reference's rules); these are its entry points.

    def prefill(self, segments: list[Segment]) -> tuple[KVCache, torch.Tensor | None]:
        """Run a context once and keep its keys and values; returns the cache and the last hidden state."""
        from .sampling import prefill

        cache, last = prefill(self, [segments])
        return cache, last[0]

    def generate_texts(self, contexts: list[list[Segment]], max_new_tokens: int = 64, **kw):
        """Batched text generation: see `unimedvl.model.sampling.generate_texts`."""
        from .sampling import generate_texts

        return generate_texts(self, contexts, max_new_tokens, **kw)

    def generate_text(self, segments: list[Segment], max_new_tokens: int = 64, top_p: float | None = None,
                      temperature: float = 1.0, generator: torch.Generator | None = None) -> list[int]:
        """Continue one context token by token with a KV cache: greedy, or nucleus (top-p) sampling.
        Stops at end-of-sequence (not returned) or after max_new_tokens."""
        return self.generate_texts([segments], max_new_tokens, top_p=top_p, temperature=temperature,
                                   generators=[generator])[0]

    def generate_images(self, contexts: list[list[Segment]], **kw) -> list[torch.Tensor]:
        """Batched image generation with the reference sampler: see `unimedvl.model.sampling.generate_images`."""
        from .sampling import generate_images

        return generate_images(self, contexts, **kw)

    def generate_image(self, segments: list[Segment], height: int | None = None, width: int | None = None, *,
                       generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        """One image [C, H, W] in [-1, 1] from a context. Keywords and defaults (timestep_shift=3,
        num_steps=50, cfg_text_scale=4, cfg_img_scale=1.5, cfg_interval=(0.4, 1), cfg_renorm_type="global",
        cfg_renorm_min=0, return_latent) are `generate_images`'."""
        return self.generate_images([segments], height=height, width=width, generators=[generator], **kw)[0]

    def edit_image(self, image: torch.Tensor, instruction: list[int] | list[Segment], **kw) -> torch.Tensor:
        """Edit an image [C, H, W]: BAGEL's edit layout (clean latent block, then ViT block, then the
        instruction: token ids or segments) and its demo's edit guidance (image scale 2, interval (0, 1],
        text_channel renorm) unless overridden."""
        from .layout import ImageInput, image_segments
        from .sampling import EDIT_DEFAULTS

        ds = self.cfg.latent_downsample
        image = image[:, : image.shape[1] // ds * ds, : image.shape[2] // ds * ds]
        tail = [Text(list(instruction))] if instruction and isinstance(instruction[0], int) else list(instruction)
        segments = [*image_segments(ImageInput(vit=image, latent=image)), *tail]
        kw = {**EDIT_DEFAULTS, **kw}
        return self.generate_image(segments, height=image.shape[1], width=image.shape[2], **kw)


# ----------------------------------------------------------------------------------------------------
# Counting.


def main_state_dict(model: UniMedVL) -> dict[str, torch.Tensor]:
    """The tensors of `ema.safetensors`: everything but the autoencoder."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("autoencoder.")}


def autoencoder_state_dict(model: UniMedVL) -> dict[str, torch.Tensor]:
    """The tensors of `ae.safetensors`, named as in the FLUX file."""
    return model.autoencoder.state_dict()


def count(model: UniMedVL) -> dict[str, int]:
    """Tensor and element counts of the main model and of the autoencoder."""
    main, ae = main_state_dict(model), autoencoder_state_dict(model)
    return {
        "tensors": len(main),
        "parameters": sum(t.numel() for t in main.values()),
        "autoencoder_tensors": len(ae),
        "autoencoder_parameters": sum(t.numel() for t in ae.values()),
    }


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", **kw) -> UniMedVL:
    """Build on a device; on `meta` nothing is allocated (for counting the paper model)."""
    with torch.device(device):
        return UniMedVL(cfg, **kw)

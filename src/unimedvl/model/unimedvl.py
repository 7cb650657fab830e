"""UniMedVL: one network that reads medical images (ViT -> understanding expert) and writes them
(autoencoder latents -> generation expert), trained with next-token cross-entropy plus rectified-flow
MSE, and sampled with a KV cache (text) or an Euler ODE with classifier-free guidance (images).

Read top to bottom: the segments a sample is made of, packing several samples into one sequence, the
module (whose submodule names are those of the released checkpoint), the losses, then sampling.
"""

from __future__ import annotations

import itertools
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
    unpatchify_latent,
)
from .config import ModelConfig
from .mot import AttentionLayout, KVCache, LanguageModel, Routing
from .tokenizer import SpecialTokens
from .vision import MLPConnector, VisionModel, patchify_image

# Ids of our trained tokenizer's special tokens (the trainer gives them the first ids, in order).
DEFAULT_SPECIAL = SpecialTokens(pad=0, bos=1, eos=2, start_of_image=3, end_of_image=4)

# ----------------------------------------------------------------------------------------------------
# What a sample is made of.


@dataclass
class Text:
    """Token ids; supervised ones are predicted (cross-entropy), the others only condition."""

    ids: list[int]
    supervised: bool = False


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


Segment = Text | VitImage | LatentImage


def drop_conditions(sample: list[Segment], cfg: ModelConfig, rng: random.Random) -> list[Segment]:
    """Condition dropout for classifier-free guidance: a generation sample randomly loses its text,
    its ViT views or its clean latent views, so the model learns the velocities guidance subtracts."""
    if not any(isinstance(s, LatentImage) and s.noised for s in sample):
        return sample
    drop_text = rng.random() < cfg.text_cond_dropout
    drop_vit = rng.random() < cfg.vit_cond_dropout
    drop_vae = rng.random() < cfg.vae_cond_dropout
    kept = []
    for s in sample:
        if isinstance(s, Text) and not s.supervised and drop_text:
            continue
        if isinstance(s, VitImage) and drop_vit:
            continue
        if isinstance(s, LatentImage) and not s.noised and drop_vae:
            continue
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
    """Lay samples end to end. Each image is a block <|vision_start|> tokens <|vision_end|> that shares
    one rotary position (its layout comes from the 2D position embeddings instead)."""
    long = lambda x: torch.tensor(x, dtype=torch.long)
    text_ids, text_index, positions, splits, sample_lens = [], [], [], [], []
    vit_patches, vit_pos, vit_index, vit_seqlens = [], [], [], []
    latents, grids, lat_index, lat_pos, lat_img = [], [], [], [], []
    ce_index, ce_labels = [], []
    cur = 0
    for sample in samples:
        if dropout_rng is not None:
            sample = drop_conditions(sample, cfg, dropout_rng)
        start, rope, sample_splits = cur, 0, []
        for seg in sample:
            if isinstance(seg, Text):
                n = len(seg.ids)
                text_ids += seg.ids
                text_index += range(cur, cur + n)
                positions += range(rope, rope + n)
                if seg.supervised:
                    # Token j is predicted from position j - 1, whatever kind of token sits there.
                    for j, tok in enumerate(seg.ids):
                        if cur + j > start:
                            ce_index.append(cur + j - 1)
                            ce_labels.append(tok)
                sample_splits.append((n, "causal"))
                rope += n
                cur += n
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
            rope += 1
            cur += n
        splits.append(sample_splits)
        sample_lens.append(cur - start)
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
        self.attention = attention  # auto (flex on GPU, sdpa on CPU) | sdpa | flex
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

    def clean_latent_tokens(self, batch: PackedBatch) -> torch.Tensor:
        """All latent images of the batch as patch tokens [N_latent, p*p*z] (encoding images when needed)."""
        dev, dtype = self.vae2llm.weight.device, self.vae2llm.weight.dtype
        out = []
        for seg in batch.latents:
            z = seg.latent
            if z is None:
                with torch.no_grad():
                    z = self.autoencoder.encode(seg.image[None].to(dev, self.autoencoder.encoder.conv_in.weight.dtype))[0]
            out.append(patchify_latent(z.to(dev, dtype), self.cfg.latent_patch_size))
        return torch.cat(out)

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
        is_gen = torch.zeros(batch.length, dtype=torch.bool, device=dev)
        extra: dict = {}
        if batch.latent_index is not None:
            clean = self.clean_latent_tokens(batch)
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
        return seq, Routing.from_gen_mask(is_gen), extra

    def attention_mask(self, layout: AttentionLayout):
        use_flex = self.attention == "flex" or (self.attention == "auto" and layout.sample.is_cuda)
        return layout.block_mask() if use_flex else layout.dense()

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
        mse, n_mse = zero, 0
        if extra and bool(extra["mse_rows"].any()):
            rows = batch.latent_index[extra["mse_rows"]]
            pred = self.llm2vae(hidden.index_select(0, rows)).float()
            mse = ((pred - extra["target"][extra["mse_rows"]].float()) ** 2).mean()
            n_mse = int(rows.numel())
        loss = self.cfg.ce_weight * ce + self.cfg.mse_weight * mse
        return {"loss": loss, "ce": ce, "mse": mse, "n_ce": n_ce, "n_mse": n_mse}

    # -- sampling ------------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, segments: list[Segment]) -> tuple[KVCache, torch.Tensor | None]:
        """Run a context once and keep its keys and values; returns the cache and the last hidden state."""
        cache = KVCache.empty(self.cfg.llm.num_hidden_layers)
        if not segments:
            return cache, None
        if any(isinstance(s, LatentImage) and s.noised for s in segments):
            raise ValueError("a context holds clean images only (LatentImage(noised=False))")
        dev = self.llm2vae.weight.device
        batch = pack([segments], self.cfg, self.special).to(dev)
        seq, routing, _ = self.embed(batch)
        hidden = self.language_model.model(seq, routing, batch.position_ids, batch.layout.dense(), cache, True)
        return cache, hidden[-1]

    @torch.no_grad()
    def generate_text(
        self,
        segments: list[Segment],
        max_new_tokens: int = 64,
        top_p: float | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Continue a context token by token with a KV cache: greedy, or nucleus (top-p) sampling.
        Stops at end-of-sequence (not returned) or after max_new_tokens."""
        cache, last = self.prefill(segments)
        if last is None:
            raise ValueError("text generation needs a non-empty context")
        lm = self.language_model
        out: list[int] = []
        for _ in range(max_new_tokens):
            logits = lm.lm_head(last).float()
            tok = _pick(logits, top_p, temperature, generator)
            if tok == self.special.eos:
                break
            out.append(tok)
            x = lm.model.embed_tokens(torch.tensor([tok], device=logits.device))
            pos = torch.tensor([cache.next_position], device=logits.device)
            last = lm.model(x, Routing.all_und(1), pos, None, cache, True)[-1]
        return out

    def _velocity(self, x: torch.Tensor, t: float, pos_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Predicted velocity of latent tokens x at time t, attending to a cached context."""
        lm = self.language_model.model
        n, dev, dtype = x.shape[0], x.device, x.dtype
        sentinels = lm.embed_tokens(torch.tensor([self.special.start_of_image, self.special.end_of_image], device=dev))
        tt = torch.full((n,), t, device=dev)
        lat = self.vae2llm(x) + self.time_embedder(tt).to(dtype) + self.latent_pos_embed(pos_ids)
        seq = torch.cat([sentinels[:1], lat, sentinels[1:]])
        is_gen = torch.zeros(n + 2, dtype=torch.bool, device=dev)
        is_gen[1:-1] = True
        rope = torch.full((n + 2,), cache.next_position, device=dev)
        hidden = lm(seq, Routing.from_gen_mask(is_gen), rope, None, cache, False)
        return self.llm2vae(hidden[1:-1])

    @torch.no_grad()
    def generate_image(
        self,
        segments: list[Segment],
        height: int | None = None,
        width: int | None = None,
        num_steps: int = 30,
        cfg_text_scale: float = 4.0,
        cfg_img_scale: float = 1.0,
        generator: torch.Generator | None = None,
        return_latent: bool = False,
    ) -> torch.Tensor:
        """Draw an image [C, H, W] in [-1, 1] by integrating the velocity field from noise (t=1) to data
        (t=0) with Euler steps. Guidance: text first, v = v_no_text + s_t (v - v_no_text); then image,
        v = v_no_image + s_i (v - v_no_image), where the unconditional contexts drop those segments."""
        height = height or self.cfg.image_size
        width = width or self.cfg.image_size
        ds, p, zc = self.cfg.latent_downsample, self.cfg.latent_patch_size, self.cfg.vae.z_channels
        if height % ds or width % ds:
            raise ValueError(f"height and width must be multiples of {ds}")
        h, w = height // ds, width // ds
        dev, dtype = self.llm2vae.weight.device, self.llm2vae.weight.dtype
        cond, _ = self.prefill(segments)
        no_text = no_image = None
        if cfg_text_scale != 1.0:
            no_text, _ = self.prefill([s for s in segments if not isinstance(s, Text)])
        if cfg_img_scale != 1.0 and any(isinstance(s, (VitImage, LatentImage)) for s in segments):
            no_image, _ = self.prefill([s for s in segments if isinstance(s, Text)])
        pos_ids = flattened_position_ids(h, w, self.cfg.max_latent_size, self.cfg.interpolate_pos).to(dev)
        x = torch.randn(h * w, p * p * zc, generator=generator).to(dev, dtype)
        ts = self._shift(torch.linspace(1.0, 0.0, num_steps + 1)).tolist()
        for t, t_next in itertools.pairwise(ts):
            v = self._velocity(x, t, pos_ids, cond)
            if no_text is not None:
                v_nt = self._velocity(x, t, pos_ids, no_text)
                v = v_nt + cfg_text_scale * (v - v_nt)
            if no_image is not None:
                v_ni = self._velocity(x, t, pos_ids, no_image)
                v = v_ni + cfg_img_scale * (v - v_ni)
            x = x + (t_next - t) * v
        latent = unpatchify_latent(x, h, w, p, zc)
        if return_latent:
            return latent
        ae_dtype = self.autoencoder.decoder.conv_in.weight.dtype
        return self.autoencoder.decode(latent[None].to(ae_dtype))[0].clamp(-1, 1)

    @torch.no_grad()
    def edit_image(self, image: torch.Tensor, instruction: list[int], **kw) -> torch.Tensor:
        """Edit an image [C, H, W]: condition on its ViT and clean latent tokens plus the instruction."""
        ds = self.cfg.latent_downsample
        image = image[:, : image.shape[1] // ds * ds, : image.shape[2] // ds * ds]
        segments: list[Segment] = [VitImage(image), LatentImage(image=image, noised=False), Text(instruction)]
        kw.setdefault("cfg_img_scale", 2.0)
        return self.generate_image(segments, height=image.shape[1], width=image.shape[2], **kw)


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

"""The segment layout of one sample, for every task type: the one function that training (the packer's
input, `train/data.py`) and inference (sampling contexts, evaluation, serving) both call.

BAGEL's layout (its `data/` packers and `inferencer.py`, which UniMedVL keeps):

- a chat turn in the Qwen2.5 format: `<|im_start|>user\\n` ... `<|im_end|>\\n<|im_start|>assistant\\n`
  (template pieces, marked `Text(template=True)`: never dropped as a condition);
- an input image the model looks at is a ViT block; an image being edited (or any image the sample
  also conditions on in latent space) enters as its **clean latent block first, then its ViT block**;
- the target: supervised answer text (ending in `<|im_end|>`) or a noised latent block for an image
  to generate; several targets make an interleaved multi-step sample;
- rotary positions (`pack`): consecutive for text, one shared position per image block, advancing
  by one after a ViT / clean latent block and after a dropped condition, not after a noised block.

    chat_layout(tok, ["Describe", ImageInput(vit=x)])                           # understanding context
    chat_layout(tok, ["What is shown?", ImageInput(vit=x)], target=answer_ids)   # i2t training sample
    chat_layout(tok, ["A chest X-ray with ..."], target=image)                  # t2i training sample
    chat_layout(tok, [ImageInput(vit=x, latent=x), "Add a nodule"], target=y)   # edit
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .unimedvl import LatentImage, Segment, Text, VitImage


@dataclass
class ImageInput:
    """An input image: `vit` (at the ViT resolution) to look at, `latent` (at the autoencoder resolution)
    to condition on in latent space (editing). Either may be None; both give [latent, ViT]."""

    vit: torch.Tensor | None = None
    latent: torch.Tensor | None = None


def image_segments(img: ImageInput) -> list[Segment]:
    """An input image's blocks in BAGEL's order: clean latent first, then ViT."""
    out: list[Segment] = []
    if img.latent is not None:
        out.append(LatentImage(image=img.latent, noised=False))
    if img.vit is not None:
        out.append(VitImage(img.vit))
    if not out:
        raise ValueError("an ImageInput needs a vit or a latent view")
    return out


def chat_layout(tokenizer, user: list[str | list[int] | ImageInput], target=None, *,
                max_text_tokens: int | None = None) -> list[Segment]:
    """Segments of one sample: the user turn (strings, token ids or images, in order), the assistant
    prefix, then `target`: None (an inference context), answer text (str or ids; supervised, closed by
    `<|im_end|>`), an image tensor [C, H, W] to generate (noised latent), or a list of those."""
    sp, enc = tokenizer.special, tokenizer.encode
    cut = (lambda ids: ids[:max_text_tokens]) if max_text_tokens else (lambda ids: ids)
    segs: list[Segment] = [Text([sp.bos, *enc("user\n")], template=True)]
    for part in user:
        if isinstance(part, ImageInput):
            segs += image_segments(part)
        elif isinstance(part, str):
            if part:
                segs.append(Text(cut(enc(part))))
        elif part:
            segs.append(Text(cut(list(part))))
    segs.append(Text([sp.eos, *enc("\n"), sp.bos, *enc("assistant\n")], template=True))
    targets = [] if target is None else target if isinstance(target, list) and not _is_ids(target) else [target]
    for t in targets:
        if isinstance(t, torch.Tensor):
            segs.append(LatentImage(image=t, noised=True))
        else:
            ids = enc(t) if isinstance(t, str) else list(t)
            limit = max_text_tokens - 1 if max_text_tokens else None
            segs.append(Text([*ids[:limit], sp.eos], supervised=True))
    return segs


def _is_ids(x: list) -> bool:
    return bool(x) and all(isinstance(v, int) for v in x)

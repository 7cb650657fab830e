"""How evaluation asks the model: contexts built by the training code's own record layout, and one
function per modality that runs them.

A context is the training sample of a record without its target (`train.data.record_to_sample` drops
nothing else), so evaluation prompts the model exactly as it was trained. The blind baseline is the same
context without its image blocks. `generate_texts` / `generate_images` are the only places that call
the model's (batched) samplers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..config import EvalSamplingConfig
from ..model.unimedvl import LatentImage, Segment, Text, VitImage


def context(row: dict[str, Any], tokenizer, spec, cfg) -> list[Segment]:
    from ..train.data import record_to_sample

    segs = record_to_sample(row, tokenizer, spec, cfg).segments
    return segs[:-1]  # the target: supervised answer text or the noised output image


def blind(segments: list[Segment]) -> list[Segment]:
    """The context without what the model sees of the image (the question alone)."""
    return [s for s in segments if not isinstance(s, (VitImage, LatentImage))]


def has_image(segments: list[Segment]) -> bool:
    return any(isinstance(s, (VitImage, LatentImage)) for s in segments)


def generate_texts(model, contexts: Sequence[list[Segment]], max_new_tokens: int, sampling: EvalSamplingConfig,
                   progress=None, first_logits: bool = False):
    """Greedy (temperature 0) or nucleus answers, one list of token ids per context, `batch_size`
    contexts per call of the model's batched sampler (item i depends only on context i and seed i).
    With `first_logits`, also each answer's first-token logits [vocab] (the same forward, no extra cost)."""
    top_p = None if sampling.temperature == 0 else 0.9
    out: list[list[int]] = []
    firsts: list = []
    for i in range(0, len(contexts), sampling.batch_size):
        chunk = list(contexts[i : i + sampling.batch_size])
        got = model.generate_texts(chunk, max_new_tokens, top_p=top_p, temperature=max(sampling.temperature, 1e-5),
                                   seeds=[sampling.seed + i + k for k in range(len(chunk))], return_logits=first_logits)
        if first_logits:
            got, logits = got
            firsts += [lg[0] for lg in logits]
        out += got
        if progress is not None:
            progress(len(chunk))
    return (out, firsts) if first_logits else out


def generate_images(model, contexts: Sequence[list[Segment]], seeds: Sequence[int], sampling: EvalSamplingConfig,
                    progress=None) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1]; image `i` starts from the noise of `seeds[i]` (the same for every model,
    so two models are compared on the same draws). The reference sampler's guidance rules apply (image
    guidance only where the context holds an image)."""
    out: list[torch.Tensor] = []
    for i in range(0, len(contexts), sampling.batch_size):
        chunk = list(contexts[i : i + sampling.batch_size])
        out += model.generate_images(chunk, num_steps=sampling.steps, timestep_shift=sampling.timestep_shift,
                                     cfg_text_scale=sampling.cfg_text_scale, cfg_img_scale=sampling.cfg_img_scale,
                                     seeds=[int(s) for s in seeds[i : i + sampling.batch_size]])
        if progress is not None:
            progress(len(chunk))
    return torch.stack(out) if out else torch.zeros(0)


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids).strip()


__all__ = ["Text", "blind", "context", "decode", "generate_images", "generate_texts", "has_image"]

"""Which image patches drove an answer: gradient x input over the ViT patches.

The score of an answer is its log-likelihood under the model (teacher-forced, the training loss);
its gradient with respect to the patch pixels, times those pixels, summed per patch, says how much
each patch pushed the model towards that answer (Simonyan et al. 2014; Shrikumar et al. 2017).
Attention rollout was the alternative; it would need the backbone's attention weights, which the
fused SDPA kernel never materialises, while gradients come for free from autograd.

`explain_answer` is the library entry point: the server's `explain` task and evaluation's pointing game
(`explain.pointing_game`) both call it, with the same prompt layout (`question_context`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..model.layout import ImageInput, chat_layout
from ..model.unimedvl import Segment, Text, UniMedVL, VitImage, pack


def patch_scores(model: UniMedVL, context: list[Segment], answer_ids: list[int], eos: int | None = None) -> torch.Tensor:
    """|gradient x input| per ViT patch of the (single) image in `context`: [h_patches, w_patches].
    The answer is scored with its end-of-turn token (`eos`, default the model's)."""
    vit = [s for s in context if isinstance(s, VitImage)]
    if len(vit) != 1:
        raise ValueError("explain needs exactly one image in the context")
    target = Text([*answer_ids, model.special.eos if eos is None else eos], supervised=True)
    dev = model.llm2vae.weight.device
    batch = pack([[*context, target]], model.cfg, model.special).to(dev)
    patches = batch.vit_patches.detach().clone().requires_grad_(True)
    batch.vit_patches = patches
    with torch.enable_grad():
        loss = model(batch)["ce"]
        (grad,) = torch.autograd.grad(-loss, patches)
    scores = (grad * patches.detach()).sum(dim=1).abs()
    p = model.cfg.vit.patch_size
    image = vit[0].image
    return scores.reshape(image.shape[1] // p, image.shape[2] // p).detach()


def heatmap(model: UniMedVL, context: list[Segment], answer_ids: list[int], size: tuple[int, int],
            eos: int | None = None) -> np.ndarray:
    """Patch scores upsampled to `size` (h, w) and scaled to [0, 1] (all zeros when flat)."""
    s = patch_scores(model, context, answer_ids, eos).float()
    up = F.interpolate(s[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(up.min()), float(up.max())
    if hi - lo <= 1e-12:
        return np.zeros(size, dtype=np.float32)
    return ((up - lo) / (hi - lo)).cpu().numpy().astype(np.float32)


def question_context(tokenizer, image: torch.Tensor, question_ids: list[int]) -> list[Segment]:
    """The understanding prompt the server uses: a record's "<image>\\n<question>" user turn."""
    return chat_layout(tokenizer, [ImageInput(vit=image), question_ids])


def explain_answer(model: UniMedVL, tokenizer, image: torch.Tensor, question: str, answer_ids: list[int],
                   size: tuple[int, int] | None = None) -> np.ndarray:
    """Heatmap [h, w] in [0, 1] over `image` ([3, r, r] in [-1, 1], as `serve.images.to_tensor` makes it)
    of which patches drove `answer_ids` for `question`; `size` defaults to the image's own."""
    ctx = question_context(tokenizer, image, tokenizer.encode("\n" + question))
    return heatmap(model, ctx, answer_ids, size or tuple(image.shape[1:]), eos=tokenizer.special.eos)

"""The five tasks, in-process, on one loaded model folder.

The KServe predictor, the MLflow pyfunc flavour and the serving benchmark's baseline all call
`Engine`, so the server adds transport and nothing else. Prompts use the one layout of training and
inference (`model.layout.chat_layout`): the user turn with the image where a record's `<image>` stands,
then the assistant turn opener; an edited image enters as clean latents and ViT tokens, as in the
interleaved training samples.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..config import IngestConfig, ServeConfig
from ..model.layout import ImageInput, chat_layout
from ..model.sampling import EDIT_DEFAULTS
from ..model.unimedvl import Segment, UniMedVL
from . import images
from .explain import heatmap, question_context
from .schemas import Instance, ServeError

REPORT_PROMPT = "Write a radiology report for this image."


class DeadlineExceeded(Exception):
    """Model work ran past the request's deadline (the server answers 504)."""


def scrub(text: str) -> str:
    """The ingest text scrubber with values dropped (`mode="drop"`): the server keeps no pseudonym key,
    and what an identifier was never reaches the model."""
    from ..data.privacy import scrub_text

    return scrub_text(text, mode="drop")[0]


@dataclass
class Prepared:
    """An instance with its image decoded and its text scrubbed and tokenised (cheap; on the loop)."""

    inst: Instance
    image: torch.Tensor | None = None  # [3, r, r] in [-1, 1] at the ViT resolution
    latent_image: torch.Tensor | None = None  # edit: the same image at the generation resolution
    image_hw: tuple[int, int] | None = None  # the input's size, for the heatmap
    text_ids: list[int] = field(default_factory=list)


def run_texts(model: UniMedVL, contexts: list[list[Segment]], max_new_tokens: list[int]) -> list[list[int]]:
    """Greedy answers for several contexts in one batched decode (`generate_texts`; a batch gives each
    item what it would get alone), each cut to its own token limit."""
    out = model.generate_texts(contexts, max_new_tokens=max(max_new_tokens))
    return [ids[:n] for ids, n in zip(out, max_new_tokens, strict=True)]




def run_images(model: UniMedVL, contexts: list[list[Segment]], steps: int, guidance: float, seeds: list[int],
               size: tuple[int, int] | None = None, edit: bool = False) -> list[torch.Tensor]:
    """Images for contexts that share steps, guidance and size, in one batched sampler call."""
    h, w = size or (None, None)
    return model.generate_images(contexts, height=h, width=w, num_steps=steps, cfg_text_scale=guidance, seeds=seeds,
                                 **(EDIT_DEFAULTS if edit else {}))  # edit: the reference's edit guidance


class Engine:
    """A loaded model folder plus its tokenizer; `run` does one instance's task."""

    def __init__(self, folder: str | Path, cfg: ServeConfig | None = None, ingest: IngestConfig | None = None,
                 version: str | None = None):
        from ..model.checkpoint import load_model
        from ..model.tokenizer import load_tokenizer

        self.folder = Path(folder)
        self.cfg = cfg or ServeConfig()
        # Ingest's conversion settings; the server's own pixel cap replaces the decompression cap.
        self.ingest = ingest or IngestConfig()
        images.ingest_images.set_max_pixels(self.cfg.max_pixels)
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        self.device = _device(self.cfg.device)
        dtype = torch.bfloat16 if self.cfg.dtype == "bf16" and self.device.type == "cuda" else torch.float32
        self.model, report = load_model(self.folder, device=self.device, dtype=dtype)
        if report.missing or report.mismatched:
            raise ValueError(f"{self.folder}: weights do not match the config (missing {report.missing[:3]}, "
                             f"mismatched {report.mismatched[:3]})")
        self.model.eval().requires_grad_(False)
        self.tok = load_tokenizer(self.folder)
        if self.cfg.ignore_eos:  # the sampler stops on model.special.eos; no token has id -1
            self.model.special = replace(self.model.special, eos=-1)
        self.resolution = self.model.cfg.vit.image_size
        self.lineage = report.lineage
        self.version = version
        self._deadline = threading.local()
        # Checked before every backbone call (one per token / Euler step): a request over its time
        # stops at the next step and frees the worker, instead of finishing work nobody waits for.
        self.model.language_model.model.register_forward_pre_hook(self._check_deadline)

    # -- validation that needs the tokenizer or the image decoder ---------------------------------

    def prepare(self, inst: Instance) -> Prepared:
        p = Prepared(inst)
        text = inst.question if inst.task in ("vqa", "explain") else inst.prompt if inst.task == "generate" else (
            inst.instruction if inst.task == "edit" else REPORT_PROMPT)
        name = {"vqa": "question", "explain": "question", "generate": "prompt", "edit": "instruction"}.get(inst.task)
        ids = self.tok.encode("\n" + scrub(text)) if inst.task != "generate" else self.tok.encode(scrub(text))
        if name and len(ids) > self.cfg.max_question_tokens:
            raise ServeError(422, f"{name} is {len(ids)} tokens, over the limit of {self.cfg.max_question_tokens} "
                             "(serve.max_question_tokens)", name, inst.index)
        p.text_ids = ids
        if inst.task != "generate":
            arr = images.decode(inst.image, inst.index, self.ingest, self.model.cfg.vit.patch_size)
            p.image_hw = (int(arr.shape[0]), int(arr.shape[1]))
            p.image = images.to_tensor(arr, self.resolution)
            if inst.task == "edit":
                size = self.model.cfg.image_size
                p.latent_image = p.image if size == self.resolution else images.to_tensor(arr, size)
        return p

    # -- the tasks ---------------------------------------------------------------------------------

    def _context(self, p: Prepared) -> list[Segment]:
        """The user turn as training builds it from "<image>\\n<text>" (`model.layout.chat_layout`)."""
        if p.inst.task in ("vqa", "report", "explain"):
            return question_context(self.tok, p.image, p.text_ids)
        user: list[Any] = []
        if p.image is not None:  # edit: the image is also a clean latent condition
            user.append(ImageInput(vit=p.image, latent=p.latent_image))
        user.append(p.text_ids)
        return chat_layout(self.tok, user)

    def run(self, batch: list[Prepared], deadline: float | None = None) -> list[dict[str, Any]]:
        """Results in order: {answer} / {answer, findings, impression} / {image, image_format} /
        {answer, heatmap}. Raises DeadlineExceeded past `deadline` (time.monotonic())."""
        self._deadline.value = deadline
        try:
            self._check_deadline()
            out: list[dict[str, Any] | None] = [None] * len(batch)
            text_jobs = [i for i, p in enumerate(batch) if p.inst.task in ("vqa", "report", "explain")]
            if text_jobs:
                ctxs = [self._context(batch[i]) for i in text_jobs]
                answers = run_texts(self.model, ctxs, [batch[i].inst.max_new_tokens for i in text_jobs])
                for i, ctx, ids in zip(text_jobs, ctxs, answers, strict=True):
                    out[i] = self._text_result(batch[i], ctx, ids)
            groups: dict[tuple, list[int]] = {}
            for i, p in enumerate(batch):
                if p.inst.task in ("generate", "edit"):
                    groups.setdefault((p.inst.task, p.inst.steps, p.inst.guidance), []).append(i)
            for (task, steps, guidance), idx in groups.items():
                imgs = run_images(self.model, [self._context(batch[i]) for i in idx], steps, guidance,
                                  [batch[i].inst.seed for i in idx], edit=task == "edit")
                for i, img in zip(idx, imgs, strict=True):
                    out[i] = self._image_result(batch[i], img)
            return out  # type: ignore[return-value]
        finally:
            self._deadline.value = None

    def _text_result(self, p: Prepared, ctx: list[Segment], ids: list[int]) -> dict[str, Any]:
        answer = self.tok.decode(ids).strip()
        res: dict[str, Any] = {"task": p.inst.task, "answer": answer}
        if p.inst.task == "report":
            res.update(split_report(answer))
        if p.inst.task == "explain":
            res["heatmap"] = heatmap(self.model, ctx, ids, p.image_hw, eos=self.tok.special.eos)
        return res

    def _image_result(self, p: Prepared, img: torch.Tensor) -> dict[str, Any]:
        inst = p.inst
        arr = images.to_uint8(img)
        prov = {"task": inst.task, "model": self.model_id, "steps": str(inst.steps), "seed": str(inst.seed)}
        data = images.synthetic_dicom(arr, prov) if inst.format == "dicom" else images.synthetic_png(arr, prov)
        return {"task": inst.task, "image": data, "image_format": inst.format}

    @property
    def model_id(self) -> str:
        return self.version or self.folder.name

    def _check_deadline(self, *_: Any) -> None:
        d = getattr(self._deadline, "value", None)
        if d is not None and time.monotonic() > d:
            raise DeadlineExceeded()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"serve.device is {name} but this torch build sees no CUDA device")
    return torch.device(name)


def split_report(text: str) -> dict[str, str]:
    """FINDINGS: ... IMPRESSION: ... -> the two parts (empty when the model wrote neither heading)."""
    up = text.upper()
    f, i = up.find("FINDINGS:"), up.find("IMPRESSION:")
    findings = impression = ""
    if f >= 0:
        findings = text[f + 9: i if i > f else len(text)].strip()
    if i >= 0:
        impression = text[i + 11:].strip()
    return {"findings": findings, "impression": impression}

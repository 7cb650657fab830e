"""From ground truth to records: the task schedule, the patients, and one record spec per task.

`plan(cfg)` fixes, before anything is rendered, exactly how many records of each sub task type the
run emits (largest-remainder allocation of `count` over `task_mix`), shuffles them with the seed and
groups them into phantom patients of 1-4 records each; every record of a patient shows the same
anatomy and findings (its split follows the patient). `build(...)` turns one task of a patient into
a `Spec`: the conversation and the labels of every input and output image. Nothing here renders;
the source adapter renders and encodes the images the spec names.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import text
from .brain import CONTRASTS
from .chest import FINDING_TYPES as CHEST_FINDING_TYPES
from .findings import (
    LABELS_VERSION,
    progress_finding,
    sample_brain_labels,
    sample_chest_labels,
    with_chest_finding,
    without_finding,
)

SUB_TASKS = (
    "vqa_closed", "vqa_open", "report", "caption", "t2i",
    "edit", "counterfactual", "super_resolution", "cross_modal", "reconstruction",
    "text_only", "report_structure",
)
NEEDS_FINDING = {"counterfactual", "edit"}
MODALITY = {"chest": "xray", "brain": "mri"}


class PhantomSettings(Protocol):
    count: int
    seed: int
    image_size: int
    chest_fraction: float
    task_mix: dict[str, float]
    min_visible_px: float
    super_resolution_factor: int


def allocate(count: int, mix: dict[str, float]) -> dict[str, int]:
    """Exact record counts per task: largest remainder, ties in `SUB_TASKS` order."""
    weights = {k: float(v) for k, v in mix.items() if v > 0}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("task_mix has no positive weight")
    raw = {k: count * w / total for k, w in weights.items()}
    out = {k: int(np.floor(v)) for k, v in raw.items()}
    order = sorted(weights, key=lambda k: (-(raw[k] - out[k]), SUB_TASKS.index(k)))
    for k in order[: count - sum(out.values())]:
        out[k] += 1
    return {k: out[k] for k in SUB_TASKS if k in out}


@dataclass
class Patient:
    index: int
    id: str  # the group that decides the split (never shown; pseudonymised by the ingest key)
    family: str
    tasks: list[str]
    seed: int


def plan(cfg: PhantomSettings) -> list[Patient]:
    """The run's patients: the exact task schedule, shuffled, cut into patients of 1-4 records.

    `chest_fraction` of the patients are chest phantoms (rounded), chosen at random among those
    without a cross_modal record (cross_modal is brain only), as far as there are enough of them.
    """
    counts = allocate(cfg.count, cfg.task_mix)
    schedule = [t for t, n in counts.items() for _ in range(n)]
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    schedule = [schedule[i] for i in rng.permutation(len(schedule))]
    chunks: list[list[str]] = []
    i = 0
    while i < len(schedule):
        k = int(rng.integers(1, 5))
        chunk: list[str] = []
        while i < len(schedule) and len(chunk) < k:
            t = schedule[i]
            # a brain patient (cross_modal) may be unable to grade a lesion at tiny sizes: keep
            # cross_modal and edit on separate patients so edit can always fall back to a chest
            if (t == "edit" and "cross_modal" in chunk) or (t == "cross_modal" and "edit" in chunk):
                break
            chunk.append(t)
            i += 1
        chunks.append(chunk)
    free = [j for j, c in enumerate(chunks) if "cross_modal" not in c]
    n_chest = min(len(free), round(cfg.chest_fraction * len(chunks)))
    chest_idx = {free[j] for j in rng.permutation(len(free))[:n_chest]}
    seeds = rng.integers(0, 2**31 - 1, size=len(chunks))
    return [
        Patient(index=j, id=f"seed{cfg.seed}/case{j}", family="chest" if j in chest_idx else "brain", tasks=c,
                seed=int(seeds[j]))
        for j, c in enumerate(chunks)
    ]


def edit_options(labels: dict[str, Any]) -> list[tuple[int, str]]:
    return [(i, d) for i in range(len(labels["findings"])) for d in ("up", "down")
            if progress_finding(labels, i, d) is not None]


def patient_labels(cfg: PhantomSettings, p: Patient) -> dict[str, Any]:
    """The patient's ground truth (without a contrast for brain: each record picks its own)."""
    rng = np.random.default_rng([p.seed, 1])
    need = bool(NEEDS_FINDING & set(p.tasks))
    family = p.family
    for _attempt in range(30):
        if family == "chest":
            labels = sample_chest_labels(rng, cfg, need_finding=need)
        else:
            labels = sample_brain_labels(rng, cfg, need_finding=need)
        if "edit" not in p.tasks or edit_options(labels):
            return labels
        if family == "brain" and "cross_modal" not in p.tasks and _attempt >= 10:
            family = "chest"  # lesions too close to the visible floor to grade at this image size
    if family == "chest":  # last resort: a cardiomegaly that can always progress
        labels["findings"] = [f for f in labels["findings"] if f["type"] != "cardiomegaly"]
        labels["findings"].append({"type": "cardiomegaly", "ctr": 0.6, "visible_floor_applied": False})
        if edit_options(labels):
            return labels
    raise RuntimeError(f"phantom patient {p.index}: no finding can be graded up or down at this image size")


@dataclass
class Spec:
    sub_task: str
    family: str
    message: list[tuple[str, str]]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    task: dict[str, Any] = field(default_factory=dict)
    subject: dict[str, Any] | None = None

    @property
    def modality(self) -> str:
        """xray / mri; `none` for a text-only record (it still names its family in the labels)."""
        return MODALITY[self.family] if (self.inputs or self.outputs) else "none"

    def labels(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "generator": "unimedvl.phantoms",
            "version": LABELS_VERSION,
            "family": self.family,
            "task": {"type": self.sub_task, **self.task},
            "input": self.inputs,
            "output": self.outputs,
        }
        if self.subject is not None:
            out["subject"] = self.subject
        return out


def balanced_presence(img: dict[str, Any], rng: np.random.Generator) -> tuple[dict[str, Any], str, bool]:
    """(image labels, finding, present) of a chest presence question whose answer is a fair coin for
    every finding: the finding is drawn first, then the image gets it added or taken away as needed.
    Asking only about what the patient happens to have made "yes" 15-45% per finding, a prior that
    outweighed the image in the trained model (docs/understanding.md)."""
    finding = CHEST_FINDING_TYPES[int(rng.integers(len(CHEST_FINDING_TYPES)))]
    want = bool(rng.random() < 0.5)
    has = any(f["type"] == finding for f in img["findings"])
    if want and not has:
        img = with_chest_finding(img, finding, rng) or img
    elif has and not want:
        for i in reversed(range(len(img["findings"]))):
            if img["findings"][i]["type"] == finding:
                img = without_finding(img, i)
    return img, finding, any(f["type"] == finding for f in img["findings"])


def with_contrast(labels: dict[str, Any], contrast: str) -> dict[str, Any]:
    out = copy.deepcopy(labels)
    out["contrast"] = contrast
    return out


def build(task: str, base: dict[str, Any], rng: np.random.Generator, cfg: PhantomSettings) -> Spec:
    family = base["family"]
    img = with_contrast(base, str(rng.choice(CONTRASTS))) if family == "brain" else copy.deepcopy(base)
    img.pop("degradation", None)
    q = "<image>\n"
    if task == "vqa_closed":
        question, answer, t = text.closed_question(img, rng)
        if t["question"] == "presence" and family == "chest":
            img, finding, present = balanced_presence(img, rng)
            question, answer = text.pick(rng, text.PRESENCE_Q[finding]), text.yes_no(present, rng)
            t = {"question": "presence", "finding": finding, "answer": "yes" if present else "no"}
        return Spec(task, family, [("human", q + question), ("gpt", answer)], [img], [], t)
    if task == "vqa_open":
        question, answer, t = text.open_question(img, rng)
        return Spec(task, family, [("human", q + question), ("gpt", answer)], [img], [], t)
    if task == "report":
        present = sorted({f["type"] for f in img["findings"]})
        return Spec(task, family, [("human", q + text.pick(rng, text.REPORT_Q[family])), ("gpt", text.report_text(img, rng))],
                    [img], [], {"findings": present})
    if task == "caption":
        return Spec(task, family, [("human", q + text.pick(rng, text.CAPTION_Q)), ("gpt", text.caption(img, rng))], [img])
    if task == "t2i":
        return Spec(task, family, [("human", text.t2i_prompt(img, rng)), ("gpt", text.t2i_answer(img, rng))], [], [img],
                    {"findings": [f["type"] for f in img["findings"]]})
    if task == "counterfactual":
        i = int(rng.integers(len(img["findings"])))
        f = img["findings"][i]
        question, answer = text.counterfactual_turns(img, f, rng)
        return Spec(task, family, [("human", q + question), ("gpt", answer)], [img], [without_finding(img, i)],
                    {"removed_index": i, "removed": f})
    if task == "edit":
        opts = edit_options(img)
        i, direction = opts[int(rng.integers(len(opts)))]
        after = progress_finding(img, i, direction)
        assert after is not None
        question, answer = text.edit_turns(img, img["findings"][i], after["findings"][i], direction, rng)
        return Spec(task, family, [("human", q + question), ("gpt", answer)], [img], [after],
                    {"finding_index": i, "finding": img["findings"][i]["type"], "direction": direction,
                     "before": img["findings"][i], "after": after["findings"][i]})
    if task == "super_resolution":
        f = int(cfg.super_resolution_factor)
        low = copy.deepcopy(img)
        low["degradation"] = {"kind": "downsample", "factor": f}
        low["spacing_mm"] = round(img["spacing_mm"] * f, 4)
        question, answer = text.super_resolution_turns(img, f, rng)
        return Spec(task, family, [("human", q + question), ("gpt", answer)], [low], [img], {"factor": f})
    if task == "cross_modal":
        if family != "brain":
            raise ValueError("cross_modal needs a brain phantom")
        src = with_contrast(base, "T1")
        target = str(rng.choice(["T2", "FLAIR"]))
        question, answer = text.cross_modal_turns(src, target, rng)
        return Spec(task, family, [("human", q + question), ("gpt", answer)], [src], [with_contrast(base, target)],
                    {"from": "T1", "to": target})
    if task == "reconstruction":
        if family == "brain":
            deg = {"kind": "kspace_undersample", "acceleration": int(rng.choice([2, 3, 4])), "center_fraction": 0.08,
                   "mask_seed": int(rng.integers(0, 2**31 - 1))}
        else:
            deg = {"kind": "low_dose", "dose_fraction": float(rng.choice([0.1, 0.25])),
                   "noise_seed": int(rng.integers(0, 2**31 - 1))}
        low = copy.deepcopy(img)
        low["degradation"] = deg
        question, answer = text.reconstruction_turns(img, deg, rng)
        return Spec(task, family, [("human", q + question), ("gpt", answer)], [low], [img], {"degradation": deg})
    if task == "text_only":
        prompt, answer, t = text.text_only_turns(img, rng)
        return Spec(task, family, [("human", prompt), ("gpt", answer)], [], [], t, subject=img)
    if task == "report_structure":
        question, answer = text.report_structure_turns(img, rng)
        return Spec(task, family, [("human", question), ("gpt", answer)], [], [],
                    {"findings": sorted({f["type"] for f in img["findings"]})}, subject=img)
    raise ValueError(f"unknown phantom task {task!r}")

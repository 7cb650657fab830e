"""Phantoms: generated chest radiographs and brain MRIs with known ground truth (no input needed).

Every record carries its ground truth in the `labels` column (JSON): `task` (what was asked and the
exact answer), and for every input and output image the image's full labels (`family`, anatomy,
findings with location and size, `spacing_mm`, `seed`, `contrast` for brain, `degradation` for
degraded inputs), from which `unimedvl.data.phantoms.render_from_labels` renders the stored pixels
again. Settings come from `ingest.phantom` in params.yaml (`PhantomConfig`): count (records), seed,
image size, chest/brain share, task mix, minimum visible finding size, super-resolution factor.
Patients are groups of 1-4 records; the split is by patient, so test patients never train.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..images import encode_png
from ..phantoms import render_from_labels
from ..phantoms.tasks import build, patient_labels, plan
from ..schema import Image
from .base import Context, Item

NAME = "phantom"
NEEDS_INPUT = False
LICENSE = "CC0 (procedurally generated)"


def count(root: Path | None, ctx: Context) -> int:
    return ctx.cfg.phantom.count


def read(root: Path | None, ctx: Context) -> Iterator[Item]:
    cfg = ctx.cfg.phantom
    for patient in plan(cfg):
        base = patient_labels(cfg, patient)
        cache: dict[str, Image] = {}  # the same image in several records of a patient is rendered once
        case = f"case-{patient.index:_}"
        entries = [(f"{case}/{j}", f"{patient.id}/{j}", (j, task)) for j, task in enumerate(patient.tasks)]
        yield from ctx.each(entries, lambda p, patient=patient, base=base, cache=cache, case=case:
                            _record(ctx, cfg, patient, base, cache, case, *p))


def _record(ctx: Context, cfg, patient, base: dict[str, Any], cache: dict[str, Image], case: str, j: int, task) -> Item:
    rng = np.random.default_rng([patient.seed, 2, j])
    spec = build(task, base, rng, cfg)
    inputs = [_image(lab, cache, f"{spec.family}/{case}") for lab in spec.inputs]
    outputs = [_image(lab, cache, f"{spec.family}/{case}") for lab in spec.outputs]
    return ctx.record(
        source_id=f"{patient.id}/{j}",
        patient=patient.id,
        sub_task=spec.sub_task,
        modality=spec.modality,
        license=LICENSE,
        source_uri=f"phantom://{spec.family}/seed-{cfg.seed:_}/{case}/{j}",
        message=spec.message,
        input_img=inputs,
        output_img=outputs,
        labels=spec.labels(),
        dataset=NAME,
    )


def _image(labels: dict[str, Any], cache: dict[str, Image], path: str) -> Image:
    key = json.dumps(labels, sort_keys=True)
    if key not in cache:
        name = f"{path}/img{len(cache)}-{labels.get('contrast', labels.get('view', 'PA'))}.png"
        cache[key] = encode_png(render_from_labels(labels), path=name)
    return cache[key]

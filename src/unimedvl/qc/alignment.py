"""The image-text alignment filter: a hook for a model-based score (off by default).

UniMedVL scores every image-text pair with a medical vision-language model (MedSigLIP / MedGemma)
and keeps the best-aligned half. No such model can be loaded offline, so the step ships the hook
only. To plug yours in:

1. write a class with a `score(records) -> list[float]` method (higher = better aligned; return
   `nan` for a record it does not judge, e.g. text-only records: those are always kept);
2. expose a zero-argument factory, e.g. `mypkg.align:MedSigLIPScorer`;
3. in `params.yaml`:

       qc:
         alignment:
           scorer: mypkg.align:MedSigLIPScorer
           keep_top_fraction: 0.5

   or pass `scorer=` to `unimedvl.qc.run_qc` from Python.

Records are scored after every other check, so the model only sees data that passed. The cut is
taken over all scored records together (as in the paper); those below it are quarantined with
reason `low_alignment` and their score in the detail.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..data.schema import Record


@runtime_checkable
class AlignmentScorer(Protocol):
    def score(self, records: Sequence[Record]) -> list[float]: ...


def load_scorer(spec: str) -> AlignmentScorer:
    """Import "module:attr" and call it when it is a class or factory."""
    module, _, attr = spec.partition(":")
    if not module or not attr or ":" in attr:
        raise ValueError(f"qc.alignment.scorer {spec!r} must look like 'package.module:factory'")
    obj = getattr(importlib.import_module(module), attr)
    # A class has a `score` attribute too, so the protocol check alone would hand back the class itself.
    is_factory = isinstance(obj, type) or (callable(obj) and not isinstance(obj, AlignmentScorer))
    scorer = obj() if is_factory else obj
    if not isinstance(scorer, AlignmentScorer):
        raise TypeError(f"{spec} gives {type(scorer).__name__}, which has no score(records) method")
    return scorer


def below_cut(scores: Sequence[float], keep_top_fraction: float) -> tuple[list[bool], float | None]:
    """Which scores fall below the kept top fraction (nan = not judged = kept), and the cut value."""
    judged = sorted((s for s in scores if not math.isnan(s)), reverse=True)
    if not judged:
        return [False] * len(scores), None
    keep = max(1, math.ceil(len(judged) * keep_top_fraction))
    cut = judged[keep - 1]
    drop, kept_at_cut = [], 0
    # Ties at the cut are kept in input order until the quota is used, so the fraction is exact.
    quota_at_cut = keep - sum(1 for s in judged if s > cut)
    for s in scores:
        if math.isnan(s) or s > cut:
            drop.append(False)
        elif s == cut and kept_at_cut < quota_at_cut:
            kept_at_cut += 1
            drop.append(False)
        else:
            drop.append(True)
    return drop, cut

"""One KFP v2 component per pipeline step (DESIGN section 2), each a thin declaration over the
step's library function (through `unimedvl.pipeline.steps`).

Adding a step: write its component in a module here, export it below, add one line to
`pipelines/unimedvl.py`. Parameters named after params.yaml keys get their defaults from params.yaml
when this package is imported (`components._base.step`).
"""

from .data import heldout, ingest, qc
from .evaluate import benchmark, evaluate, judge
from .release import promote, register
from .run import close_run
from .train import ablation, autoencoder, stage1, stage2, stage3, tokenizer

STEPS = {c.name: c for c in (ingest, qc, heldout, tokenizer, autoencoder, stage1, stage2, stage3, benchmark, judge, evaluate,
                                     register, promote)}
"""Every step component, by step name, in pipeline order (the KFP-only ones are not steps)."""

__all__ = ["STEPS", "ablation", "autoencoder", "benchmark", "close_run", "evaluate", "heldout", "ingest", "judge", "promote", "qc", "register", "stage1",
           "stage2", "stage3", "tokenizer"]

"""The component decorator: the project's image, no `pip install` (air-gapped clusters), and each
parameter named after a params.yaml key defaulting to that key's value at compile time.

The function's source ships into the container without those defaults (KFP passes every input's
value, filling defaults from the compiled spec), so the defaults live only in params.yaml.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from kfp import dsl

from unimedvl.config import load_params
from unimedvl.pipeline.params import defaults, flatten

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")
IMAGE = f"{PARAMS.pipeline.image}:{PARAMS.pipeline.image_tag}"
GPU_IMAGE = f"{PARAMS.pipeline.gpu_image}:{PARAMS.pipeline.image_tag}"
_KEYS = {k.replace(".", "_") for k in flatten(PARAMS.model_dump())}


def param_names(func) -> list[str]:
    """The parameters of `func` that are params.yaml keys."""
    return [n for n in inspect.signature(func).parameters if n in _KEYS]


def step(*, image: str = IMAGE):
    def wrap(func):
        sig = inspect.signature(func)
        values = defaults(param_names(func), PARAMS)
        # Keyword-only, so defaulted params.yaml keys may come before the artefacts in the signature.
        func.__signature__ = sig.replace(parameters=[
            p.replace(kind=p.KEYWORD_ONLY, **({"default": values[p.name]} if p.name in values else {}))
            for p in sig.parameters.values()])
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return wrap

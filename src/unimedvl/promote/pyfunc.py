"""The MLflow pyfunc flavour: the same `serve.engine.Engine` the KServe predictor runs.

Logged as models-from-code (`pyfunc_code.py`), so nothing is pickled, and over the model folder
stage3 already logged: the MLmodel's one artefact, `model_folder`, is the model directory itself
(path "."), so the weights are not uploaded a second time.

Input: a DataFrame with one row per instance, the columns of the v1 API (`image` as raw bytes).
Output: a DataFrame with `task`, `answer`, `image` (PNG bytes) and `heatmap` (nested lists).
"""

from __future__ import annotations

from typing import Any

import mlflow

COLUMNS = ("task", "image", "question", "prompt", "instruction", "steps", "guidance", "seed", "max_new_tokens", "format")
INT_COLUMNS = ("steps", "seed", "max_new_tokens")


class UniMedVLPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from ..config import load_params
        from ..serve.engine import Engine

        p = load_params(None)
        self.cfg = p.serve
        self.engine = Engine(context.artifacts["model_folder"], p.serve, p.ingest)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import math

        import pandas as pd

        from ..serve.schemas import finish

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        instances = []
        for i, row in enumerate(rows):
            fields = {}
            for k, v in row.items():
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    continue
                if k in INT_COLUMNS:
                    v = int(v)
                fields[k] = v
            instances.append(self.engine.prepare(finish(fields, i, self.cfg)))
        out = []
        for r in self.engine.run(instances):
            heat = r.get("heatmap")
            out.append({"task": r["task"], "answer": r.get("answer"), "image": r.get("image"),
                        "heatmap": heat.tolist() if heat is not None else None})
        return pd.DataFrame(out)


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([
        ColSpec("string", "task"),
        ColSpec("binary", "image", required=False),
        ColSpec("string", "question", required=False),
        ColSpec("string", "prompt", required=False),
        ColSpec("string", "instruction", required=False),
        ColSpec("long", "steps", required=False),
        ColSpec("double", "guidance", required=False),
        ColSpec("long", "seed", required=False),
        ColSpec("long", "max_new_tokens", required=False),
        ColSpec("string", "format", required=False),
    ])
    outputs = Schema([ColSpec("string", "task"), ColSpec("string", "answer", required=False),
                      ColSpec("binary", "image", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example():
    import pandas as pd

    return pd.DataFrame([{"task": "generate", "prompt": "frontal chest radiograph, small right pleural effusion",
                          "steps": 2, "seed": 0}])


def save_flavour(path, model_uri: str | None = None) -> None:
    """Write MLmodel + code + input example into the empty folder `path` (no weights)."""
    from pathlib import Path

    import yaml

    code = Path(__file__).with_name("pyfunc_code.py")
    mlflow.pyfunc.save_model(path=str(path), python_model=str(code), signature=signature(),
                             input_example=input_example(), pip_requirements=["unimedvl"])
    mlmodel = Path(path) / "MLmodel"
    doc = yaml.safe_load(mlmodel.read_text())
    doc["flavors"]["python_function"]["artifacts"] = {"model_folder": {"path": ".", "uri": model_uri or "."}}
    mlmodel.write_text(yaml.safe_dump(doc, sort_keys=False))

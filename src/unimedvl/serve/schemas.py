"""One request type for both protocols, and the errors a client can cause.

v1 (`instances: [{task, image: {b64}, question, ...}]`) and v2 (named tensors) both become a list of
`Instance`s here, so every rule is checked once. A request with one bad instance is rejected whole:
the error names the field and the instance index. Value checks that need the tokenizer or the image
decoder (question length, pixels) happen in `engine.prepare`, with the same error type.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

from ..config import ServeConfig

TASKS = ("vqa", "report", "generate", "edit", "explain")
# What each task needs (all other fields are optional or ignored).
REQUIRED: dict[str, tuple[str, ...]] = {
    "vqa": ("image", "question"),
    "report": ("image",),
    "generate": ("prompt",),
    "edit": ("image", "instruction"),
    "explain": ("image", "question"),
}
TEXT_FIELDS = ("question", "prompt", "instruction")
FORMATS = ("png", "dicom")

# The v2 tensors: (name, datatype, shape, what it is). Shape -1 = one entry per instance.
INPUTS: tuple[tuple[str, str, list[int], str], ...] = (
    ("task", "BYTES", [-1], "one of vqa, report, generate, edit, explain"),
    ("image", "BYTES", [-1], "PNG, JPEG or DICOM file bytes (vqa, report, edit, explain)"),
    ("question", "BYTES", [-1], "UTF-8 question (vqa, explain)"),
    ("prompt", "BYTES", [-1], "UTF-8 description of the image to draw (generate)"),
    ("instruction", "BYTES", [-1], "UTF-8 edit instruction (edit)"),
    ("steps", "INT32", [-1], "Euler steps (generate, edit)"),
    ("guidance", "FP32", [-1], "classifier-free guidance scale on the text (generate, edit)"),
    ("seed", "INT64", [-1], "noise seed (generate, edit)"),
    ("max_new_tokens", "INT32", [-1], "answer length cap (vqa, report, explain)"),
    ("format", "BYTES", [-1], "png (default) or dicom: encoding of returned images"),
)
OUTPUTS: tuple[tuple[str, str, list[int], str], ...] = (
    ("answer", "BYTES", [-1], "UTF-8 answer or report (vqa, report, explain)"),
    ("image", "BYTES", [-1], "PNG (or DICOM) bytes marked synthetic (generate, edit)"),
    ("heatmap", "FP32", [-1, -1], "[h, w] over the input image, in [0, 1]: which patches drove the answer (explain)"),
)
_DTYPES = {name: dt for name, dt, _, _ in INPUTS}
_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64"}


class ServeError(HTTPException):
    """A client mistake (4xx) or a server condition the client can act on (429, 504).

    A fastapi.HTTPException so KServe's handlers pass it through with its status (its own InvalidInput
    is always 400); the server's handler renders {"error", "field", "instance"}."""

    def __init__(self, status: int, message: str, field: str | None = None, instance: int | None = None):
        self.message, self.field, self.instance = message, field, instance
        super().__init__(status_code=status, detail=self.body())

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.instance is not None:
            out["instance"] = self.instance
        return out

    def __str__(self) -> str:
        return f"{self.status_code}: {self.body()}"


@dataclass
class Instance:
    """One validated unit of work."""

    task: str
    image: bytes | None = None
    question: str | None = None
    prompt: str | None = None
    instruction: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    format: str = "png"
    index: int = 0


def _b64(value: Any, index: int) -> bytes:
    """v1 images: {"b64": "..."} (the KServe convention) or a bare base64 string."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ServeError(400, 'an image is {"b64": "<base64 file bytes>"}', "image", index)
        value = value["b64"]
    if not isinstance(value, str):
        raise ServeError(400, f"image must be base64 text, got {type(value).__name__}", "image", index)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, "image is not valid base64", "image", index) from None
    if not data:
        raise ServeError(422, "image is empty", "image", index)
    return data


def finish(fields: dict[str, Any], index: int, cfg: ServeConfig) -> Instance:
    """Check task, required fields and numeric ranges; fill defaults."""
    task = fields.get("task")
    if task is None:
        raise ServeError(422, f"missing field task (one of {', '.join(TASKS)})", "task", index)
    if not isinstance(task, str) or task not in TASKS:
        raise ServeError(422, f"unknown task {str(task)[:40]!r}; use one of {', '.join(TASKS)}", "task", index)
    for name in REQUIRED[task]:
        v = fields.get(name)
        if v is None or (isinstance(v, (str, bytes)) and not v.strip()):
            raise ServeError(422, f"task {task} needs field {name}", name, index)
    for name in TEXT_FIELDS:
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise ServeError(400, f"{name} must be a string", name, index)
    inst = Instance(task=task, index=index, image=fields.get("image"),
                    **{k: fields.get(k) for k in TEXT_FIELDS})
    inst.steps = _int(fields, "steps", index, 2, cfg.max_steps, cfg.default_steps)  # the sampler needs >= 2
    inst.max_new_tokens = _int(fields, "max_new_tokens", index, 1, cfg.max_new_tokens, cfg.default_new_tokens)
    inst.seed = _int(fields, "seed", index, 0, 2**63 - 1, 0)
    g = fields.get("guidance")
    if g is None:
        inst.guidance = cfg.default_guidance
    elif isinstance(g, bool) or not isinstance(g, (int, float)) or g != g:
        raise ServeError(400, "guidance must be a number", "guidance", index)
    elif not 0 < g <= cfg.max_guidance:
        raise ServeError(422, f"guidance {g} is outside (0, {cfg.max_guidance}] (serve.max_guidance)", "guidance", index)
    else:
        inst.guidance = float(g)
    fmt = fields.get("format") or "png"
    if fmt not in FORMATS:
        raise ServeError(422, f"format must be one of {', '.join(FORMATS)}", "format", index)
    inst.format = fmt
    return inst


def _int(fields: dict[str, Any], name: str, index: int, lo: int, hi: int, default: int) -> int:
    v = fields.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise ServeError(400, f"{name} must be an integer", name, index)
    if not lo <= v <= hi:
        limit = {"steps": " (serve.max_steps)", "max_new_tokens": " (serve.max_new_tokens)"}.get(name, "")
        raise ServeError(422, f"{name} {v} is outside [{lo}, {hi}]{limit}", name, index)
    return v


def parse_v1(payload: Any, cfg: ServeConfig) -> list[Instance]:
    if not isinstance(payload, dict):
        raise ServeError(400, 'the body must be a JSON object {"instances": [...]}', "instances")
    instances = payload.get("instances")
    if instances is None:
        raise ServeError(400, 'missing field instances (a list of {"task": ...} objects)', "instances")
    if not isinstance(instances, list):
        raise ServeError(400, f"instances must be a list, got {type(instances).__name__}", "instances")
    if not instances:
        raise ServeError(400, "instances is empty", "instances")
    if len(instances) > cfg.max_instances:
        raise ServeError(422, f"{len(instances)} instances, over the limit of {cfg.max_instances} (serve.max_instances)", "instances")
    out = []
    known = {name for name, *_ in INPUTS}
    for i, raw in enumerate(instances):
        if not isinstance(raw, dict):
            raise ServeError(400, f"instance must be an object, got {type(raw).__name__}", "instances", i)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ServeError(422, f"unknown field {unknown[0]!r}; fields are {', '.join(sorted(known))}", unknown[0], i)
        fields = dict(raw)
        if fields.get("image") is not None:
            fields["image"] = _b64(fields["image"], i)
        out.append(finish(fields, i, cfg))
    return out


def parse_v2(request: Any, cfg: ServeConfig) -> list[Instance]:
    """A kserve InferRequest -> instances. Every input has shape [N] (or [1], shared by all N)."""
    known = {name for name, *_ in INPUTS}
    columns: dict[str, list[Any]] = {}
    n = 1
    for inp in request.inputs:
        name = inp.name
        if name not in known:
            raise ServeError(400, f"unknown input tensor {name!r}; inputs are {', '.join(n for n, *_ in INPUTS)}", name)
        want = _DTYPES[name]
        dt = inp.datatype
        ok = dt == want or (want in ("INT32", "INT64") and dt in _INT_TYPES) or (want == "FP32" and dt in _FLOAT_TYPES)
        if not ok:
            raise ServeError(400, f"input {name} has datatype {dt}; expected {want}", name)
        shape = list(inp.shape)
        if len(shape) != 1 or shape[0] < 1:
            raise ServeError(400, f"input {name} has shape {shape}; expected [1] or [N] (one entry per instance)", name)
        try:
            values = inp.as_numpy().reshape(-1).tolist()
        except Exception as e:  # noqa: BLE001 - data that does not match its declared shape/type
            raise ServeError(400, f"input {name} could not be read as {dt}{shape}: {type(e).__name__}", name) from None
        if len(values) != shape[0]:
            raise ServeError(400, f"input {name} declares shape {shape} but holds {len(values)} values", name)
        columns[name] = values
        if shape[0] != 1:
            if n not in (1, shape[0]):
                raise ServeError(400, f"input {name} has {shape[0]} entries, others have {n}", name)
            n = shape[0]
    if "task" not in columns:
        raise ServeError(422, f"missing input tensor task (one of {', '.join(TASKS)})", "task")
    if n > cfg.max_instances:
        raise ServeError(422, f"{n} instances, over the limit of {cfg.max_instances} (serve.max_instances)", "task")
    out = []
    for i in range(n):
        fields: dict[str, Any] = {}
        for name, values in columns.items():
            v = values[0] if len(values) == 1 else values[i]
            if _DTYPES[name] == "BYTES":
                if isinstance(v, str):
                    v = v.encode()
                if name != "image":
                    try:
                        v = v.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ServeError(400, f"{name} is not UTF-8 text", name, i) from None
                else:
                    v = _maybe_b64(v)
                    if not v:
                        raise ServeError(422, "image is empty", "image", i)
            elif isinstance(v, float) and _DTYPES[name] != "FP32":
                raise ServeError(400, f"{name} must be an integer", name, i)
            fields[name] = v
        out.append(finish(fields, i, cfg))
    return out


def _maybe_b64(data: bytes) -> bytes:
    """JSON tensors carry UTF-8 text, so a JSON client sends the image file as base64. Image files
    themselves are never valid base64 (PNG, JPEG and DICOM start with bytes outside its alphabet)."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return data


def metadata_tensors(spec: tuple[tuple[str, str, list[int], str], ...]) -> list[dict[str, Any]]:
    return [{"name": n, "datatype": d, "shape": s, "parameters": {"description": text}} for n, d, s, text in spec]

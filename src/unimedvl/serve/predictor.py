"""The `kserve.Model`: v1 `instances` and v2 tensors in, the engine's results out.

Model work runs on one dedicated worker thread (a 2-core CPU gains nothing from two models fighting
for it, and one worker makes the queue length a real bound), so the event loop keeps answering
health, metadata and metrics while a long `generate` runs. Logs and metrics carry the task, the
status and the timing only: never question text or image bytes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from prometheus_client import Counter, Gauge, Histogram

from ..config import ServeConfig
from .engine import DeadlineExceeded, Engine, Prepared
from .schemas import INPUTS, OUTPUTS, ServeError, metadata_tensors, parse_v1, parse_v2

log = logging.getLogger("unimedvl.serve")

LATENCY = Histogram("unimedvl_request_seconds", "Request latency by task (queue + model work)", ["task"],
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
REQUESTS = Counter("unimedvl_requests_total", "Requests by task and status code", ["task", "code"])
QUEUE = Gauge("unimedvl_queue_depth", "Requests waiting or running on the model worker")


class UniMedVLPredictor(Model):
    def __init__(self, engine: Engine, cfg: ServeConfig, name: str | None = None):
        super().__init__(name or cfg.model_name)
        self.engine, self.cfg = engine, cfg
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unimedvl-model")
        self._pending = 0
        self.ready = False

    def load(self) -> bool:
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return metadata_tensors(INPUTS)

    def get_output_types(self) -> list[dict]:
        return metadata_tensors(OUTPUTS)

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        # Parsing and validation stay on the loop (cheap); `predict` gets validated work.
        try:
            if isinstance(payload, InferRequest):
                return ("v2", payload, parse_v2(payload, self.cfg))
            if isinstance(payload, (bytes, bytearray)):
                raise ServeError(415, "v1 :predict takes Content-Type: application/json", "content-type")
            return ("v1", payload, parse_v1(payload, self.cfg))
        except ServeError as e:  # before the task is known: counted under task "invalid"
            REQUESTS.labels("invalid", str(e.status_code)).inc()
            raise

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        protocol, request, instances = payload
        task = instances[0].task if len({i.task for i in instances}) == 1 else "mixed"
        start = time.monotonic()
        code = 200
        try:
            if self._pending >= self.cfg.queue_length:  # refuse before decoding anything
                raise ServeError(429, f"the model queue is full ({self.cfg.queue_length} requests, "
                                 "serve.queue_length); retry later")
            # Decoding images (a large DICOM takes a while) runs in the default pool, not on the loop.
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(None, lambda: [self.engine.prepare(i) for i in instances])
            results = await self._submit(prepared, start)
            return self._v2(request, results) if protocol == "v2" else {"predictions": [_v1(r) for r in results]}
        except ServeError as e:
            code = e.status_code
            raise
        except Exception:
            code = 500
            raise
        finally:
            elapsed = time.monotonic() - start
            LATENCY.labels(task).observe(elapsed)
            REQUESTS.labels(task, str(code)).inc()
            log.info("request task=%s instances=%d status=%d seconds=%.3f", task, len(instances), code, elapsed)

    async def _submit(self, prepared: list[Prepared], start: float) -> list[dict[str, Any]]:
        if self._pending >= self.cfg.queue_length:
            raise ServeError(429, f"the model queue is full ({self.cfg.queue_length} requests, serve.queue_length); retry later")
        self._pending += 1
        QUEUE.set(self._pending)
        deadline = start + self.cfg.request_timeout_s
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._worker, self.engine.run, prepared, deadline)
        except DeadlineExceeded:
            raise ServeError(504, f"the request took longer than {self.cfg.request_timeout_s:g} s "
                             "(serve.request_timeout_s)") from None
        finally:
            self._pending -= 1
            QUEUE.set(self._pending)

    def _v2(self, request: InferRequest, results: list[dict[str, Any]]) -> InferResponse:
        n = len(results)
        outputs = []
        if any("answer" in r for r in results):
            answers = np.array([r.get("answer", "").encode() for r in results], dtype=np.object_)
            outputs.append(InferOutput("answer", [n], "BYTES", data=answers))
        if any("image" in r for r in results):
            raw = [r.get("image", b"") for r in results]
            # JSON tensors hold UTF-8 text, so in a JSON response an image is base64 (said in its parameters).
            if _binary(request, "image"):
                outputs.append(InferOutput("image", [n], "BYTES", data=np.array(raw, dtype=np.object_)))
            else:
                b64 = np.array([base64.b64encode(x) for x in raw], dtype=np.object_)
                outputs.append(InferOutput("image", [n], "BYTES", data=b64, parameters={"encoding": "base64"}))
        maps = [r["heatmap"] for r in results if "heatmap" in r]
        if maps:
            if len(maps) != n or len({m.shape for m in maps}) != 1:
                raise ServeError(422, "a batch with explain needs every instance to be explain, with images of one size",
                                 "image")
            arr = (maps[0] if n == 1 else np.stack(maps)).astype(np.float32)
            outputs.append(InferOutput("heatmap", list(arr.shape), "FP32", data=arr))
        # Binary outputs only when the client asked for them (the binary tensor extension).
        return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=outputs,
                             requested_outputs=request.request_outputs, use_binary_outputs=request.use_binary_outputs)


def _binary(request: InferRequest, name: str) -> bool:
    """Whether `to_rest` will send output `name` as binary (the same rule it applies)."""
    if request.request_outputs:
        return any(o.name == name and bool(o.binary_data) for o in request.request_outputs)
    return bool(request.use_binary_outputs)


def _v1(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k not in ("image", "heatmap")}
    if "image" in r:
        out["image"] = {"b64": base64.b64encode(r["image"]).decode()}
    if "heatmap" in r:
        out["heatmap"] = np.round(r["heatmap"], 4).tolist()
    return out

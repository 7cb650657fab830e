"""KServe's data plane with one fix: binary BYTES inputs stay bytes.

KServe 0.21's `InferRequest.from_bytes` turns every binary input back into JSON data, decoding BYTES
as UTF-8, so an image sent with the binary tensor extension (what tritonclient does) fails with a
500 whose message echoes the file's bytes. This subclass reads the same wire format (JSON header of
`Inference-Header-Content-Length` bytes, then the raw tensors in input order) and keeps the raw data.
Malformed headers are the client's mistake: 400 naming the input.
"""

from __future__ import annotations

from typing import Any

import orjson
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from .schemas import ServeError

HEADER = "inference-header-content-length"


class BinarySafeDataPlane(DataPlane):
    def decode_inference_request(self, body: Any, headers: dict, model_name: str) -> InferRequest:
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        length = headers.get(HEADER)
        if length is None or not str(length).isdigit() or int(length) > len(body):
            raise ServeError(400, f"a binary request needs a valid {HEADER} header (or use Content-Type: application/json)",
                             HEADER)
        return parse_binary(body, int(length), model_name)


def parse_binary(body: bytes, json_length: int, model_name: str) -> InferRequest:
    try:
        head = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError:
        raise ServeError(400, "the JSON header of the binary request is not valid JSON", "body") from None
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise ServeError(400, "the request needs an inputs list", "inputs")
    pos = json_length
    inputs = []
    for spec in head["inputs"]:
        if not isinstance(spec, dict) or not {"name", "shape", "datatype"} <= set(spec):
            raise ServeError(400, "every input needs name, shape and datatype", "inputs")
        name = str(spec["name"])
        params = spec.get("parameters") or None
        inp = InferInput(name=name, shape=spec["shape"], datatype=spec["datatype"], parameters=params)
        if spec.get("data") is not None:
            inp.data = spec["data"]
        elif params and "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size < 0 or pos + size > len(body):
                raise ServeError(400, f"input {name}: binary_data_size {size} runs past the end of the body", name)
            inp._raw_data = body[pos:pos + size]
            pos += size
        else:
            raise ServeError(400, f"input {name} has neither data nor binary_data_size", name)
        inputs.append(inp)
    outputs = None
    if isinstance(head.get("outputs"), list):
        outputs = [RequestedOutput(name=o.get("name"), parameters=o.get("parameters")) for o in head["outputs"]
                   if isinstance(o, dict)]
    return InferRequest(model_name=model_name, request_id=head.get("id"), parameters=head.get("parameters"),
                        infer_inputs=inputs, request_outputs=outputs)

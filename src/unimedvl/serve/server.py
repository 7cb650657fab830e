"""`unimedvl serve`: the KServe model server on loopback.

KServe 0.21's `RESTServer` hard-codes host 0.0.0.0 and `ModelServer.start` always builds it that way
(and opens gRPC on [::]), so this module builds the REST server itself, sets the host, and runs it on
a socket it bound (port 0 -> a free port, printed). gRPC stays off. On top of KServe's app: a body
size limit (413 before the body is read into memory) and a handler rendering our errors as
{"error", "field", "instance"}.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from ..config import IngestConfig, ServeConfig

log = logging.getLogger("unimedvl.serve")


class ModelURIError(ValueError):
    pass


def resolve_model(uri: str, cache: str | Path | None = None) -> tuple[Path, str | None]:
    """A local model folder, `models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (local folder, version id)."""
    if not uri.startswith("models:/"):
        folder = Path(uri)
        if not (folder / "ema.safetensors").exists():
            raise ModelURIError(f"{uri}: not a model folder (no ema.safetensors); give a folder or models:/NAME@ALIAS")
        return folder, None
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    rest = uri[len("models:/"):]
    client = MlflowClient()
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = rest.partition("/")
            mv = client.get_model_version(name, version)
        dst = Path(cache) if cache else None
        if dst:
            dst.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}",
                                                    dst_path=str(dst) if dst else None)
    except MlflowException as e:
        raise ModelURIError(f"{uri}: {e.message}") from None
    folder = Path(local)
    if not (folder / "ema.safetensors").exists():
        raise ModelURIError(f"{uri} resolved to version {mv.version}, whose files hold no ema.safetensors")
    return folder, f"{mv.name}/{mv.version}"


class PayloadLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by Content-Length or while it streams in."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _reject(send, int(length), self.max_bytes)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(seen)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge as e:
            await _reject(send, e.args[0], self.max_bytes)


class _TooLarge(Exception):
    pass


async def _reject(send, size: int, limit: int) -> None:
    body = json.dumps({"error": f"the request body is {size:,} bytes, over the limit of {limit:,} "
                       "(serve.max_payload_bytes)", "field": "body"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(model_uri: str, cfg: ServeConfig, ingest: IngestConfig | None = None, host: str | None = None,
          port: int | None = None) -> None:
    """Load the model, then serve v1 + v2 on host:port until interrupted (blocks)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve import ModelServer
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
    from kserve.protocol.rest.server import RESTServer

    from .dataplane import BinarySafeDataPlane
    from .engine import Engine
    from .predictor import UniMedVLPredictor
    from .schemas import ServeError

    host = host or cfg.host
    port = cfg.port if port is None else port
    folder, version = resolve_model(model_uri)
    engine = Engine(folder, cfg, ingest, version=version)
    predictor = UniMedVLPredictor(engine, cfg)
    predictor.load()
    server = ModelServer(http_port=port, enable_grpc=False, workers=1)
    server.register_model(predictor)
    dataplane = BinarySafeDataPlane(model_registry=server.registered_models)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, dataplane, server.model_repository_extension, port)
    rest.config.host = host  # the hard-coded 0.0.0.0 (see the module docstring)

    async def serve_error(_: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=exc.body())

    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input back; ours names the place only.
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        status = 400 if first.get("type") == "json_invalid" else 422
        return JSONResponse(status_code=status, content={"error": f"{first.get('msg', 'invalid request')} at {where}",
                                                         "field": where})

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(RequestValidationError, bad_body)
    app.add_middleware(PayloadLimit, max_bytes=cfg.max_payload_bytes)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    print(f"unimedvl serve: model {version or folder} at http://{host}:{actual} "
          f"(v1 /v1/models/{cfg.model_name}:predict, v2 /v2/models/{cfg.model_name}/infer)", file=sys.stderr, flush=True)
    rest.run(sockets=[sock])

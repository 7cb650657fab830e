"""Fixtures of the integration tests: real servers on 127.0.0.1, started and stopped here."""

from __future__ import annotations

import pytest

from tests.s3_server import S3Server
from unimedvl.config import StorageConfig


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (`rclone serve s3`) on a free loopback port with a random key pair, holding
    the four platform buckets of the default `storage:` settings; stopped at the end of the session."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "root")
    for bucket in StorageConfig().buckets.model_dump().values():
        server.make_bucket(bucket)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The process environment pointed at `s3_server` (what every platform S3 client reads)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real `mlflow server` on a free loopback port for the whole session (registry tests)."""
    from tests.serve_helpers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()

"""Shared fixtures. Tests never touch the user's real de-identification key."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _test_key(monkeypatch, tmp_path_factory):
    keydir = tmp_path_factory.mktemp("key")
    monkeypatch.setenv("UNIMEDVL_SECRET_FILE", str(keydir / "secret.key"))
    monkeypatch.delenv("UNIMEDVL_SECRET_KEY", raising=False)


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one thread, and a shared 2-core machine makes two threads thrash."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory):
    """The smoke profile's pipeline, run once per session through the library functions: ingest (phantoms
    only, so it takes seconds) -> qc -> tokenizer -> autoencoder -> stage1-3 -> benchmark -> judge.
    Tests that need pipeline outputs share it (`tests/pipeline_fixture.py` says what it holds)."""
    from tests.pipeline_fixture import build_smoke_pipeline

    return build_smoke_pipeline(tmp_path_factory.mktemp("smoke-pipeline"))

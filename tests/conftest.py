"""Shared fixtures. Tests never touch the user's real de-identification key."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

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


# --- pytest-xdist (pyproject addopts: two workers, `--dist loadgroup`) -----------------------------------
# A session- or module-scoped fixture is built once per worker that runs a test using it: the smoke
# pipeline (~1 min), the S3 and MLflow servers, a module's model or server. So every test that shares
# such a fixture with another goes to one worker, as one xdist group; tests sharing two of them (say
# the S3 and MLflow servers) join both groups into one. Computed from the fixture closure, so a new
# test on the smoke pipeline cannot forget the mark. Fixtures named `ray_local` all join the "ray"
# group (so do tests marked `xdist_group("ray")`): two local Ray clusters would share /tmp/ray and
# fight over the two cores each assumes it has.
TESTS = Path(__file__).resolve().parent
_SESSION_GROUP = pytest.StashKey[bool]()


def _explicit_groups(item: pytest.Item) -> set[str]:
    return {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}


def _shared_fixtures(item: pytest.Item) -> list[str]:
    keys = []
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in (info.name2fixturedefs.items() if info else ()):
        d = defs[-1]
        if d.scope == "function":
            continue
        try:
            where = Path(inspect.getfile(d.func)).resolve()
        except TypeError:
            continue
        if TESTS not in where.parents:
            continue  # pytest's and plugins' own (tmp_path_factory): cheap, and per worker anyway
        keys.append("ray" if name == "ray_local" else name if d.scope == "session" else f"{where.stem}::{name}")
    return keys + sorted(_explicit_groups(item))


@pytest.hookimpl(wrapper=True)  # around xdist's own hook, which turns the marks into `nodeid@group`
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    _mark_groups(items)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # xdist hands out work in collection order (addopts: --no-loadscope-reorder): the groups on a
        # session fixture (the smoke pipeline, ~1 min, first) start at once instead of ending the run late.
        items.sort(key=lambda item: not item.stash.get(_SESSION_GROUP, False))
    result = yield
    if getattr(config.option, "loadgroup", False):  # set on xdist workers under --dist loadgroup
        _group_suffix(items)
    return result


def _mark_groups(items: list[pytest.Item]) -> None:
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    item_keys = [_shared_fixtures(item) for item in items]
    for keys in item_keys:
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
    members: dict[str, set[str]] = {}
    explicit: dict[str, set[str]] = {}
    for item, keys in zip(items, item_keys):
        if keys:
            members.setdefault(find(keys[0]), set()).update(keys)
            explicit.setdefault(find(keys[0]), set()).update(_explicit_groups(item))
    for item, keys in zip(items, item_keys):
        if not keys:
            continue
        root = find(keys[0])
        # a readable name: the session fixtures (or explicit groups) it holds, else its module fixtures.
        # xdist joins all of a test's group marks into its group, so each test of the component gets
        # the same set: the name plus every explicit group in it.
        ks = members[root]
        name = "+".join(sorted(k for k in ks if "::" not in k) or sorted(ks))
        for group in ({name} | explicit[root]) - _explicit_groups(item):
            item.add_marker(pytest.mark.xdist_group(group))
        item.stash[_SESSION_GROUP] = "::" not in name


def _group_suffix(items: list[pytest.Item]) -> None:
    # pytest 9.2's node ids are structured (`item._id`): xdist 3.8's loadgroup still writes the
    # `nodeid@group` suffix to the old `_nodeid`, which no longer changes the id, and so silently
    # stops grouping (pytest-dev/pytest-xdist#1386, fix in review as #1388). The same suffix, on `_id`;
    # a no-op once xdist sets it itself.
    for item in items:
        groups = sorted(_explicit_groups(item))
        if groups and "@" not in item.nodeid.rpartition("]")[2] and hasattr(item, "_id"):
            item._id = type(item._id).parse(f"{item.nodeid}@{'_'.join(groups)}")


def pytest_configure(config: pytest.Config) -> None:
    # Two workers on two cores: one intra-op thread each (torch's default, one per core, makes the two
    # workers' threads contend; the tests that time-share a core already ask for one thread).
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import sys

        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)

"""`--engine ray`: Ray Data's map_batches over the shards gives the same verdicts as the local engine."""

from __future__ import annotations

import pytest

from tests.unit.test_qc_run import crafted
from unimedvl.config import QCConfig
from unimedvl.data.shards import read_quarantine
from unimedvl.qc import run_qc
from unimedvl.qc.run import map_local, shard_paths

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # starting Ray takes ~10-20 s on two cores; one Ray at a time


def test_ray_engine_matches_local(tmp_path):
    ray = pytest.importorskip("ray")
    src = crafted(tmp_path)
    cfg = QCConfig(keep_official_split_sources=("bench",), batch_size=4)  # several batches per shard
    try:
        from unimedvl.qc.ray_engine import map_ray

        paths = shard_paths(src)
        assert map_ray(paths, cfg).to_pylist() == map_local(paths, cfg).to_pylist()
        m_ray = run_qc(src, tmp_path / "ray", cfg, engine="ray", log_to_mlflow=False)
    finally:
        ray.shutdown()
    m_local = run_qc(src, tmp_path / "local", cfg, log_to_mlflow=False)
    assert m_ray["quarantine_reasons"] == m_local["quarantine_reasons"]
    assert {q.id: q.reason for q in read_quarantine(tmp_path / "ray")} == {q.id: q.reason for q in read_quarantine(tmp_path / "local")}

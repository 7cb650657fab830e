"""`--engine ray`: the map phase of QC through Ray Data, so the step scales from a laptop to a cluster.

`ray.data.read_parquet` reads the shards, `map_batches` runs `checks.check_batch` (the very function
the local engine runs) on each batch, and the driver collects the small per-record results; the
near-duplicate index, GE validation and writing then happen after the map phase, as in `run.py`.
Connected to a cluster (`RAY_ADDRESS` set, or `ray.init` called already) it uses that cluster;
otherwise it starts Ray locally with `num_cpus=2` and no dashboard.

Row order: `preserve_order` keeps the results in shard order, which `run.py` relies on only for
"first record wins" among duplicates (verdicts are keyed by record id, never by position).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from ..config import QCConfig
from . import checks


def _ensure_ray(num_cpus: int = 2):
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                     configure_logging=False)
    return ray


def map_ray(paths: list[Path], cfg: QCConfig) -> pa.Table:
    ray = _ensure_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    if not paths:
        return checks.RESULT_SCHEMA.empty_table()
    ds = ray.data.read_parquet([str(p) for p in paths], file_extensions=None)
    cfg_json = cfg.model_dump_json()

    def fn(batch: pa.Table) -> pa.Table:
        return checks.check_batch(batch, QCConfig.model_validate_json(cfg_json))

    out = ds.map_batches(fn, batch_format="pyarrow", batch_size=cfg.batch_size, zero_copy_batch=True)
    tables = [ray.get(ref) for ref in out.to_arrow_refs()]
    tables = [t.cast(checks.RESULT_SCHEMA) if t.schema != checks.RESULT_SCHEMA else t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else checks.RESULT_SCHEMA.empty_table()

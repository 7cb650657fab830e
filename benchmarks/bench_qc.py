"""QC throughput on the packaged corpus, in samples/s per core, against decoding every image.

Both run in this process on one core over the same shards: the baseline only decodes each image
(PNG -> numpy), QC runs the full per-record map phase (`checks.check_batch`: decode, image and text
checks, pixel hash, perceptual hash, thumbnail, MinHash). The last line is the ratio of the two
throughputs (how many times slower QC's map phase is than bare decoding).

    python benchmarks/bench_qc.py [--data data/ingest]   # ingests the packaged corpus if absent
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from unimedvl.config import QCConfig, load_params  # noqa: E402
from unimedvl.qc.checks import check_batch  # noqa: E402
from unimedvl.qc.run import iter_batches, shard_paths  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("data/ingest"))
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # per core: pin to one
    data = args.data
    if not (data / "manifest.json").exists():
        from unimedvl.config import SourceSpec
        from unimedvl.data.ingest import ingest

        data = Path(tempfile.mkdtemp()) / "ingest"
        print(f"{args.data} has no manifest: ingesting the packaged corpus into {data}", flush=True)
        ingest([SourceSpec(name="packaged")], data, load_params("params.yaml").ingest)
    paths = shard_paths(data)
    cfg = QCConfig() if not Path("params.yaml").exists() else load_params("params.yaml").qc

    t0 = time.perf_counter()
    n = images = 0
    for batch in iter_batches(paths, cfg.batch_size, columns=["input_img", "output_img"]):
        for row in batch.to_pylist():
            n += 1
            for img in (row["input_img"] or []) + (row["output_img"] or []):
                with PILImage.open(io.BytesIO(img["bytes"])) as im:
                    np.asarray(im)
                images += 1
    base = time.perf_counter() - t0

    t0 = time.perf_counter()
    m = 0
    for batch in iter_batches(paths, cfg.batch_size):
        m += check_batch(batch, cfg).num_rows
    qc = time.perf_counter() - t0
    assert m == n
    print(f"corpus: {n} records, {images} images (embedded PNG), {len(paths)} shard(s); 1 core")
    print(f"baseline (decode every image): {base:6.2f} s = {n / base:8.1f} samples/s/core")
    print(f"QC map phase (all checks)    : {qc:6.2f} s = {n / qc:8.1f} samples/s/core")
    print(f"qc/decode time ratio: {qc / base:.2f}")


if __name__ == "__main__":
    main()

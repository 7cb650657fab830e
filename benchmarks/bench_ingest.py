"""Ingest throughput on the packaged corpus against a bare decode-and-re-encode floor, in one run.

The floor is the least any ingest must do with the same files: decode every DICOM file pydicom can
decode (up to the same number of frames), slice every volume at the same number of positions, decode
every picture, parse every report, and encode each image as PNG. The ratio ingest/floor is the cost
of everything else ingest does (de-identification, keyed hashing, de-duplication, records,
Parquet, manifest). Both run pinned to one core, alternately, and the best of each is kept.
DICOM files that ingest quarantines from their header alone are not decoded by the floor either.

Last line: `ingest/floor ratio: X` (goal X <= 1.5).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np

from unimedvl.config import IngestConfig, SourceSpec
from unimedvl.data.images import encode_png, evenly_spaced, resize_max_side
from unimedvl.data.shards import read_quarantine
from unimedvl.data.ingest import ingest
from unimedvl.data.privacy import Keyed, scrub_path
from unimedvl.data.sources import packaged
from unimedvl.data.sources.packaged_reports import locate_archive


BENCH_KEY = b"bench-key"


def _minmax(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)


def floor(cfg: IngestConfig, rejected: set[str]) -> int:
    """Decode + PNG-encode the inputs ingest accepted, with nothing else; returns the image count.

    `rejected` holds the DICOM items ingest quarantined (duplicates, photographs, ...): ingest
    decides those from the header without decoding pixels, so the floor does not decode them either.
    """
    import nibabel as nib
    import pydicom
    from PIL import Image as PILImage
    from pydicom.pixels import pixel_array

    images = 0
    warnings.simplefilter("ignore")
    candidates, _ = packaged.dicom_candidates()
    for cand in candidates:
        # quarantine lines name items by their pseudonymous path (privacy.scrub_path with the run's key)
        if cand.item in rejected or scrub_path(cand.item, keyed=Keyed(BENCH_KEY))[0] in rejected:
            continue
        try:
            ds = pydicom.dcmread(cand.path, stop_before_pixels=True)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            stack = [pixel_array(cand.path, index=i if frames > 1 else None) for i in evenly_spaced(frames, cfg.packaged.frames_per_series)]
        except Exception:  # noqa: BLE001 - the floor skips what cannot be decoded
            continue
        for frame in stack:
            encode_png(resize_max_side(_minmax(frame), cfg.max_side))
            images += 1
    for entry in packaged.VOLUMES:
        _, path = packaged._package_file(entry.package, entry.rel)
        if path is None:
            continue
        data = np.asanyarray(nib.load(path).dataobj)
        vols = [data] if data.ndim == 3 else [data[..., t] for t in evenly_spaced(data.shape[3], cfg.packaged.frames_per_series)]
        for vol in vols:
            for axis in range(3):
                if min(s for i, s in enumerate(vol.shape) if i != axis) < packaged.MIN_SIDE:
                    continue
                for k in evenly_spaced(vol.shape[axis], cfg.packaged.slices_per_volume):
                    encode_png(resize_max_side(_minmax(vol[(slice(None),) * axis + (k,)]), cfg.max_side))
                    images += 1
    for pic in packaged.PICTURES:
        _, path = packaged._package_file(pic.package, pic.rel)
        if path is None or pic.kind != "image":
            continue
        with PILImage.open(path) as im:
            encode_png(resize_max_side(np.asarray(im.convert("RGB")), cfg.max_side))
            images += 1
    archive = locate_archive()
    if archive is not None and cfg.packaged.reports:
        blob = archive.read()
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xml"):
                    ET.fromstring(tar.extractfile(member).read())
    return images


def run_ingest(cfg: IngestConfig, out: Path) -> dict:
    from rich.console import Console

    quiet = Console(file=io.StringIO())
    return ingest([SourceSpec(name="packaged")], out, cfg, key=BENCH_KEY, console=quiet).manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="alternate floor/ingest this many times; best kept")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cfg = IngestConfig()
    best_floor = best_ingest = float("inf")
    manifest: dict = {}
    images_floor = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            t = time.perf_counter()
            manifest = run_ingest(cfg, Path(tmp) / f"run{r}")
            best_ingest = min(best_ingest, time.perf_counter() - t)
            rejected = {q.item for q in read_quarantine(Path(tmp) / f"run{r}")}
            t = time.perf_counter()
            images_floor = floor(cfg, rejected)
            best_floor = min(best_floor, time.perf_counter() - t)
            print(f"repeat {r}: floor {best_floor:.2f} s, ingest {best_ingest:.2f} s (best so far)", file=sys.stderr)
    samples = manifest["seen"]
    print(f"floor:  {images_floor} images decoded + PNG-encoded, reports parsed, in {best_floor:.2f} s")
    print(f"ingest: {samples} samples seen ({manifest['accepted']} accepted, {manifest['distinct_images']} "
          f"distinct images) in {best_ingest:.2f} s")
    print(f"ingest throughput: {samples / best_ingest:.0f} samples/s per core")
    print(f"ingest/floor ratio: {best_ingest / best_floor:.2f}")


if __name__ == "__main__":
    main()

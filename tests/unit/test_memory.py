"""Bounded memory: a 7900 x 7900 16-bit RLE DICOM and a small PNG that decodes to 7900^2 RGB are
accepted and downscaled by one ingest process that stays under 1 GiB peak RSS (measured in a
subprocess); only images over ingest.max_decoded_bytes are quarantined as `oversized`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from rich.console import Console

from unimedvl.config import IngestConfig, SourceSpec
from unimedvl.data.ingest import ingest
from unimedvl.data.shards import read_quarantine, read_table

GIB = 1 << 30


def rle_dicom(path: Path, side: int) -> Path:
    from pydicom.data import get_testdata_file
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = np.zeros((side, side), dtype=np.uint16)
    arr[side // 4: side // 2, :] = 1200  # a few flat bands: RLE makes ~2 MB of it
    arr[:, side // 3: side // 3 + side // 10] += 300
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.compress(RLELossless, arr, encoding_plugin="pylibjpeg")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def big_png(path: Path, side: int) -> Path:
    im = PILImage.new("RGB", (side, side), (20, 40, 60))
    im.paste((200, 30, 30), (side // 4, side // 4, side // 2, side // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG", optimize=True)
    return path


CHILD = textwrap.dedent("""
    import io, json, sys
    from rich.console import Console
    from unimedvl.config import IngestConfig, SourceSpec
    from unimedvl.data.ingest import ingest
    name, root, out = sys.argv[1:4]
    m = ingest([SourceSpec(name=name, input=root)], out, IngestConfig(), key=b"k",
               console=Console(file=io.StringIO())).manifest
    # VmHWM, the peak of this process image: ru_maxrss would also count the parent's size at the
    # fork, carried over the exec (a large pytest process made a 0.2 GB ingest read 1.1-1.6 GB)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"accepted": m["accepted"], "quarantined": m["quarantined"], "peak_rss_kb": peak}))
""")


def _ingest_in_child(name: str, root: Path, out: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, name, str(root), str(out)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _check(tmp_path: Path, side: int) -> None:
    dicoms = tmp_path / "dicom"
    rle_dicom(dicoms / "big.dcm", side)
    folder = tmp_path / "folder"
    png = big_png(folder / "big.png", side)
    (folder / "metadata.csv").write_text("image,text\nbig.png,A large photograph.\n")
    assert png.stat().st_size < 400_000
    for name, root in (("dicom", dicoms), ("imagefolder", folder)):
        out = tmp_path / f"out-{name}"
        result = _ingest_in_child(name, root, out)
        assert result["accepted"] >= 1 and result["quarantined"] == 0, (name, result)
        assert result["peak_rss_kb"] * 1024 < GIB, (name, result)
        row = read_table(out).to_pylist()[0]
        img = (row["input_img"] or row["output_img"])[0]
        assert max(img["height"], img["width"]) == IngestConfig().max_side  # downscaled, not refused


@pytest.mark.slow
def test_7900_square_rle_dicom_and_png_stay_under_1_gib(tmp_path):
    _check(tmp_path, 7900)


def test_large_images_are_downscaled_in_a_bounded_process(tmp_path):
    """Lean twin of the 7900^2 test: the same path (stride pre-reduction, PIL reduce) at 2400^2."""
    _check(tmp_path, 2400)


def test_over_the_decoded_byte_cap_is_oversized(tmp_path):
    dicoms = tmp_path / "dicom"
    rle_dicom(dicoms / "a.dcm", 600)
    folder = tmp_path / "folder"
    big_png(folder / "a.png", 600)
    (folder / "metadata.csv").write_text("image,text\na.png,A photograph.\n")
    cfg = IngestConfig(max_decoded_bytes=500_000)  # 600^2 x 2 bytes = 720,000; x 3 bytes = 1,080,000
    for name, root in (("dicom", dicoms), ("imagefolder", folder)):
        out = tmp_path / f"out-{name}"
        with pytest.raises(Exception, match="nothing could be read"):
            ingest([SourceSpec(name=name, input=str(root))], out, cfg, key=b"k", console=Console(file=io.StringIO()))
        assert [q.reason for q in read_quarantine(out)] == ["oversized"], name

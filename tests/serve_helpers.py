"""A tiny random-init model folder (no training) and a real `unimedvl serve` subprocess on loopback."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

TEXTS = [
    "Is there a nodule in the right upper lobe? yes",
    "What modality is this image? chest x-ray",
    "FINDINGS: The lungs are clear. No pleural effusion. IMPRESSION: No acute disease.",
    "Add a small nodule to the left lower lobe.",
    "A frontal chest radiograph with a right pleural effusion.",
    "Write a radiology report for this image.",
    "Is the heart enlarged? no",
] * 20


def make_tiny_model(out: Path, seed: int = 0) -> Path:
    """What stage3 writes, without training: tokenizer + tiny model + lineage (random init)."""
    import torch

    from unimedvl.model.checkpoint import save_model
    from unimedvl.model.config import PRESETS
    from unimedvl.model.tokenizer import train_tokenizer
    from unimedvl.model.unimedvl import build_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(TEXTS, 320, out / "tokenizer.json")
    torch.manual_seed(seed)
    cfg = PRESETS["tiny"]
    cfg = cfg.replace(llm=replace(cfg.llm, vocab_size=tok.vocab_size))
    model = build_model(cfg, special=tok.special)
    # Random but non-zero generation head, so generated images depend on the prompt and the seed.
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    save_model(model, out, lineage={"data_manifest_sha256": "0" * 64, "git_commit": "test", "extra": {"stage": "stage3"}},
               tokenizer=tok)
    return out


def png_bytes(size=(64, 64), mode="L", seed=0, bits16=False) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    if bits16:
        im = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif mode == "CMYK":
        im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert("CMYK")
        buf = io.BytesIO()
        im.save(buf, format="JPEG")
        return buf.getvalue()
    else:
        arr = rng.integers(0, 255, (h, w) if mode == "L" else (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class Server:
    """`unimedvl serve --port 0` in a subprocess; its port is read from the line it prints."""

    def __init__(self, model: str, params: Path, env: dict | None = None, log: Path | None = None):
        self.log = Path(log) if log else Path(params).with_suffix(".log")
        self._fh = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unimedvl.cli", "serve", "--model", model, "--port", "0", "--params", str(params)],
            stdout=self._fh, stderr=subprocess.STDOUT, env=full_env)
        self.url = self._wait()

    def _wait(self, timeout: float = 90.0) -> str:
        import httpx

        t0 = time.monotonic()
        url = None
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if url is None:
                m = re.search(r"at (http://127\.0\.0\.1:\d+)", self.log.read_text())
                url = m.group(1) if m else None
            if url:
                try:
                    if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                        return url
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


def make_data(out: Path, license: str = "CC0-1.0", n: int = 6) -> Path:
    """A tiny QC'd data set (manifest + one shard) whose training records carry `license`."""
    from unimedvl.data.images import encode_png
    from unimedvl.data.schema import SUB_TO_MAIN, Record, Turn
    from unimedvl.data.shards import DatasetWriter

    w = DatasetWriter(Path(out), step="qc")
    for i in range(n):
        rec = Record(id=f"r{i}", dataset="phantom" if i % 2 else "iu_xray", modality="xray",
                     main_task_type=SUB_TO_MAIN["vqa_closed"], sub_task_type="vqa_closed", split="train", lang="en",
                     license=license, source_uri="test://", patient_key=f"p{i}",
                     message=[Turn("human", "<image>\nIs there a nodule?"), Turn("gpt", "no")],
                     input_img=[encode_png(np.full((64, 64), 40 * (i % 5), dtype=np.uint8))], output_img=[])
        w.add("test", rec)
    w.close()
    return Path(out)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (SQLite store, proxied artefacts in a local folder)."""

    def __init__(self, root: Path):
        import urllib.request

        self.root = Path(root)
        self.artifacts = self.root / "artifacts"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        mlflow = Path(sys.executable).with_name("mlflow")
        self._log = open(self.root / "mlflow.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination", str(self.artifacts)],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not start:\n{(self.root / 'mlflow.log').read_text()[-2000:]}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

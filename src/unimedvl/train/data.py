"""Training data: stream the Parquet shards, draw samples by the stage's task mixture, turn records into
model segments at the stage's resolutions, and pack them into token-budget sequences.

Determinism: the batch of step `s` on worker `r` depends only on (seed, stage, s, r), never on what
came before, so a resumed run draws exactly the batches the uninterrupted run drew, and the "data
position" a checkpoint stores is simply the step. Workers draw from disjoint slices of every task's
rows (row i goes to worker i mod world_size) when there are enough rows, so they see different data.

Streaming: only three small columns are read to build the index; rows are fetched from their
row group on demand, and decoded row groups stay in a byte-bounded LRU cache (a small data set ends
up wholly in memory, a large one streams).
"""

from __future__ import annotations

import io
import os
import queue
import random
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from ..data.schema import IMAGE_TOKEN
from ..data.shards import manifest_sha256, shard_paths
from ..model.config import ModelConfig
from ..model.layout import ImageInput, chat_layout
from ..model.unimedvl import LatentImage, PackedBatch, Segment, Text, VitImage, pack
from .curriculum import CATEGORIES, SUB_TASK_CATEGORY, StageSpec

INDEX_COLUMNS = ["sub_task_type", "split", "lang"]


@dataclass(frozen=True)
class RowRef:
    shard: int
    row_group: int
    row: int


class ShardStore:
    """Row access to a shard folder: an index by task category and an LRU of decoded row groups."""

    def __init__(self, data_dir: str | Path, split: str = "train", languages: tuple[str, ...] | None = None,
                 cache_mb: int = 512, verify: bool = True):
        self.data_dir = Path(data_dir)
        self.manifest_sha256 = manifest_sha256(self.data_dir)
        self.files: list[pq.ParquetFile] = []
        self.by_category: dict[str, list[RowRef]] = {c: [] for c in CATEGORIES}
        self.split = split
        for si, path in enumerate(shard_paths(self.data_dir, verify=verify)):
            pf = pq.ParquetFile(path)
            self.files.append(pf)
            for rg in range(pf.num_row_groups):
                cols = pf.read_row_group(rg, columns=INDEX_COLUMNS).to_pydict()
                for i, (task, sp, lang) in enumerate(zip(cols["sub_task_type"], cols["split"], cols["lang"], strict=True)):
                    if sp != split or (languages is not None and lang not in languages):
                        continue
                    cat = SUB_TASK_CATEGORY.get(task)
                    if cat is not None:
                        self.by_category[cat].append(RowRef(si, rg, i))
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_mb * 1024 * 1024
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        return {c: len(v) for c, v in self.by_category.items()}

    def resample(self, copies, categories: tuple[str, ...] | None = None) -> dict[str, int]:
        """Index each row `copies(ref)` times (0 drops it; `self.row(ref)` reads it), and only rows of
        `categories` (None: all): a warm-up that oversamples one kind of record draws it that much more
        often, draws within a category staying uniform over the index. Rows per category afterwards."""
        self.by_category = {c: [r for r in refs for _ in range(int(copies(r)))]
                            if categories is None or c in categories else []
                            for c, refs in self.by_category.items()}
        return self.counts()

    def available(self) -> set[str]:
        return {c for c, v in self.by_category.items() if v}

    def row(self, ref: RowRef) -> dict[str, Any]:
        key = (ref.shard, ref.row_group)
        with self._lock:
            table = self._cache.get(key)
            if table is not None:
                self._cache.move_to_end(key)
        if table is None:
            table = self.files[ref.shard].read_row_group(ref.row_group)
            with self._lock:
                self._cache[key] = table
                self._cache_bytes += table.nbytes
                while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= old.nbytes
        return table.slice(ref.row, 1).to_pylist()[0]


# ----------------------------------------------------------------------------------------------------
# Records -> segments.


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes (8/16-bit grey, RGB, RGBA) -> float32 [H, W, 3] in [0, 1]."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32) / (65535.0 if im.mode != "I" or np.asarray(im).max() > 255 else 255.0)
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.clip(arr, 0.0, 1.0)


def image_tensor(data: bytes, resolution: int) -> torch.Tensor:
    """PNG bytes -> [3, resolution, resolution] in [-1, 1] (squashed to a square: medical images are
    mostly square already, and one size keeps ViT and latent grids fixed per stage)."""
    arr = torch.from_numpy(decode_png(data)).permute(2, 0, 1)[None]
    if arr.shape[-2:] != (resolution, resolution):
        arr = F.interpolate(arr, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return (arr[0] * 2 - 1).clamp(-1, 1).contiguous()


@dataclass
class Sample:
    category: str
    segments: list[Segment]
    tokens: int


def _image_tokens(cfg: ModelConfig, seg: Segment) -> int:
    if isinstance(seg, VitImage):
        p = cfg.vit.patch_size
        return (seg.image.shape[1] // p) * (seg.image.shape[2] // p) + 2
    if isinstance(seg, LatentImage):
        ds = cfg.latent_downsample
        return (seg.image.shape[1] // ds) * (seg.image.shape[2] // ds) + 2
    return len(seg.ids) if isinstance(seg, Text) else 0


def count_tokens(segments: list[Segment], cfg: ModelConfig) -> int:
    """Length of the packed sequence a sample occupies (what the token budget counts)."""
    return sum(_image_tokens(cfg, s) for s in segments)


def record_to_sample(row: dict[str, Any], tokenizer, spec: StageSpec, cfg: ModelConfig) -> Sample:
    """One record in the Qwen2.5 chat format (`model.layout.chat_layout`, the layout inference uses too):
    the user turn conditions, the assistant turn is the target (supervised text for text_only / i2t, a
    noised latent image for t2i / interleaved, where each input image is also a clean latent block)."""
    cat = SUB_TASK_CATEGORY[row["sub_task_type"]]
    human = "\n".join(t["value"] for t in row["message"] if t["from"] == "human")
    answer = "\n".join(t["value"] for t in row["message"] if t["from"] == "gpt")
    inputs = list(row["input_img"] or [])
    outputs = list(row["output_img"] or [])
    user: list = []
    parts = human.split(IMAGE_TOKEN)
    for k, part in enumerate(parts):
        user.append(part)
        if k < len(parts) - 1 and k < len(inputs):
            data = inputs[k]["bytes"]
            latent = image_tensor(data, spec.vae_resolution) if cat == "interleaved" else None
            user.append(ImageInput(vit=image_tensor(data, spec.vit_resolution), latent=latent))
    if cat in ("t2i", "interleaved"):
        if not outputs:
            raise ValueError(f"record {row.get('id')} ({row['sub_task_type']}) has no output image")
        target = image_tensor(outputs[0]["bytes"], spec.vae_resolution)
    else:
        target = answer
    segs = chat_layout(tokenizer, user, target, max_text_tokens=spec.max_text_tokens)
    return Sample(cat, segs, count_tokens(segs, cfg))


# ----------------------------------------------------------------------------------------------------
# Mixture sampling and token-budget packing.


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, stage, step, rank, purpose), stable across processes."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


STAGE_IDS = {"stage1": 1, "stage2": 2, "stage3": 3, "autoencoder": 0, "bench": 9}


@dataclass
class Batch:
    step: int
    packed: PackedBatch
    categories: dict[str, int]
    samples: int
    tokens: int


@dataclass
class MixtureLoader:
    """Batches of a stage for one worker: `batch(step)` is a pure function of (seed, stage, step, rank)."""

    store: ShardStore
    tokenizer: Any
    spec: StageSpec
    cfg: ModelConfig
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    mixture: dict[str, float] | None = None  # override of spec.mixture (tests: one task per rank)
    max_samples: int = 64
    probs: dict[str, float] = field(init=False)
    rows: dict[str, list[RowRef]] = field(init=False)

    def __post_init__(self) -> None:
        from .curriculum import normalise

        self.probs = normalise(self.mixture or self.spec.mixture, self.store.available())
        self.rows = {}
        for cat in self.probs:
            refs = self.store.by_category[cat]
            mine = refs[self.rank :: self.world_size]
            self.rows[cat] = mine if mine else refs
        self._cats = list(self.probs)
        self._p = np.array([self.probs[c] for c in self._cats])
        # Condition dropout follows the stage, not the model preset.
        self.pack_cfg = self.cfg.replace(text_cond_dropout=self.spec.text_cond_dropout,
                                         vit_cond_dropout=self.spec.vit_cond_dropout,
                                         vae_cond_dropout=self.spec.vae_cond_dropout)

    def _rng(self, step: int, purpose: int = 0) -> np.random.Generator:
        return np.random.default_rng(step_seed(self.seed, STAGE_IDS.get(self.spec.name, 8), step, self.rank, purpose))

    def draws(self, step: int):
        """The endless stream of (category, row) draws behind step `step`'s batch."""
        rng = self._rng(step)
        while True:
            cat = self._cats[int(rng.choice(len(self._cats), p=self._p))]
            rows = self.rows[cat]
            yield cat, rows[int(rng.integers(len(rows)))]

    def samples(self, step: int) -> list[Sample]:
        """Fill the token budget: draw samples until the next one would not fit (it is dropped, so a
        batch never exceeds `max_tokens`); a single sample longer than the budget is skipped."""
        out: list[Sample] = []
        used, skipped = 0, 0
        for _cat, ref in self.draws(step):
            s = record_to_sample(self.store.row(ref), self.tokenizer, self.spec, self.cfg)
            if s.tokens > self.spec.max_tokens:
                skipped += 1
                if skipped > 32 and not out:
                    raise ValueError(f"max_tokens={self.spec.max_tokens} is smaller than every sample; raise it")
                continue
            if used + s.tokens > self.spec.max_tokens or len(out) >= self.max_samples:
                break
            out.append(s)
            used += s.tokens
        return out

    def batch(self, step: int) -> Batch:
        samples = self.samples(step)
        rng = random.Random(step_seed(self.seed, STAGE_IDS.get(self.spec.name, 8), step, self.rank, 1))
        packed = pack([s.segments for s in samples], self.pack_cfg, self.tokenizer.special, dropout_rng=rng)
        cats = {c: 0 for c in CATEGORIES}
        for s in samples:
            cats[s.category] += 1
        return Batch(step, packed, cats, len(samples), packed.length)

    def stream(self, start: int, stop: int, prefetch: int = 0) -> Iterator[Batch]:
        """Batches start..stop-1, built in turn, or with `prefetch` > 0 up to that many ahead in a
        background thread. The thread pays where the step runs on an accelerator; where it runs on the
        CPU it takes the step's cores (its torch ops start their own OpenMP team), and on 2 cores it made
        the steps about 2x slower than building each batch in turn (~30 ms of a ~200 ms step)."""
        if prefetch <= 0:
            for s in range(start, stop):
                yield self.batch(s)
            return
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop_flag = threading.Event()

        def work() -> None:
            try:
                for s in range(start, stop):
                    if stop_flag.is_set():
                        return
                    q.put(self.batch(s))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(e)
            q.put(None)

        t = threading.Thread(target=work, daemon=True, name="batch-prefetch")
        t.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop_flag.set()
            while not q.empty():
                q.get_nowait()


def prefetch_depth(device: torch.device, workers: int) -> int:
    """How many batches to build ahead in a thread (`MixtureLoader.stream`): two where the step runs on
    an accelerator or the job's workers (at most `workers` on this machine) leave a CPU core free, else
    none, because the thread's decoding would take the cores the step's torch threads use (2 threads
    on 2 cores: steps 2x slower than building each batch in turn)."""
    if device.type != "cpu":
        return 2
    return 2 if (os.cpu_count() or 1) > torch.get_num_threads() * workers else 0


def all_images(data_dir: str | Path, split: str = "train", limit: int = 4096, seed: int = 0) -> list[bytes]:
    """PNG bytes of up to `limit` images (inputs and outputs) of a split, for fitting the autoencoder."""
    out: list[bytes] = []
    data_dir = Path(data_dir)
    for path in shard_paths(data_dir, verify=False):
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["split", "input_img", "output_img"]).to_pydict()
            for sp, ins, outs in zip(t["split"], t["input_img"], t["output_img"], strict=True):
                if sp != split:
                    continue
                out += [i["bytes"] for i in (ins or []) + (outs or [])]
    if len(out) > limit:
        idx = np.random.default_rng(seed).permutation(len(out))[:limit]
        out = [out[int(i)] for i in sorted(idx)]
    return out


def all_texts(data_dir: str | Path, split: str = "train", limit: int = 50_000) -> Iterator[str]:
    """Message text of a split, for training the tokenizer."""
    data_dir = Path(data_dir)
    n = 0
    for path in shard_paths(data_dir, verify=False):
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["split", "message"]).to_pydict()
            for sp, msg in zip(t["split"], t["message"], strict=True):
                if sp != split:
                    continue
                for turn in msg:
                    yield turn["value"].replace(IMAGE_TOKEN, "")
                n += 1
                if n >= limit:
                    return

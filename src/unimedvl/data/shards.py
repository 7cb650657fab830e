"""Parquet shards + `manifest.json` + `quarantine.jsonl`: the on-disk form of a data set.

Every step that writes records (ingest, qc) uses `DatasetWriter`, so the manifest and the
quarantine file have one format everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import RECORD_SCHEMA, Quarantine, Record

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
SHARD_DIR = "shards"
ROW_GROUP_ROWS = 512


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Counts:
    seen: int = 0
    accepted: int = 0
    quarantined: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"seen": self.seen, "accepted": self.accepted, "quarantined": self.quarantined}


@dataclass
class DatasetWriter:
    """Streams records into shards of at most `shard_max_mb` and quarantine items into one file."""

    out_dir: Path
    step: str = "ingest"
    shard_max_mb: int = 256
    # Columns, not rows: Arrow converts one Python list per column about twice as fast as a list
    # of row dicts (which it would first turn into columns in Python anyway).
    _cols: dict[str, list[Any]] = field(default_factory=lambda: {n: [] for n in RECORD_SCHEMA.names})
    _n_rows: int = 0
    _bytes: int = 0
    _shards: list[dict[str, Any]] = field(default_factory=list)
    _by_source: dict[str, Counts] = field(default_factory=lambda: defaultdict(Counts))
    _by_task: Counter = field(default_factory=Counter)
    _by_split: Counter = field(default_factory=Counter)
    _by_modality: Counter = field(default_factory=Counter)
    _by_lang: Counter = field(default_factory=Counter)
    _reasons: Counter = field(default_factory=Counter)
    _subjects: dict[str, dict[str, set[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    _images: int = 0
    _distinct_images: set[bytes] = field(default_factory=set)
    _digests: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Only our own files are removed, so pointing --output at a user folder cannot wipe it.
        for old in (self.out_dir / SHARD_DIR).glob("part-*.parquet") if (self.out_dir / SHARD_DIR).exists() else []:
            old.unlink()
        for name in (MANIFEST, QUARANTINE, "summary.txt"):
            (self.out_dir / name).unlink(missing_ok=True)
        (self.out_dir / SHARD_DIR).mkdir(exist_ok=True)
        self._quarantine = open(self.out_dir / QUARANTINE, "w", encoding="utf-8")

    def source(self, name: str) -> Counts:
        return self._by_source[name]

    def add(self, source: str, item: Record | Quarantine) -> None:
        counts = self._by_source[source]
        counts.seen += 1
        if isinstance(item, Quarantine):
            counts.quarantined += 1
            self._reasons[item.reason] += 1
            self._quarantine.write(item.to_json() + "\n")
            return
        counts.accepted += 1
        row = item.to_row()
        for name, col in self._cols.items():
            col.append(row[name])
        self._n_rows += 1
        self._bytes += sum(len(i["bytes"]) for i in row["input_img"] + row["output_img"]) + 512
        self._images += len(row["input_img"]) + len(row["output_img"])
        # Several records (caption, VQA, t2i) share one image; this counts the images themselves.
        # Adapters reuse one bytes object per image, so each object is hashed once (the cache holds
        # a reference, so an id is never reused while it is cached; it is cleared with the rows).
        for img in row["input_img"] + row["output_img"]:
            data = img["bytes"]
            cached = self._digests.get(id(data))
            if cached is None:
                cached = self._digests[id(data)] = (data, hashlib.blake2b(data, digest_size=16).digest())
            self._distinct_images.add(cached[1])
        self._by_task[item.sub_task_type] += 1
        self._by_split[item.split] += 1
        self._by_modality[item.modality] += 1
        self._by_lang[item.lang] += 1
        self._subjects[item.modality][item.split].add(item.patient_key)
        if self._bytes >= self.shard_max_mb * 1024 * 1024:
            self._flush()

    def _flush(self) -> None:
        if not self._n_rows:
            return
        rel = f"{SHARD_DIR}/part-{len(self._shards):05d}.parquet"
        table = pa.Table.from_pydict(self._cols, schema=RECORD_SCHEMA)
        pq.write_table(table, self.out_dir / rel, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        self._shards.append({"path": rel, "rows": self._n_rows, "sha256": sha256_file(self.out_dir / rel)})
        self._cols = {n: [] for n in RECORD_SCHEMA.names}
        self._n_rows, self._bytes = 0, 0
        self._digests.clear()

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self._flush()
        self._quarantine.close()
        total = Counts()
        for c in self._by_source.values():
            total.seen += c.seen
            total.accepted += c.accepted
            total.quarantined += c.quarantined
        manifest = {
            "format": "unimedvl-shards/1",
            "step": self.step,
            **total.as_dict(),
            "images": self._images,  # image slots over all records
            "distinct_images": len(self._distinct_images),
            "by_source": {k: v.as_dict() for k, v in sorted(self._by_source.items())},
            "by_task": dict(sorted(self._by_task.items())),
            "by_split": dict(sorted(self._by_split.items())),
            "by_modality": dict(sorted(self._by_modality.items())),
            "by_lang": dict(sorted(self._by_lang.items())),
            "subjects": {
                mod: {split: len(keys) for split, keys in sorted(splits.items())}
                for mod, splits in sorted(self._subjects.items())
            },
            "quarantine_reasons": dict(sorted(self._reasons.items())),
            "shards": self._shards,
            **(extra or {}),
        }
        (self.out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        return manifest


def read_manifest(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `unimedvl ingest --output {data_dir}` first")
    return json.loads(path.read_text())


def manifest_sha256(data_dir: Path) -> str:
    """The data set's identity: the sha256 of its manifest (which holds every shard's sha256)."""
    path = Path(data_dir) / MANIFEST
    return sha256_file(path) if path.exists() else "none"


class ShardModified(ValueError):
    pass


def shard_paths(data_dir: Path, verify: bool = True) -> list[Path]:
    """The manifest's shards in order; with `verify`, each one's sha256 is checked first."""
    data_dir = Path(data_dir)
    paths = []
    for shard in read_manifest(data_dir)["shards"]:
        path = data_dir / shard["path"]
        if verify and sha256_file(path) != shard["sha256"]:
            raise ShardModified(f"{path} does not match its sha256 in the manifest: the data set was modified")
        paths.append(path)
    return paths


def read_table(data_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """All shards listed in the manifest, in order, after checking their sha256."""
    tables = [pq.read_table(path, columns=columns) for path in shard_paths(data_dir)]
    if not tables:
        return RECORD_SCHEMA.empty_table() if columns is None else RECORD_SCHEMA.empty_table().select(columns)
    return pa.concat_tables(tables)


def select_mixture(table: pa.Table, languages: tuple[str, ...] | list[str]) -> pa.Table:
    """The rows the default training mixture takes: records in `languages` (ingest.mixture_languages).

    Other languages stay in the shards, tagged, so they are excluded by this param and never
    dropped silently; the count left out is `table.num_rows - result.num_rows`.
    """
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table["lang"], value_set=pa.array(list(languages), pa.string())))


def iter_records(data_dir: Path) -> Iterator[Record]:
    for row in read_table(data_dir).to_pylist():
        yield Record.from_row(row)


def read_quarantine(data_dir: Path) -> list[Quarantine]:
    path = Path(data_dir) / QUARANTINE
    if not path.exists():
        return []
    return [Quarantine.from_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

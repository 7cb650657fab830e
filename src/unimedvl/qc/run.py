"""`run_qc`: the QC step end to end, the one function the CLI, the DVC stage and KFP call.

Phases:
1. **map** (per batch, local or Ray Data): `checks.check_batch` gives one result row per record
   (metadata, first image/text problem, hashes);
2. **validate**: the Great Expectations suite on the metadata table; a suite-level failure stops
   the step, row-level failures quarantine exactly the rows GE lists;
3. **reduce**: near-duplicate index over the images of the records still standing, cross-split
   leakage (removed from the earlier split, never from test), within-split duplicate records, text
   leakage (MinHash), then the optional alignment filter;
4. **write**: accepted shards + manifest + `quarantine.jsonl` (DatasetWriter, step "qc"), the
   rejected rows themselves under `quarantine/` as Parquet, `metrics.json`, the report, MLflow.

Every record read ends up either accepted or quarantined with one reason (the first that applies,
in the order above): `accepted + quarantined == seen`, per source, checked before returning.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import QCConfig
from ..data.schema import RECORD_SCHEMA, Quarantine, Record
from ..data.shards import DatasetWriter, ShardModified, manifest_sha256, read_manifest
from ..data.shards import shard_paths as verified_shard_paths
from . import checks, dedup
from .alignment import AlignmentScorer, below_cut, load_scorer
from .expectations import SuiteFailed, metadata_frame, validate

SPLIT_RANK = {"train": 0, "val": 1, "test": 2}
QUARANTINE_DIR = "quarantine"
REJECTED_SCHEMA = RECORD_SCHEMA.append(pa.field("qc_reason", pa.string())).append(pa.field("qc_detail", pa.string()))


class QCError(RuntimeError):
    """A problem with the command or the data set as a whole: a clear message, exit non-zero."""


# --- input ---------------------------------------------------------------------------------------


def shard_paths(input_dir: Path) -> list[Path]:
    """The manifest's shards, after checking each one's sha256 (a mismatch is a QCError)."""
    try:
        return verified_shard_paths(input_dir)
    except ShardModified as e:
        raise QCError(str(e)) from None


def iter_batches(paths: list[Path], batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    for path in paths:
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)


def map_local(paths: list[Path], cfg: QCConfig) -> pa.Table:
    parts = [checks.check_batch(b, cfg) for b in iter_batches(paths, cfg.batch_size)]
    return pa.concat_tables(parts) if parts else checks.RESULT_SCHEMA.empty_table()


# --- duplicates and leakage ------------------------------------------------------------------------


class NearPairs:
    """Candidate near pairs of unique images (perceptual-hash neighbours), each confirmed by thumbnail
    correlation only when a decision reads it, and at most once.

    Phantoms share one template, so nearly every pair of them is a candidate (hundreds of thousands
    on the demo data); the cross-split check stops at an image's first confirmed neighbour in a later
    split, so confirming every candidate up front was most of QC's time for the same decisions."""

    def __init__(self, thumbs: list[bytes], cand: np.ndarray, min_corr: float, block: int = 8):
        self.thumbs, self.min_corr, self.block = dedup.thumbnail_stack(thumbs), min_corr, block
        self.candidates: list[list[int]] = [[] for _ in range(len(thumbs))]
        for a, b in cand.tolist():
            self.candidates[a].append(b)
            self.candidates[b].append(a)
        for c in self.candidates:
            c.sort()
        self.corr: dict[tuple[int, int], float] = {}
        self.seconds = 0.0

    def _confirm(self, pairs: list[tuple[int, int]]) -> None:
        todo = [p for p in dict.fromkeys(pairs) if p not in self.corr]
        if todo:
            t0 = time.perf_counter()
            self.corr.update(zip(todo, dedup.correlations(self.thumbs, np.array(todo)).tolist(), strict=True))
            self.seconds += time.perf_counter() - t0

    def is_near(self, a: int, b: int) -> bool:
        key = (min(a, b), max(a, b))
        self._confirm([key])
        return self.corr[key] >= self.min_corr

    def first(self, u: int, wanted) -> int | None:
        """The lowest-numbered confirmed neighbour v of image u with `wanted(v)` (the order the eager
        search read them in), confirming candidates a block at a time."""
        eligible = [v for v in self.candidates[u] if wanted(v)]
        for lo in range(0, len(eligible), self.block):
            part = eligible[lo : lo + self.block]
            self._confirm([(min(u, v), max(u, v)) for v in part])
            for v in part:
                if self.is_near(u, v):
                    return v
        return None

    def confirmed(self) -> list[set[int]]:
        """Every candidate confirmed: each image's near neighbours (within-split deduplication)."""
        self._confirm([(a, b) for a, c in enumerate(self.candidates) for b in c if a < b])
        return [{v for v in c if self.is_near(u, v)} for u, c in enumerate(self.candidates)]

    def stats(self) -> dict[str, int]:
        return {"near_dup_checked": len(self.corr), "near_dup_pairs": sum(c >= self.min_corr for c in self.corr.values())}


def image_graph(res: dict[str, list], standing: list[int], cfg: QCConfig
                ) -> tuple[dict[bytes, int], NearPairs, list[int], dict[str, Any]]:
    """Unique images (by decoded-pixel hash) of the standing records, their candidate near pairs, and
    the highest split rank each image is used in."""
    uid: dict[bytes, int] = {}
    phashes: list[int] = []
    thumbs: list[bytes] = []
    low: list[int] = []  # lowest and highest split rank of the standing records using each image
    top: list[int] = []
    for i in standing:
        rank = SPLIT_RANK.get(res["split"][i], -1)
        for ph, p, t in zip(res["img_pixel_hash"][i], res["img_phash"][i], res["img_thumb"][i], strict=True):
            if ph not in uid:
                uid[ph] = len(phashes)
                phashes.append(p)
                thumbs.append(t)
                low.append(rank)
                top.append(rank)
            u = uid[ph]
            low[u], top[u] = min(low[u], rank), max(top[u], rank)
    t0 = time.perf_counter()
    cand = dedup.near_pairs(np.array(phashes, dtype=np.uint64), cfg.near_dup_hamming)
    n_cand = int(len(cand))
    if not cfg.near_dup_within_split and len(cand):
        cand = cand[_read_by_leakage(np.array(low), np.array(top), cand)]
    stats = {"unique_images": len(phashes), "near_dup_candidates": n_cand, "near_dup_readable": int(len(cand)),
             "near_dup_search_s": round(time.perf_counter() - t0, 3)}
    return uid, NearPairs(thumbs, cand, cfg.near_dup_min_corr), top, stats


def _read_by_leakage(low: np.ndarray, top: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Mask of the candidate pairs the cross-split check can read: one image is used in a split below
    the other's highest (test is never reduced). Without within-split deduplication the others decide
    nothing, and on phantoms (one template, every pair a candidate) they were most of QC's time."""
    a, b = cand[:, 0], cand[:, 1]
    return ((low[a] < 2) & (top[b] > low[a])) | ((low[b] < 2) & (top[a] > low[b]))


def find_leakage_and_duplicates(res: dict[str, list], decided: dict[int, tuple[str, str]], cfg: QCConfig) -> dict[str, Any]:
    """Adds split_leakage / text_leakage / duplicate_record decisions (by row index); returns stats."""
    n = len(res["_key"])
    standing = [i for i in range(n) if i not in decided]
    uid, near, top_split, stats = image_graph(res, standing, cfg)
    neighbours = near.confirmed() if cfg.near_dup_within_split else None
    official = set(cfg.keep_official_split_sources)
    leak_counts: Counter = Counter()
    overlap: Counter = Counter()
    for i in standing:
        rank = SPLIT_RANK.get(res["split"][i], -1)
        if rank >= 2:
            continue  # test is never reduced
        hit = None
        for k, ph in enumerate(res["img_pixel_hash"][i]):
            u = uid[ph]
            if top_split[u] > rank:
                hit = (k, u, top_split[u], "is pixel-identical to")
                break
            v = near.first(u, lambda v, rank=rank: top_split[v] > rank)
            if v is not None:
                hit = (k, v, top_split[v], "near-duplicates")
                break
        if not hit:
            continue
        k, v, vrank, how = hit
        later = [s for s, r in SPLIT_RANK.items() if r == vrank][0]
        pair = f"{res['split'][i]}->{later}"
        if res["dataset"][i] in official:
            overlap[f"{res['dataset'][i]}:{pair}"] += 1
            continue
        leak_counts[pair] += 1
        which = "input" if k < res["n_input_img"][i] else "output"
        decided[i] = ("split_leakage", f"{which} image {how} an image in {later} (removed from {res['split'][i]}, "
                      f"{later} kept); the whole record goes, so image pairs are never split")
    stats["split_leakage"] = dict(leak_counts)
    stats["official_split_overlap"] = dict(overlap)

    stats.update(text_leakage(res, decided, cfg, official))

    # Within-split duplicate records: same image(s) (exact, or confirmed near copies), task and text.
    if neighbours is not None:
        comp = dedup.components_of(len(neighbours), ((a, b) for a in range(len(neighbours)) for b in neighbours[a] if a < b))
    else:
        comp = np.arange(len(near.candidates))
    first: dict[tuple, int] = {}
    dups = Counter()
    for i in range(n):
        if i in decided:
            continue
        imgs = [int(comp[uid[ph]]) for ph in res["img_pixel_hash"][i]]
        n_in = res["n_input_img"][i]
        key = (res["split"][i], res["sub_task_type"][i], res["text_hash"][i], tuple(imgs[:n_in]), tuple(imgs[n_in:]))
        if key in first:
            decided[i] = ("duplicate_record", f"same image(s), task and text as record {res['_key'][first[key]]} "
                          f"in {res['split'][i]}")
            dups[res["split"][i]] += 1
        else:
            first[key] = i
    stats["duplicate_records"] = dict(dups)
    stats.update(near.stats(), near_dup_confirm_s=round(near.seconds, 3))
    return stats


def text_leakage(res: dict[str, list], decided: dict[int, tuple[str, str]], cfg: QCConfig, official: set[str]) -> dict[str, Any]:
    """Near-duplicate report texts across splits (MinHash LSH); boilerplate shared by many patients is kept."""
    idx = [i for i in range(len(res["_key"])) if i not in decided and res["leak_sig"][i] is not None]
    # Identical texts collapse to one signature first, so a template repeated 1,000 times is one item.
    rep_of: dict[str, int] = {}
    members: list[list[int]] = []
    sigs = []
    for i in idx:
        h = res["text_hash"][i]
        if h not in rep_of:
            rep_of[h] = len(members)
            members.append([])
            sigs.append(res["leak_sig"][i])
        members[rep_of[h]].append(i)
    if not sigs:
        return {"text_leakage": {}, "text_templates": 0}
    pairs = dedup.minhash_pairs(np.array(sigs, dtype=np.uint32), cfg.text_leak_jaccard)
    comp = dedup.components_of(len(sigs), ((a, b) for a, b, _ in pairs))
    patients: dict[int, set] = defaultdict(set)
    for r, ms in enumerate(members):
        patients[int(comp[r])].update(res["patient_key"][i] or res["_key"][i] for i in ms)
    templates = {c for c, p in patients.items() if len(p) >= cfg.text_template_min_patients}
    top: dict[int, int] = defaultdict(lambda: -1)
    for r, ms in enumerate(members):
        for i in ms:
            top[int(comp[r])] = max(top[int(comp[r])], SPLIT_RANK.get(res["split"][i], -1))
    counts: Counter = Counter()
    template_cross = 0
    for r, ms in enumerate(members):
        c = int(comp[r])
        for i in ms:
            rank = SPLIT_RANK.get(res["split"][i], -1)
            if rank >= 2 or top[c] <= rank:
                continue
            if c in templates:
                template_cross += 1
                continue
            if res["dataset"][i] in official:
                counts[f"kept_official:{res['dataset'][i]}"] += 1
                continue
            later = [s for s, k in SPLIT_RANK.items() if k == top[c]][0]
            counts[f"{res['split'][i]}->{later}"] += 1
            decided[i] = ("text_leakage", f"report text near-duplicates (MinHash Jaccard >= {cfg.text_leak_jaccard}) "
                          f"a report in {later}")
    return {"text_leakage": dict(counts), "text_templates": len(templates),
            "text_template_records_across_splits": template_cross}


# --- alignment -----------------------------------------------------------------------------------


def apply_alignment(paths: list[Path], res: dict[str, list], decided: dict[int, tuple[str, str]], cfg: QCConfig,
                    scorer: AlignmentScorer | None) -> dict[str, Any]:
    frac = cfg.alignment.keep_top_fraction
    if frac is None:
        return {"alignment": "off"}
    if scorer is None:
        if not cfg.alignment.scorer:
            raise QCError("qc.alignment.keep_top_fraction is set but no scorer: set qc.alignment.scorer to "
                          "'package.module:factory' (see unimedvl.qc.alignment) or pass scorer= to run_qc")
        scorer = load_scorer(cfg.alignment.scorer)
    index = {k: i for i, k in enumerate(res["_key"]) if i not in decided}
    keys, scores = [], []
    for batch in iter_batches(paths, cfg.batch_size):
        recs, rkeys = [], []
        for row in batch.to_pylist():
            k = checks.row_key(row)
            if k in index:
                recs.append(Record.from_row(row))
                rkeys.append(k)
        if recs:
            s = list(scorer.score(recs))
            if len(s) != len(recs):
                raise QCError(f"the alignment scorer returned {len(s)} scores for {len(recs)} records")
            keys += rkeys
            scores += [float(x) for x in s]
    drop, cut = below_cut(scores, frac)
    for k, sc, d in zip(keys, scores, drop, strict=True):
        if d:
            decided[index[k]] = ("low_alignment", f"alignment score {sc:.4g} below the cut {cut:.4g} (top {frac:.0%} kept)")
    judged = [s for s in scores if not math.isnan(s)]
    return {"alignment": {"scored": len(judged), "cut": cut, "dropped": int(sum(drop))}}


# --- the step ------------------------------------------------------------------------------------


def run_qc(
    input_dir: str | Path,
    output_dir: str | Path,
    cfg: QCConfig | None = None,
    *,
    engine: str = "local",
    report_dir: str | Path | None = None,
    metrics_path: str | Path | None = None,
    scorer: AlignmentScorer | None = None,
    log_to_mlflow: bool | None = None,
) -> dict[str, Any]:
    """Quality-control the data set at `input_dir` into `output_dir`; returns the metrics dict.

    `report_dir` defaults to `output_dir/report`, `metrics_path` to `output_dir/metrics.json`
    (the DVC stage puts both outside the data folder: `qc/report`, `qc/metrics.json`).
    """
    cfg = cfg or QCConfig()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.resolve() == output_dir.resolve():
        raise QCError("--output must differ from --input (the output folder's shards are rewritten)")
    report_dir = Path(report_dir) if report_dir is not None else output_dir / "report"
    metrics_path = Path(metrics_path) if metrics_path is not None else output_dir / "metrics.json"
    start = time.perf_counter()
    try:
        paths = shard_paths(input_dir)
    except FileNotFoundError as e:
        raise QCError(str(e)) from None

    t0 = time.perf_counter()
    if engine == "local":
        results = map_local(paths, cfg)
    elif engine == "ray":
        from .ray_engine import map_ray

        results = map_ray(paths, cfg)
    else:
        raise QCError(f"unknown engine {engine!r}; use local or ray")
    map_s = time.perf_counter() - t0
    n = results.num_rows

    # Great Expectations on the metadata table.
    t0 = time.perf_counter()
    report_dir.mkdir(parents=True, exist_ok=True)
    ge = validate(metadata_frame(results), cfg, report_dir / "ge_validation.json")
    ge_s = time.perf_counter() - t0
    if ge.suite_failures:
        raise SuiteFailed("QC stopped: the data set fails a suite-level expectation: " + "; ".join(ge.suite_failures)
                          + f" (GE results: {report_dir / 'ge_validation.json'})")

    res = results.to_pydict()
    key_index: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(res["_key"]):
        key_index[k].append(i)
    decided: dict[int, tuple[str, str]] = {}
    for key, verdict in ge.row_failures.items():
        for i in key_index.get(key, []):
            decided[i] = verdict
    for i in range(n):
        if i not in decided and res["check_reason"][i]:
            decided[i] = (res["check_reason"][i], res["check_detail"][i])

    t0 = time.perf_counter()
    dup_stats = find_leakage_and_duplicates(res, decided, cfg)
    dedup_s = time.perf_counter() - t0
    align_stats = apply_alignment(paths, res, decided, cfg, scorer)

    # Write: the row order of the results is the row order of the shards (both engines keep it).
    verdicts = _by_key(res, decided)
    manifest, rejected_rows = _write(paths, output_dir, verdicts, cfg, manifest_sha256(input_dir))
    if manifest["accepted"] + manifest["quarantined"] != manifest["seen"] or manifest["seen"] != n:
        raise QCError(f"accounting broken: {manifest['accepted']} + {manifest['quarantined']} != {manifest['seen']} (map saw {n})")

    in_manifest = read_manifest(input_dir)
    seconds = time.perf_counter() - start
    metrics = {
        "seen": manifest["seen"],
        "accepted": manifest["accepted"],
        "quarantined": manifest["quarantined"],
        "quarantined_fraction": round(manifest["quarantined"] / max(1, manifest["seen"]), 5),
        "input_accepted_by_ingest": in_manifest.get("accepted"),
        "quarantine_reasons": manifest["quarantine_reasons"],
        "by_source": manifest["by_source"],
        "by_split_after": manifest["by_split"],
        "by_split_before": dict(Counter(s or "missing" for s in res["split"])),
        "by_modality_after": manifest["by_modality"],
        "ge": {
            "success": ge.success,
            "evaluated": len(ge.per_expectation),
            "successful": sum(e["success"] for e in ge.per_expectation),
            "rows_failed": len(ge.row_failures),
        },
        "dedup": dup_stats,
        **align_stats,
        "engine": engine,
        "seconds": {"total": round(seconds, 2), "map": round(map_s, 2), "ge": round(ge_s, 2), "dedup": round(dedup_s, 2)},
        "records_per_s": round(n / max(map_s, 1e-9), 1),
    }
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str) + "\n")

    from .report import build_report, log_run

    html = build_report(report_dir, results, decided, metrics, ge, output_dir / QUARANTINE_DIR, cfg)
    metrics["report"] = str(html)
    if log_to_mlflow if log_to_mlflow is not None else cfg.mlflow.enabled:
        metrics["mlflow_run_id"] = log_run(cfg, metrics, report_dir, metrics_path, input_dir)
    return metrics


def _by_key(res: dict[str, list], decided: dict[int, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for i, verdict in sorted(decided.items()):
        out.setdefault(res["_key"][i], verdict)
    return out


def _write(paths: list[Path], output_dir: Path, verdicts: dict[str, tuple[str, str]], cfg: QCConfig,
           input_sha256: str) -> tuple[dict, int]:
    writer = DatasetWriter(output_dir, step="qc", shard_max_mb=cfg.shard_max_mb)
    qdir = output_dir / QUARANTINE_DIR
    qdir.mkdir(parents=True, exist_ok=True)
    for old in qdir.glob("part-*.parquet"):
        old.unlink()
    rejected = pq.ParquetWriter(qdir / "part-00000.parquet", REJECTED_SCHEMA, compression="zstd")
    n_rejected = 0
    try:
        for batch in iter_batches(paths, cfg.batch_size):
            bad = []
            for row in batch.to_pylist():
                key = checks.row_key(row)
                source = row.get("dataset") or "unknown"
                if key in verdicts:
                    reason, detail = verdicts[key]
                    writer.add(source, Quarantine(step="qc", source=source, item=row.get("source_uri") or key,
                                                  reason=reason, detail=detail or "", id=row.get("id")))
                    bad.append({**row, "qc_reason": reason, "qc_detail": detail})
                else:
                    writer.add(source, Record.from_row(row))
            if bad:
                rejected.write_table(pa.Table.from_pylist(bad, schema=REJECTED_SCHEMA))
                n_rejected += len(bad)
    finally:
        rejected.close()
    # The input's identity travels with the QC'd set: tracking names the pipeline's data by it.
    return writer.close(extra={"qc": {"input_step": "ingest"}, "input_manifest_sha256": input_sha256}), n_rejected

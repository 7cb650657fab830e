"""What a model version is made of: data, code, params, evaluation inputs, licences.

Everything here is read from files the pipeline already wrote (the model folder's lineage.json, the
shards' manifest and records, params.yaml, eval/metrics.json), so `register` and the model card agree.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..data.shards import manifest_sha256

# SPDX ids that forbid commercial use; an unknown licence is not cleared for it either.
NON_COMMERCIAL_MARKERS = ("-NC", "LicenseRef-unknown", "LicenseRef-non-commercial", "LicenseRef-research-only")


def is_non_commercial(spdx: str) -> bool:
    return any(m.lower() in spdx.lower() for m in NON_COMMERCIAL_MARKERS)


def training_licences(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{dataset: {"licenses": {spdx: records}, "records": n}} over the train split of the shards."""
    import pyarrow.parquet as pq

    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.json"
    if not manifest.exists():
        return {}
    shards = json.loads(manifest.read_text()).get("shards", [])
    counts: dict[str, Counter] = defaultdict(Counter)
    for shard in shards:
        table = pq.read_table(data_dir / shard["path"], columns=["dataset", "license", "split"])
        for ds, lic, split in zip(*(table.column(c).to_pylist() for c in ("dataset", "license", "split")), strict=True):
            if split == "train":
                counts[ds][lic] += 1
    return {ds: {"licenses": dict(sorted(c.items())), "records": sum(c.values())} for ds, c in sorted(counts.items())}


def licence_set(licences: dict[str, dict[str, Any]]) -> list[str]:
    return sorted({lic for d in licences.values() for lic in d["licenses"]})


def code_hash(root: Path | None = None) -> str:
    """sha256 over the package's Python sources (path + content), in path order."""
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(pkg.rglob("*.py")):
        h.update(p.relative_to(pkg).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def params_hash(params_path: str | Path) -> str:
    """sha256 of params.yaml as parsed (comments and layout do not change it)."""
    import yaml

    path = Path(params_path)
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def eval_inputs(metrics) -> dict[str, Any]:
    """The part of `inputs` that decides comparability: data, benchmark, judge, protocol, sampling."""
    inp = metrics.inputs
    return {
        "test_manifest_sha256": inp.test_manifest_sha256,
        "benchmark_manifest_sha256": inp.benchmark_manifest_sha256,
        "judge_sha256": inp.judge_sha256,
        "protocol_version": inp.protocol_version,
        "sampling": inp.sampling.model_dump(mode="json"),
    }


def inputs_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def version_tags(model_dir: Path, data_dir: Path, params_path: Path, metrics, headline: tuple[str, ...],
                 git_commit: str) -> dict[str, str]:
    """The tags every registered version carries (MLflow tag values are strings)."""
    lineage = json.loads((model_dir / "lineage.json").read_text()) if (model_dir / "lineage.json").exists() else {}
    licences = training_licences(data_dir)
    data_sha = lineage.get("data_manifest_sha256")
    if not data_sha and (data_dir / "manifest.json").exists():
        data_sha = manifest_sha256(data_dir)
    tags = {
        "unimedvl.git_commit": git_commit,
        "unimedvl.data_manifest_sha256": str(data_sha or "unknown"),
        "unimedvl.params_hash": params_hash(params_path),
        "unimedvl.code_hash": code_hash(),
        "unimedvl.licenses": ",".join(licence_set(licences)) or "unknown",
        "unimedvl.non_commercial": str(any(is_non_commercial(x) for x in licence_set(licences)) or not licences).lower(),
        "unimedvl.sources": json.dumps({k: v["records"] for k, v in licences.items()}, sort_keys=True)[:5000],
    }
    if metrics is not None:
        inputs = eval_inputs(metrics)
        tags["unimedvl.eval.inputs"] = json.dumps(inputs, sort_keys=True)
        tags["unimedvl.eval.inputs_key"] = inputs_key(inputs)
        for key in headline:
            m = metrics.metrics.get(key)
            if m is None:
                continue
            tags[f"unimedvl.metric.{key}"] = (f"{m.value:.6g}" if m.value is not None and m.status.value == "ok"
                                              else m.status.value)
    return tags

"""The QC report: one HTML page + the same figures as PNG, and the MLflow run that keeps them.

The page shows the counts per reason, per modality, per source and per split (before and after),
histograms of image size and text length, example thumbnails of each quarantine reason (read
back from the rejected rows under `quarantine/`), the duplicate/leakage counts and the Great
Expectations results. Figures are files next to `index.html`, so the page opens from disk.
Texts shown in the report go through the ingest scrubber first: a row quarantined for residual
PHI must not put that PHI on a web page.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import QCConfig
from ..data.privacy import scrub_text
from ..data.schema import REASONS



def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar(path: Path, title: str, series: dict[str, dict[str, int]], horizontal: bool = True) -> None:
    plt = _plt()
    names = sorted({k for s in series.values() for k in s})
    fig, ax = plt.subplots(figsize=(7, max(2.2, 0.32 * len(names) + 1.2)))
    left = np.zeros(len(names))
    for label, s in series.items():
        vals = np.array([s.get(n, 0) for n in names], dtype=float)
        ax.barh(names, vals, left=left, label=label)
        left += vals
    ax.set_title(title)
    ax.invert_yaxis()
    if len(series) > 1:
        ax.legend(loc="lower right", fontsize=8)
    for i, v in enumerate(left):
        ax.text(v, i, f" {int(v)}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _hist(path: Path, title: str, series: dict[str, list[float]], xlabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    allv = [v for s in series.values() for v in s]
    if allv:
        bins = np.histogram_bin_edges(allv, bins=40)
        for label, vals in series.items():
            if vals:
                ax.hist(vals, bins=bins, alpha=0.6, label=f"{label} ({len(vals)})")
        ax.legend(fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _thumb_png(png: bytes, out: Path, side: int = 128) -> bool:
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(png)) as im:
            im.load()
            arr = np.asarray(im)
        if arr.dtype == np.uint16:
            arr = (arr / 257).astype(np.uint8)
        img = PILImage.fromarray(arr)
        img.thumbnail((side, side))
        img.save(out)
        return True
    except Exception:  # noqa: BLE001 - an undecodable image is exactly what some reasons show
        return False


def build_report(report_dir: Path, results: pa.Table, decided: dict[int, tuple[str, str]], metrics: dict[str, Any],
                 ge, quarantine_dir: Path, cfg: QCConfig) -> Path:
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    thumbs = report_dir / "thumbs"
    thumbs.mkdir(exist_ok=True)
    for old in list(thumbs.glob("*.png")) + list(report_dir.glob("*.png")):
        old.unlink()
    cols = results.select(["dataset", "modality", "split", "img_max_side", "text_len"]).to_pydict()
    n = results.num_rows
    status = ["quarantined" if i in decided else "accepted" for i in range(n)]
    figs = []

    def count(col: str) -> dict[str, dict[str, int]]:
        out: dict[str, Counter] = {"accepted": Counter(), "quarantined": Counter()}
        for v, s in zip(cols[col], status, strict=True):
            out[s][v or "missing"] += 1
        return {k: dict(v) for k, v in out.items()}

    reasons = Counter(r for r, _ in decided.values())
    _bar(report_dir / "counts_by_reason.png", "quarantined records per reason", {"quarantined": dict(reasons)})
    figs.append(("counts_by_reason.png", "Quarantined records per reason"))
    for col in ("modality", "dataset", "split"):
        name = f"counts_by_{'source' if col == 'dataset' else col}.png"
        _bar(report_dir / name, f"records per {'source' if col == 'dataset' else col}", count(col))
        figs.append((name, f"Accepted and quarantined records per {'source (dataset)' if col == 'dataset' else col}"))
    sizes: dict[str, list[float]] = defaultdict(list)
    texts: dict[str, list[float]] = defaultdict(list)
    for s, side, tl in zip(status, cols["img_max_side"], cols["text_len"], strict=True):
        if side is not None:
            sizes[s].append(side)
        texts[s].append(tl or 0)
    _hist(report_dir / "hist_image_size.png", "longer image side", dict(sizes), "pixels")
    _hist(report_dir / "hist_text_length.png", "text length (all turns)", dict(texts), "characters")
    figs += [("hist_image_size.png", "Image size (longer side)"), ("hist_text_length.png", "Text length")]

    examples = _examples(quarantine_dir, thumbs, cfg.thumbnails_per_reason)
    page = _html(metrics, figs, examples, ge)
    (report_dir / "index.html").write_text(page, encoding="utf-8")
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return report_dir / "index.html"


def _examples(quarantine_dir: Path, thumbs: Path, per_reason: int) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    path = Path(quarantine_dir) / "part-00000.parquet"
    if not path.exists() or per_reason <= 0:
        return out
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            reason = row["qc_reason"]
            if len(out[reason]) >= per_reason:
                continue
            imgs = []
            for k, img in enumerate((row.get("input_img") or []) + (row.get("output_img") or [])):
                name = f"{reason}-{len(out[reason])}-{k}.png"
                if _thumb_png(img["bytes"], thumbs / name):
                    imgs.append(f"thumbs/{name}")
                else:
                    imgs.append(None)
            text = " | ".join((t.get("value") or "") for t in (row.get("message") or []))
            text, _ = scrub_text(text[:300])
            out[reason].append({"id": row.get("id"), "dataset": row.get("dataset"), "split": row.get("split"),
                                "detail": row.get("qc_detail") or "", "images": imgs, "text": text})
        if all(len(v) >= per_reason for v in out.values()) and len(out) > 30:
            break
    return out


def _html(metrics: dict[str, Any], figs: list[tuple[str, str]], examples: dict[str, list[dict[str, Any]]], ge) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>UniMedVL QC report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}.fail{color:#b00}.ok{color:#070}"
        ".ex{display:inline-block;width:250px;vertical-align:top;margin:4px;font-size:11px}"
        ".ex img{max-width:120px;max-height:120px;margin-right:2px;border:1px solid #888}</style></head><body>",
        "<h1>QC report</h1>",
        f"<p><b>{metrics['seen']}</b> records read, <b>{metrics['accepted']}</b> accepted, "
        f"<b>{metrics['quarantined']}</b> quarantined ({metrics['quarantined_fraction']:.2%}). "
        f"Engine: {e(str(metrics['engine']))}; {metrics['seconds']['total']} s.</p>",
        "<h2>Quarantine reasons</h2><table><tr><th>reason</th><th>records</th><th>meaning</th></tr>",
    ]
    for r, c in sorted(metrics["quarantine_reasons"].items(), key=lambda x: -x[1]):
        parts.append(f"<tr><td>{e(r)}</td><td>{c}</td><td>{e(REASONS.get(r, ''))}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Duplicates and leakage</h2><pre>" + e(json.dumps(metrics.get("dedup", {}), indent=1)) + "</pre>")
    for name, caption in figs:
        parts.append(f"<h2>{e(caption)}</h2><img src='{e(name)}' alt='{e(caption)}'>")
    parts.append("<h2>Great Expectations results</h2>")
    parts.append(f"<p>{metrics['ge']['successful']} of {metrics['ge']['evaluated']} expectations met; "
                 f"{metrics['ge']['rows_failed']} rows quarantined by row-level expectations. "
                 "Full results: <a href='ge_validation.json'>ge_validation.json</a>.</p>")
    parts.append("<table><tr><th>expectation</th><th>arguments</th><th>level</th><th>reason</th><th>result</th>"
                 "<th>unexpected</th></tr>")
    for x in ge.per_expectation:
        ok = "<span class='ok'>met</span>" if x["success"] else "<span class='fail'>failed</span>"
        args = json.dumps(x["kwargs"], default=str)
        parts.append(f"<tr><td>{e(x['expectation'])}</td><td>{e(args[:120])}</td><td>{e(x['level'])}</td>"
                     f"<td>{e(str(x['reason'] or ''))}</td><td>{ok}</td><td>{e(str(x['unexpected_count']))}</td></tr>")
    parts.append("</table><h2>Examples of each quarantine reason</h2>")
    for reason, items in sorted(examples.items()):
        parts.append(f"<h3>{e(reason)}</h3><div>")
        for it in items:
            imgs = "".join(f"<img src='{e(p)}'>" if p else "<i>[undecodable]</i> " for p in it["images"])
            parts.append(f"<div class='ex'>{imgs}<br><b>{e(str(it['dataset']))}</b> / {e(str(it['split']))}<br>"
                         f"{e(it['detail'])}<br><i>{e(it['text'])}</i></div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --- MLflow --------------------------------------------------------------------------------------


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def log_run(cfg: QCConfig, metrics: dict[str, Any], report_dir: Path, metrics_path: Path, input_dir: Path | None = None) -> str | None:
    """QC's child run under the pipeline's parent (`unimedvl.tracking`, the `tracking` section of
    params.yaml): params, numeric metrics, the input shards as a dataset, the report folder and metrics.json."""
    from ..tracking import step_run

    numbers: dict[str, Any] = {}
    _flat("", {k: v for k, v in metrics.items() if k not in ("report",)}, numbers)
    numbers = {k.replace(":", "_").replace(">", "_to_"): float(v) for k, v in numbers.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    with step_run("qc", params={"qc": cfg.model_dump(exclude={"mlflow"})}, data=input_dir) as run:
        run.log_metrics(numbers)
        run.log_artifact(report_dir, "report")
        run.log_artifact(metrics_path)
    return run.run_id

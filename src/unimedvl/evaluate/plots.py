"""DVC plot files of an evaluation (`dvc plots show` renders them; dvc.yaml names their axes)."""

from __future__ import annotations

import json
from pathlib import Path


def write_plots(ev, out: Path) -> dict[str, Path]:
    """by_group.json (accuracy per source / modality / finding), faithfulness.json (model vs untrained
    per finding), confusion.json (closed VQA, actual x predicted) and confusion_finding.json."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("by_group", "faithfulness", "confusion", "confusion_finding", "image_pairs"):
        rows = ev.plots.get(name)
        if rows is None:
            continue
        if name == "by_group":
            rows = [{**r, "label": f"{r['family']}/{r['by']}/{r['group']}"} for r in rows]
        path = out / f"{name}.json"
        path.write_text(json.dumps(rows, indent=1) + "\n")
        written[name] = path
    return written

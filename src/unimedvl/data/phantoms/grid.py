"""A picture of the phantom data: a grid of chest radiographs and brain MRIs with their captions.

`unimedvl phantom-grid --output docs/phantoms.png` calls `write_grid`; the grid is drawn from the
same sampler, renderer and caption templates the phantom source uses, at the configured image size.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from . import render_from_labels
from .findings import sample_brain_labels, sample_chest_labels
from .text import caption

# What each grid cell shows, in order: chest findings one per cell, brain contrasts one per cell.
CHEST_CELLS = (None, "nodule", "effusion", "pneumothorax", "consolidation", "cardiomegaly")
BRAIN_CELLS = (("T1", "lesion"), ("T2", "lesion"), ("FLAIR", "lesion"), ("T1c", "enhancing"), ("T2", None),
               ("T1c", "non-enhancing"))


def _wanted(labels: dict[str, Any], want: str | None) -> bool:
    fs = labels["findings"]
    if want is None:
        return not fs
    if want in ("enhancing", "non-enhancing"):
        return len(fs) == 1 and fs[0]["enhancing"] == (want == "enhancing")
    return {f["type"] for f in fs} == {want}


def grid_items(cfg: Any, count: int = 12, seed: int = 0) -> list[tuple[np.ndarray, str, dict[str, Any]]]:
    """(image, caption, labels) for `count` phantoms, chest and brain alternating: a normal chest,
    then one chest per finding type; brain MRIs in T1, T2, FLAIR and T1c (enhancing and not)."""
    items = []
    for i in range(count):
        chest_cell = i % 2 == 0
        cell = (CHEST_CELLS if chest_cell else BRAIN_CELLS)[(i // 2) % len(CHEST_CELLS)]
        for attempt in range(200):
            rng = np.random.default_rng([seed, 0x6121D, i, attempt])
            if chest_cell:
                labels = sample_chest_labels(rng, cfg, need_finding=cell is not None)
                if cell is None:
                    labels["findings"] = []
                ok = _wanted(labels, cell)
            else:
                contrast, want = cell
                labels = sample_brain_labels(rng, cfg, need_finding=want is not None, contrast=contrast)
                ok = _wanted(labels, None if want is None else ("lesion" if want == "lesion" else want))
            if ok:
                break
        items.append((render_from_labels(labels), caption(labels, rng), labels))
    return items


def write_grid(output: str | Path, cfg: Any, count: int = 12, seed: int = 0, columns: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = grid_items(cfg, count, seed)
    rows = (len(items) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 3.3 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, cap, labels) in zip(axes.flat, items, strict=False):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"{labels['family']} · {labels.get('contrast', 'PA')} · {labels['spacing_mm']:.1f} mm/px",
                     fontsize=7, color="0.35")
        ax.text(0.5, -0.03, "\n".join(textwrap.wrap(cap, 36)), transform=ax.transAxes, ha="center", va="top", fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.96, bottom=0.1, wspace=0.08, hspace=0.55)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out

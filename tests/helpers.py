"""Small builders shared by tests (import as `from tests.helpers import ...`)."""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage


def write_png(path, seed: int = 0, size=(48, 64), mode="L"):
    """A small non-constant test image (gradient + seeded noise)."""
    rng = np.random.default_rng(seed)
    h, w = size
    base = np.add.outer(np.linspace(0, 200, h), np.linspace(0, 50, w))
    arr = np.clip(base + rng.integers(0, 30, (h, w)), 0, 255).astype(np.uint8)
    if mode == "RGB":
        arr = np.stack([arr, arr[::-1], arr[:, ::-1]], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr).save(path)
    return path

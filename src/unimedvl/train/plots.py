"""Figures logged by the stages: loss curves and image grids (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def loss_curves_png(rows: list[dict[str, float]], heldout: list[dict[str, float]], out: Path, title: str) -> Path:
    """Training ce / mse / total per step (and held-out points) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes, ("loss", "ce", "mse"), strict=True):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], lw=0.8, label="train")
        if heldout:
            ax.plot([h["step"] for h in heldout], [h[key] for h in heldout], "o-", label="held-out")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def image_grid_png(images: list, captions: list[str], out: Path) -> Path:
    """Images [3, H, W] in [-1, 1] side by side with their prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.8))
    axes = [axes] if n == 1 else list(axes)
    for ax, img, cap in zip(axes, images, captions, strict=True):
        arr = ((img.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
        ax.imshow(arr)
        ax.set_title(cap[:28], fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out

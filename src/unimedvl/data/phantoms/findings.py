"""Ground truth: sample a phantom patient's anatomy and findings, and derive edited versions of it.

Every size is drawn so that the finding is visible at the configured image size: a finding is never
smaller than `min_visible_px` pixels (diameter, rim, height or width change). Where that floor lies
above the clinical lower bound of the finding, the floor wins and the finding says so
(`visible_floor_applied: true`); the image labels carry `min_visible_mm` either way.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Protocol

import numpy as np

from . import brain, chest
from ._raster import grid

LABELS_VERSION = 1


class SamplerConfig(Protocol):
    image_size: int
    min_visible_px: float


def _u(rng: np.random.Generator, lo: float, hi: float, nd: int = 4) -> float:
    """A uniform draw rounded to `nd` decimals, never rounded below `lo`."""
    return max(_ceil(lo, nd), round(float(rng.uniform(lo, hi)), nd))


def _ceil(x: float, nd: int) -> float:
    """x rounded up to `nd` decimals (a floor that rounding must not undercut)."""
    k = 10**nd
    return math.ceil(x * k - 1e-9) / k


def _weighted(rng: np.random.Generator, weights: list[float]) -> int:
    """Index drawn with probability proportional to its weight (cheaper than rng.choice with p)."""
    x = rng.random() * sum(weights)
    for i, w in enumerate(weights):
        x -= w
        if x < 0:
            return i
    return len(weights) - 1


def _n_findings(rng: np.random.Generator, need_finding: bool, probs: tuple[float, ...]) -> int:
    p = list(probs[1:] if need_finding else probs)
    return _weighted(rng, p) + (1 if need_finding else 0)


# --- chest ------------------------------------------------------------------------------------------

CHEST_TYPE_WEIGHTS = {"nodule": 0.3, "consolidation": 0.2, "effusion": 0.2, "pneumothorax": 0.12, "cardiomegaly": 0.18}
CHEST_COUNT_PROBS = (0.3, 0.35, 0.22, 0.13)  # 0, 1, 2, 3 finding types


def sample_chest_labels(rng: np.random.Generator, cfg: SamplerConfig, *, need_finding: bool = False) -> dict[str, Any]:
    """A chest phantom's full ground truth (renderable with `render_from_labels`)."""
    size = int(cfg.image_size)
    anatomy = chest.sample_anatomy(rng)
    fov = anatomy["fov_mm"]
    spacing = fov / size
    vis_mm = cfg.min_visible_px * spacing
    labels: dict[str, Any] = {
        "family": "chest",
        "version": LABELS_VERSION,
        "view": "PA",
        "seed": int(rng.integers(0, 2**31 - 1)),
        "size": size,
        "spacing_mm": round(spacing, 4),
        "min_visible_px": float(cfg.min_visible_px),
        "min_visible_mm": _ceil(vis_mm, 2),
        "anatomy": anatomy,
        "findings": [],
    }
    n = _n_findings(rng, need_finding, CHEST_COUNT_PROBS)
    names = list(CHEST_TYPE_WEIGHTS)
    types = []
    for _ in range(n):  # weighted, without replacement
        types.append(names.pop(_weighted(rng, [CHEST_TYPE_WEIGHTS[k] for k in names])))
    if "nodule" in types and rng.random() < 0.25:
        types.append("nodule")  # several nodules
    for t in sorted(types, key=lambda t: ("effusion", "pneumothorax", "cardiomegaly", "nodule", "consolidation").index(t)):
        f = _sample_chest_finding(rng, labels, str(t))
        if f is not None:
            labels["findings"].append(f)
    if need_finding and not labels["findings"]:
        labels["findings"].append(_sample_chest_finding(rng, labels, "cardiomegaly"))
    labels["findings"].sort(key=lambda f: chest.FINDING_TYPES.index(f["type"]))
    return labels


def _taken_sides(labels: dict[str, Any], kind: str) -> set[str]:
    return {f["side"] for f in labels["findings"] if f["type"] == kind}


def _sample_chest_finding(rng: np.random.Generator, labels: dict[str, Any], kind: str) -> dict[str, Any] | None:
    A = labels["anatomy"]
    size = labels["size"]
    vis_mm = labels["min_visible_mm"]
    if kind == "effusion":
        side = chest.SIDES[int(rng.integers(2))]
        grade = list(chest.EFFUSION_GRADES)[int(rng.integers(3))]
        return _effusion(labels, side, grade, rng)
    if kind == "pneumothorax":
        free = [s for s in chest.SIDES if s not in _taken_sides(labels, "effusion")]
        side = free[int(rng.integers(len(free)))]
        grade = list(chest.PNEUMOTHORAX_SIZES)[int(rng.integers(2))]
        lo, hi = chest.PNEUMOTHORAX_SIZES[grade]
        floor = max(lo, vis_mm)
        rim = _u(rng, floor, max(hi, floor + 1.0), 1)
        return {"type": "pneumothorax", "side": side, "size": _ptx_size(rim), "rim_mm": rim,
                "visible_floor_applied": bool(vis_mm > lo)}
    if kind == "cardiomegaly":
        normal = A["heart"]["ctr"]
        floor = normal + labels["min_visible_px"] / (chest.thoracic_width(A) * size)
        lo = max(chest.CARDIOMEGALY_CTR[0], floor)
        ctr = min(_u(rng, lo, max(chest.CARDIOMEGALY_CTR[1], lo), 3), chest.MAX_CTR)
        return {"type": "cardiomegaly", "ctr": ctr, "visible_floor_applied": bool(floor > chest.CARDIOMEGALY_CTR[0])}
    lobes = _free_lobes(labels)
    rng.shuffle(lobes)
    for lobe in lobes:
        f = _nodule(rng, labels, lobe) if kind == "nodule" else _consolidation(rng, labels, lobe)
        if f is not None:
            return f
    return None


def _ptx_size(rim_mm: float) -> str:
    return "large" if rim_mm >= chest.PNEUMOTHORAX_SIZES["large"][0] else "small"


def _effusion(labels: dict[str, Any], side: str, grade: str, rng: np.random.Generator | None,
              height_fraction: float | None = None) -> dict[str, Any]:
    A = labels["anatomy"]
    apex, base = chest.lung_field(A, side)
    h_mm_per_fraction = (base - apex) * A["fov_mm"]
    floor = labels["min_visible_mm"] / h_mm_per_fraction
    lo, hi = chest.EFFUSION_GRADES[grade]
    if height_fraction is None:
        assert rng is not None
        height_fraction = _u(rng, max(lo, floor), max(hi, floor + 0.02), 3)
    return {
        "type": "effusion", "side": side, "grade": grade, "height_fraction": height_fraction,
        "height_mm": round(height_fraction * h_mm_per_fraction, 1), "visible_floor_applied": bool(floor > lo),
    }


def _free_lobes(labels: dict[str, Any]) -> list[str]:
    """Lobes where a new nodule / consolidation does not sit under fluid or a pneumothorax."""
    out = []
    ptx = _taken_sides(labels, "pneumothorax")
    eff = {f["side"]: f["height_fraction"] for f in labels["findings"] if f["type"] == "effusion"}
    for lobe, (side, _f0, f1) in chest.LOBES.items():
        if side in ptx:
            continue
        if side in eff and f1 > 1.0 - 1.35 * eff[side] - 0.05:
            continue
        out.append(lobe)
    return out


def _clear_of(labels: dict[str, Any], cy, cx, r: float):
    """Whether disk(s) of radius r at (cy, cx) keep clear of the nodules and consolidations placed."""
    ok = np.ones(np.shape(cy), dtype=bool)
    for f in labels["findings"]:
        if f["type"] in ("nodule", "consolidation"):
            fy, fx = f["center"]
            fr = f["size_mm"] / 2 / labels["anatomy"]["fov_mm"] if f["type"] == "nodule" else max(f["radii"])
            ok &= np.sqrt((np.asarray(cy) - fy) ** 2 + (np.asarray(cx) - fx) ** 2) >= r + fr + 0.02
    return ok


def _nodule(rng: np.random.Generator, labels: dict[str, Any], lobe: str) -> dict[str, Any] | None:
    """Place a nodule: draw a size, test 32 candidate centres at once, shrink the size if none fits."""
    A = labels["anatomy"]
    fov = A["fov_mm"]
    vis_mm = labels["min_visible_mm"]
    lo = _ceil(max(chest.NODULE_MM[0], vis_mm), 1)
    size_mm = _u(rng, lo, max(chest.NODULE_MM[1], lo), 1)
    side = chest.LOBES[lobe][0]
    lung = A["lungs"][side]
    y0, y1 = chest.lobe_rows(A, lobe)
    ctr = chest.heart_ctr(labels)
    margin = 1.5 / labels["size"]
    for _ in range(8):
        r = size_mm / 2 / fov
        if y1 - y0 > 2 * r:
            cy = rng.uniform(y0 + r, y1 - r, 32)
            cx = rng.uniform(lung["cx"] - lung["rx"], lung["cx"] + lung["rx"], 32)
            ok = (
                (chest.lung_sd(A, side, cy, cx) < -(r + margin))
                & (chest.heart_sd(A, ctr, cy, cx) > r + margin)
                & chest.in_lobe(A, lobe, cy, cx)
                & _clear_of(labels, cy, cx, r)
            )
            if ok.any():
                i = int(np.argmax(ok))
                return {
                    "type": "nodule", "lobe": lobe, "side": side, "size_mm": size_mm,
                    "center": [round(float(cy[i]), 4), round(float(cx[i]), 4)], "density": _u(rng, 0.2, 0.3, 3),
                    "visible_floor_applied": bool(vis_mm > chest.NODULE_MM[0]),
                }
        if size_mm <= lo:
            return None
        size_mm = max(lo, round(size_mm * 0.85, 1))
    return None


def consolidation_stats(labels: dict[str, Any], f: dict[str, Any]) -> tuple[float, float]:
    """(area in pixels, fraction of the lobe zone) of a consolidation at the labels' size."""
    S = labels["size"]
    A = labels["anatomy"]
    yy, xx = grid(S)
    central, _ = chest.central_cov(A, chest.heart_ctr(labels), yy, xx, S)
    area = float((chest.consolidation_cov(A, f, yy, xx, S) * (1.0 - central)).sum())
    y0, y1 = chest.lobe_rows(A, f["lobe"])
    from ._raster import band_cov

    zone = float((chest.lung_cov_side(A, f["side"], yy, xx, S) * band_cov(yy, y0, y1, S)).sum())
    return area, area / max(zone, 1e-9)


def _extent(fraction: float) -> str:
    return "patchy" if fraction < 0.25 else ("segmental" if fraction < 0.5 else "lobar")


def _finish_consolidation(labels: dict[str, Any], f: dict[str, Any]) -> dict[str, Any] | None:
    area_px, frac = consolidation_stats(labels, f)
    minpx = labels["min_visible_px"]
    if area_px < max(2.0 * minpx * minpx, 6.0):
        return None
    spacing = labels["anatomy"]["fov_mm"] / labels["size"]
    f["area_mm2"] = round(area_px * spacing * spacing, 1)
    f["fraction_of_lobe"] = round(frac, 3)
    f["extent"] = _extent(frac)
    return f


def _consolidation(rng: np.random.Generator, labels: dict[str, Any], lobe: str) -> dict[str, Any] | None:
    A = labels["anatomy"]
    side = chest.LOBES[lobe][0]
    lung = A["lungs"][side]
    y0, y1 = chest.lobe_rows(A, lobe)
    minr = labels["min_visible_px"] / labels["size"]
    for _ in range(40):
        ry = max(minr, float(rng.uniform(0.3, 0.6)) * (y1 - y0))
        rx = max(minr, float(rng.uniform(0.3, 0.7)) * lung["rx"])
        cy = float(rng.uniform(y0 + 0.25 * (y1 - y0), y1 - 0.25 * (y1 - y0)))
        cx = float(rng.uniform(lung["cx"] - 0.6 * lung["rx"], lung["cx"] + 0.6 * lung["rx"]))
        if chest.lung_sd(A, side, cy, cx) > -0.5 * min(ry, rx) or not bool(_clear_of(labels, cy, cx, max(ry, rx))):
            continue
        f = {"type": "consolidation", "lobe": lobe, "side": side, "center": [round(cy, 4), round(cx, 4)],
             "radii": [round(ry, 4), round(rx, 4)], "density": _u(rng, 0.22, 0.3, 3), "visible_floor_applied": False}
        if (done := _finish_consolidation(labels, f)) is not None:
            return done
    return None


# --- brain ------------------------------------------------------------------------------------------

BRAIN_COUNT_PROBS = (0.35, 0.45, 0.2)  # 0, 1, 2 lesions
LESION_MM = (5.0, 40.0)


def sample_brain_labels(
    rng: np.random.Generator, cfg: SamplerConfig, *, need_finding: bool = False, contrast: str = "T1"
) -> dict[str, Any]:
    """A brain MRI phantom's full ground truth; `contrast` picks the sequence it renders as."""
    size = int(cfg.image_size)
    anatomy = brain.sample_anatomy(rng)
    spacing = anatomy["fov_mm"] / size
    vis_mm = cfg.min_visible_px * spacing
    labels: dict[str, Any] = {
        "family": "brain",
        "version": LABELS_VERSION,
        "plane": "axial",
        "contrast": contrast,
        "seed": int(rng.integers(0, 2**31 - 1)),
        "size": size,
        "spacing_mm": round(spacing, 4),
        "min_visible_px": float(cfg.min_visible_px),
        "min_visible_mm": _ceil(vis_mm, 2),
        "anatomy": anatomy,
        "findings": [],
    }
    n = _n_findings(rng, need_finding, BRAIN_COUNT_PROBS)
    for _ in range(n):
        lobes = list(brain.LOBES)
        rng.shuffle(lobes)
        hemis = list(brain.HEMISPHERES)
        rng.shuffle(hemis)
        for lobe in lobes:
            f = _lesion(rng, labels, lobe, hemis[0]) or _lesion(rng, labels, lobe, hemis[1])
            if f is not None:
                labels["findings"].append(f)
                break
    if need_finding and not labels["findings"]:
        # Very small images: let the lesion reach into the cortex rather than have none.
        for lobe in brain.LOBES:
            if (f := _lesion(rng, labels, lobe, "left", relaxed=True) or _lesion(rng, labels, lobe, "right", relaxed=True)):
                labels["findings"].append(f)
                break
    return labels


def _lesion(rng: np.random.Generator, labels: dict[str, Any], lobe: str, hemisphere: str,
            relaxed: bool = False) -> dict[str, Any] | None:
    """Place a lesion: draw a size, then take the largest size of a ladder down from it to the
    visible floor for which one of 64 candidate centres fits (one vectorised check)."""
    A = labels["anatomy"]
    vis_mm = labels["min_visible_mm"]
    lo = _ceil(max(LESION_MM[0], vis_mm), 1)
    clearance = (0.0 if relaxed else 1.0) / labels["size"]
    target = _u(rng, lo, max(LESION_MM[1], lo), 1)
    ladder = [target]
    while ladder[-1] > lo:
        ladder.append(max(lo, round(ladder[-1] * 0.87, 1)))  # ends at lo exactly
    cy, cx = brain.random_points(rng, A, lobe, hemisphere, 64)
    ok = lesion_ok(labels, lobe, hemisphere, cy, cx, ladder, clearance, relaxed=relaxed, first_only=True)
    for k, size_mm in enumerate(ladder):  # largest first; the first centre that fits it wins
        if ok[k].any():
            i = int(np.argmax(ok[k]))
            return {
                "type": "lesion", "lobe": lobe, "hemisphere": hemisphere, "side": hemisphere,
                "size_mm": float(size_mm), "center": [round(float(cy[i]), 4), round(float(cx[i]), 4)],
                "enhancing": bool(rng.random() < 0.5), "visible_floor_applied": bool(vis_mm > LESION_MM[0]),
            }
    return None


def lesion_ok(labels: dict[str, Any], lobe: str, hemisphere: str, cy, cx, size_mm,
              clearance: float, skip: int | None = None, relaxed: bool = False, first_only: bool = False) -> np.ndarray:
    """(sizes x centres) table: whether a lesion of each size fits at each centre, inside its lobe
    and clear of the other lesions. Rounding of the stored centre is allowed for."""
    fov = labels["anatomy"]["fov_mm"]
    r = np.atleast_1d(np.asarray(size_mm, dtype=float)) / 2 / fov + 1e-4
    cy = np.atleast_1d(np.asarray(cy, dtype=float))
    cx = np.atleast_1d(np.asarray(cx, dtype=float))
    clear = np.ones((r.size, cy.size), dtype=bool)
    for j, g in enumerate(labels["findings"]):
        if j != skip:
            gap = np.sqrt((cy - g["center"][0]) ** 2 + (cx - g["center"][1]) ** 2)[None, :]
            clear &= gap > r[:, None] + g["size_mm"] / 2 / fov + 2.0 / labels["size"]
    keep = np.flatnonzero(clear.any(axis=0))  # centres clear of the other lesions for some size
    ok = np.zeros_like(clear)
    if keep.size:
        fits = brain.lesion_fits(labels["anatomy"], lobe, hemisphere, cy[keep], cx[keep], r, clearance, relaxed, first_only)
        ok[:, keep] = fits & clear[:, keep]
    return ok


# --- edits: counterfactual and progression -------------------------------------------------------


def without_finding(labels: dict[str, Any], index: int) -> dict[str, Any]:
    """The same patient's labels with finding `index` removed (the counterfactual)."""
    out = copy.deepcopy(labels)
    removed = out["findings"].pop(index)
    if removed["type"] == "cardiomegaly":
        refresh_consolidations(out)
    return out


def with_chest_finding(labels: dict[str, Any], kind: str, rng: np.random.Generator) -> dict[str, Any] | None:
    """The same chest patient's labels with one `kind` finding added, drawn as the sampler draws it;
    None where it cannot go (no free lobe, or a pleural side already taken by the other pleural finding)."""
    pleural = {"effusion": "pneumothorax", "pneumothorax": "effusion"}
    if kind in pleural and (_taken_sides(labels, pleural[kind]) or _taken_sides(labels, kind)):
        return None
    out = copy.deepcopy(labels)
    f = _sample_chest_finding(rng, out, kind)
    if f is None:
        return None
    out["findings"].append(f)
    out["findings"].sort(key=lambda g: chest.FINDING_TYPES.index(g["type"]))
    if kind == "cardiomegaly":
        refresh_consolidations(out)
    return out


def refresh_consolidations(labels: dict[str, Any]) -> None:
    """Recompute the visible area of every consolidation (the heart size hides part of the lung)."""
    for f in labels["findings"]:
        if f["type"] == "consolidation":
            area_px, frac = consolidation_stats(labels, f)
            spacing = labels["anatomy"]["fov_mm"] / labels["size"]
            f["area_mm2"] = round(area_px * spacing * spacing, 1)
            f["fraction_of_lobe"] = round(frac, 3)
            f["extent"] = _extent(frac)


def progress_finding(labels: dict[str, Any], index: int, direction: str) -> dict[str, Any] | None:
    """Labels with finding `index` one grade worse (`up`) or better (`down`); None if impossible.

    Position and every other parameter stay the same, so the pair differs only at that finding.
    """
    assert direction in ("up", "down")
    out = copy.deepcopy(labels)
    f = out["findings"][index]
    up = direction == "up"
    t = f["type"]
    vis = labels["min_visible_mm"]
    if t == "effusion":
        grades = list(chest.EFFUSION_GRADES)
        i = grades.index(f["grade"]) + (1 if up else -1)
        if not 0 <= i < len(grades):
            return None
        lo, hi = chest.EFFUSION_GRADES[grades[i]]
        out["findings"][index] = _effusion(out, f["side"], grades[i], None, round((lo + hi) / 2, 3))
        if not up and out["findings"][index]["visible_floor_applied"]:
            return None
        out["findings"][index]["visible_floor_applied"] = f["visible_floor_applied"]
    elif t == "pneumothorax":
        rim = round(f["rim_mm"] * (1.6 if up else 0.6), 1)
        if rim > 60.0 or rim < max(8.0, vis):
            return None
        f["rim_mm"], f["size"] = rim, _ptx_size(rim)
    elif t == "cardiomegaly":
        ctr = round(f["ctr"] + (0.06 if up else -0.06), 3)
        normal = labels["anatomy"]["heart"]["ctr"]
        floor = normal + labels["min_visible_px"] / (chest.thoracic_width(labels["anatomy"]) * labels["size"])
        if ctr > chest.MAX_CTR or ctr < max(0.53, floor):
            return None
        f["ctr"] = ctr
        refresh_consolidations(out)
    elif t == "nodule":
        size = round(f["size_mm"] * (1.4 if up else 0.7), 1)
        if size > 30.0 or size < max(chest.NODULE_MM[0], vis):
            return None
        r = size / 2 / labels["anatomy"]["fov_mm"]
        cy, cx = f["center"]
        A = labels["anatomy"]
        if up and (chest.lung_sd(A, f["side"], cy, cx) > -(r + 1.5 / labels["size"])
                   or chest.lobe_of_point(A, cy, cx) != f["lobe"]
                   or not bool(_clear_of({**out, "findings": [g for j, g in enumerate(out["findings"]) if j != index]}, cy, cx, r))):
            return None
        if up and not (chest.lobe_rows(A, f["lobe"])[0] + r <= cy <= chest.lobe_rows(A, f["lobe"])[1] - r):
            return None
        f["size_mm"] = size
    elif t == "consolidation":
        k = 1.3 if up else 0.75
        f["radii"] = [round(f["radii"][0] * k, 4), round(f["radii"][1] * k, 4)]
        if _finish_consolidation(out, f) is None or (up and f["area_mm2"] <= labels["findings"][index]["area_mm2"]):
            return None
    elif t == "lesion":
        size = round(f["size_mm"] * (1.4 if up else 0.7), 1)
        if size > 45.0 or size < max(LESION_MM[0], vis):
            return None
        if up and not lesion_ok(out, f["lobe"], f["hemisphere"], *f["center"], size, 1.0 / out["size"], skip=index)[0, 0]:
            return None
        f["size_mm"] = size
    else:
        return None
    return out

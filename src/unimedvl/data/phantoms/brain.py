"""Brain MRI phantoms: an axial slice through the lateral ventricles in T1, T2, FLAIR and T1c.

Tissues (scalp fat, skull with diploe, CSF, cortical grey matter with gyri and sulci, white matter,
deep grey nuclei, lateral and third ventricles, choroid plexus) are coverage maps of one anatomy;
each contrast is a table of tissue intensities over the same maps, so T1 -> T2 / FLAIR is the same
anatomy. Lesions are hypointense on T1, hyperintense on T2 and FLAIR; an enhancing lesion is bright
**only on T1c** (solid below 18 mm, ring-enhancing with a necrotic core from 18 mm). T1c differs
from T1 only where something enhances (lesions, choroid plexus, dural sinus).

Radiological convention: the patient's left hemisphere is on the image right (x > 0.5); anterior
is up. `lobe_of_point` is the lobe geometry (in brain-normalised coordinates) that the sampler
places lesions with and that the tests check the pixels against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._raster import (
    Draws,
    box,
    clip,
    coverage,
    disk_cov,
    grid,
    lerp,
    rotated_ellipse_sd,
    smooth_field,
    zeros,
)

CONTRASTS = ("T1", "T2", "FLAIR", "T1c")
CONTRAST_NAMES = {
    "T1": "T1-weighted",
    "T2": "T2-weighted",
    "FLAIR": "FLAIR",
    "T1c": "post-contrast T1-weighted",
}
LOBES = ("frontal", "parietal", "temporal", "occipital")
HEMISPHERES = ("right", "left")
RING_MM = 18.0  # enhancing lesions at least this large enhance as a ring
WM_DIP = 1.2  # how far the grey/white boundary dips under a sulcus, in sulcus depths

# Tissue intensities per contrast (0..1 before bias field and noise).
TISSUE = {
    "T1": {"scalp": 0.85, "bone": 0.06, "diploe": 0.55, "csf": 0.12, "gm": 0.46, "wm": 0.70, "deep": 0.52,
           "choroid": 0.22, "sinus": 0.2, "lesion": 0.28, "enhance": 0.28},
    "T2": {"scalp": 0.62, "bone": 0.05, "diploe": 0.45, "csf": 0.95, "gm": 0.58, "wm": 0.38, "deep": 0.47,
           "choroid": 0.75, "sinus": 0.1, "lesion": 0.85, "enhance": 0.85},
    "FLAIR": {"scalp": 0.55, "bone": 0.05, "diploe": 0.4, "csf": 0.07, "gm": 0.55, "wm": 0.40, "deep": 0.48,
              "choroid": 0.1, "sinus": 0.1, "lesion": 0.90, "enhance": 0.90},
    "T1c": {"scalp": 0.85, "bone": 0.06, "diploe": 0.55, "csf": 0.12, "gm": 0.46, "wm": 0.70, "deep": 0.52,
            "choroid": 0.8, "sinus": 0.85, "lesion": 0.28, "enhance": 0.95},
}


def sample_anatomy(rng: np.random.Generator) -> dict[str, Any]:
    u = Draws(rng, 16)
    ry = u(0.42, 0.46)
    return {
        "fov_mm": u(220.0, 250.0, 1),
        "head": {"cy": u(0.49, 0.52), "cx": 0.5, "ry": ry, "rx": round(ry * u(0.78, 0.86), 4)},
        "scalp": u(0.03, 0.04),
        "skull": u(0.045, 0.06),
        "csf": u(0.015, 0.03),
        "cortex": u(0.05, 0.065),
        "gyri": {"n": int(u(16, 24, 0)), "phase": u(0, 6.2832), "phase2": u(0, 6.2832), "depth": u(0.04, 0.065)},
        "ventricles": {"scale": u(0.8, 1.3), "angle": u(0.1, 0.22)},
        "bias": u(0.04, 0.1),
        "noise": u(0.012, 0.025),
    }


# --- geometry -------------------------------------------------------------------------------------


def brain_radius(anatomy: dict[str, Any]) -> float:
    """Outer brain surface (before sulci) in head-normalised radius units (the scalp is 1)."""
    return 1.0 - anatomy["scalp"] - anatomy["skull"] - anatomy["csf"]


def _gyral_wave(anatomy: dict[str, Any], theta):
    g = anatomy["gyri"]
    wave = clip(np.cos(g["n"] * theta + g["phase"] + 0.9 * np.sin(3 * theta + g["phase2"])), 0.0, 1.0)
    depth = g["depth"] * (0.6 + 0.4 * np.sin(5 * theta + g["phase2"]))
    return wave, depth


def white_matter_edge(anatomy: dict[str, Any], theta):
    """Radius (head units) of the grey/white boundary in direction theta (it dips under sulci)."""
    wave, depth = _gyral_wave(anatomy, theta)
    return brain_radius(anatomy) - anatomy["cortex"] - WM_DIP * depth * wave**2


def pial_edge(anatomy: dict[str, Any], theta):
    """Radius (head units) of the brain surface in direction theta (sulci are narrow clefts)."""
    wave, depth = _gyral_wave(anatomy, theta)
    return brain_radius(anatomy) - depth * wave**6


def brain_coords(anatomy: dict[str, Any], y, x):
    """(u, w): brain-normalised coordinates, brain surface at u^2 + w^2 = 1, w < 0 anterior."""
    h = anatomy["head"]
    rb = brain_radius(anatomy)
    return (x - h["cx"]) / (h["rx"] * rb), (y - h["cy"]) / (h["ry"] * rb)


def hemisphere_of_x(anatomy: dict[str, Any], x: float) -> str:
    return "left" if x >= anatomy["head"]["cx"] else "right"


# lobe -> (w range) in brain-normalised coordinates (w < 0 anterior); temporal / parietal split at |u| = 0.6.
LOBE_ROWS = {"frontal": (-1.0, -0.25), "parietal": (-0.25, 0.5), "temporal": (-0.25, 0.5), "occipital": (0.5, 1.0)}
TEMPORAL_U = 0.6


def in_lobe(anatomy: dict[str, Any], lobe: str, hemisphere: str, y, x):
    """Whether normalised point(s) lie in that lobe zone and hemisphere (vectorised)."""
    u, w = brain_coords(anatomy, y, x)
    lo, hi = LOBE_ROWS[lobe]
    m = (w >= lo) & (w < hi) if lobe != "frontal" else (w < hi)
    if lobe == "occipital":
        m = w >= lo
    if lobe == "temporal":
        m = m & (np.abs(u) >= TEMPORAL_U)
    elif lobe == "parietal":
        m = m & (np.abs(u) < TEMPORAL_U)
    left = x >= anatomy["head"]["cx"]
    return m & (left if hemisphere == "left" else ~np.asarray(left))


def lobe_of_point(anatomy: dict[str, Any], y: float, x: float) -> tuple[str, str]:
    """(lobe, hemisphere) of a normalised point on the axial slice."""
    hemi = hemisphere_of_x(anatomy, x)
    for lobe in LOBES:
        if bool(in_lobe(anatomy, lobe, hemi, y, x)):
            return lobe, hemi
    raise AssertionError("unreachable")


def random_points(rng: np.random.Generator, anatomy: dict[str, Any], lobe: str, hemisphere: str, n: int):
    """n candidate centres (cy, cx arrays) drawn over the bounding box of a lobe zone."""
    h = anatomy["head"]
    rb = brain_radius(anatomy)
    lo, hi = LOBE_ROWS[lobe]
    ulo = TEMPORAL_U if lobe == "temporal" else 0.0
    uhi = TEMPORAL_U if lobe == "parietal" else 1.0
    w = rng.uniform(lo, hi, n)
    u = rng.uniform(ulo, uhi, n) * (1.0 if hemisphere == "left" else -1.0)
    return h["cy"] + w * h["ry"] * rb, h["cx"] + u * h["rx"] * rb


def _deep_structures(anatomy: dict[str, Any]) -> dict[str, list[tuple[float, float, float, float, float]]]:
    """(cy, cx, ry, rx, angle) ellipses of ventricles, nuclei, choroid plexus, third ventricle."""
    h = anatomy["head"]
    cy, cx = h["cy"], h["cx"]
    v = anatomy["ventricles"]
    sc = v["scale"]
    horn = 0.3 + v["angle"]
    k = h["ry"] / 0.44
    out: dict[str, list] = {"ventricle": [], "deep": [], "choroid": [], "third": []}
    for sgn in (-1.0, 1.0):
        out["ventricle"] += [
            (cy - 0.015 * k, cx + sgn * 0.04 * k * sc**0.5, 0.1 * k, 0.022 * k * sc, 0.0),  # body
            (cy - 0.115 * k, cx + sgn * 0.05 * k * sc**0.5, 0.06 * k, 0.026 * k * sc, sgn * horn),  # frontal horn
            (cy + 0.095 * k, cx + sgn * 0.055 * k * sc**0.5, 0.07 * k, 0.026 * k * sc, -sgn * horn),  # atrium
        ]
        out["deep"].append((cy + 0.03 * k, cx + sgn * 0.1 * k, 0.065 * k, 0.04 * k, 0.0))  # thalamus
        out["deep"].append((cy - 0.1 * k, cx + sgn * 0.1 * k, 0.04 * k, 0.024 * k, -sgn * 0.3))  # caudate head
        out["choroid"].append((cy + 0.11 * k, cx + sgn * 0.065 * k * sc**0.5, 0.02 * k, 0.014 * k, 0.0))
    out["third"].append((cy + 0.03 * k, cx, 0.045 * k, 0.007 * k * sc, 0.0))
    return out


def _rot_sd(y, x, e):
    cy, cx, ry, rx, a = e
    return rotated_ellipse_sd(y, x, cy, cx, ry, rx, a)


_RING = np.linspace(0.0, 2 * np.pi, 16, endpoint=False)
_COS, _SIN = np.cos(_RING), np.sin(_RING)


def lesion_fits(anatomy: dict[str, Any], lobe: str, hemisphere: str, cy, cx, r,
                clearance: float = 0.01, relaxed: bool = False, first_only: bool = False) -> np.ndarray:
    """Lesions of radius r[k] at centres (cy[n], cx[n]): a (K, N) table of whether each fits inside
    white matter (inside the brain when `relaxed`), inside that lobe zone and hemisphere, and clear
    of the deep structures. Scalars give a (1, 1) table. With `first_only`, the costly rim test
    stops at the first fit (in row-major order) and later candidates read False."""
    cy = np.atleast_1d(np.asarray(cy, dtype=float))[None, :]
    cx = np.atleast_1d(np.asarray(cx, dtype=float))[None, :]
    r = np.atleast_1d(np.asarray(r, dtype=float))[:, None]
    h = anatomy["head"]
    # distances that do not depend on r: computed once per centre
    deep = np.full(cy.shape, np.inf)
    for es in _deep_structures(anatomy).values():
        for e in es:
            deep = np.minimum(deep, _rot_sd(cy, cx, e))
    ok = (np.abs(cx - h["cx"]) >= r + clearance) & (deep >= r + clearance)
    for dy, dx in ((0, 0), (-0.5, 0), (0.5, 0), (0, -0.5), (0, 0.5)):
        ok &= in_lobe(anatomy, lobe, hemisphere, cy + dy * r, cx + dx * r)
    cheap = ok.copy()
    ok[:] = False
    rpx = 0.5 * (h["rx"] + h["ry"])
    for k in range(cheap.shape[0]):  # row by row (largest first when the caller orders r so)
        n_all = np.flatnonzero(cheap[k])
        step = 8 if first_only else max(1, n_all.size)
        for start in range(0, n_all.size, step):
            # the rim of each surviving disk against the grey/white boundary (or the pial surface)
            n = n_all[start : start + step]
            u = (cx[0, n][:, None] + r[k, 0] * _COS[None, :] - h["cx"]) / h["rx"]
            w = (cy[0, n][:, None] + r[k, 0] * _SIN[None, :] - h["cy"]) / h["ry"]
            theta = np.arctan2(w, u)
            edge = white_matter_edge(anatomy, theta) if not relaxed else pial_edge(anatomy, theta)
            ok[k, n] = np.all(np.sqrt(u * u + w * w) <= edge - 0.5 * clearance / rpx, axis=1)
            if first_only and ok[k].any():
                return ok
    return ok


# --- rendering ------------------------------------------------------------------------------------


@dataclass
class BrainRender:
    image: np.ndarray  # float [0, 1] incl. bias and noise
    findings: list[np.ndarray] = field(default_factory=list)
    regions: dict[str, np.ndarray] = field(default_factory=dict)


def render_brain(labels: dict[str, Any], size: int | None = None, contrast: str | None = None) -> BrainRender:
    S = int(size or labels["size"])
    contrast = contrast or labels["contrast"]
    if contrast not in TISSUE:
        raise ValueError(f"unknown contrast {contrast!r}; use one of {CONTRASTS}")
    T = TISSUE[contrast]
    A = labels["anatomy"]
    h = A["head"]
    yy, xx = grid(S)
    rng = np.random.default_rng(int(labels["seed"]))
    n1 = rng.standard_normal((S, S), dtype=np.float32)
    n2 = n1[::-1, ::-1]  # the quadrature channel: the same draws, reversed (saves a second draw)
    bias_f = smooth_field(rng, S, 3)
    tex = smooth_field(rng, S, 12)

    u = (xx - h["cx"]) / h["rx"]
    w = (yy - h["cy"]) / h["ry"]
    rho = np.sqrt(u * u + w * w)
    theta = np.arctan2(w, u)
    rpx = 0.5 * (h["rx"] + h["ry"])  # radius units -> normalised distance

    def shell(edge):
        return coverage((rho - edge) * rpx, S)

    head = shell(1.0)
    skull = shell(1.0 - A["scalp"])
    diploe = shell(1.0 - A["scalp"] - 0.3 * A["skull"]) * (1.0 - shell(1.0 - A["scalp"] - 0.7 * A["skull"]))
    intra = shell(1.0 - A["scalp"] - A["skull"])
    fissure = coverage(np.abs(xx - h["cx"]) - 0.004, S, 0.8) * coverage(0.3 - np.abs(w), S, 3.0)
    brain = shell(pial_edge(A, theta)) * (1.0 - fissure)
    wm = shell(white_matter_edge(A, theta)) * (1.0 - fissure)

    st = _deep_structures(A)

    # every deep structure in one vectorised pass over their common bounding box
    names = [n for n in ("deep", "ventricle", "third", "choroid") for _ in st[n]]
    P = np.array([e for n in ("deep", "ventricle", "third", "choroid") for e in st[n]], dtype=np.float32)
    ext = P[:, 2:4].max(axis=1)
    b = box(S, float(P[:, 0].mean()), float(P[:, 1].mean()),
            float(np.abs(P[:, 0] - P[:, 0].mean()).max() + ext.max()), float(np.abs(P[:, 1] - P[:, 1].mean()).max() + ext.max()))
    soft = np.array([1.5 if n == "deep" else 1.0 for n in names], dtype=np.float32)[:, None, None]
    cov = coverage(rotated_ellipse_sd(yy[b][None], xx[b][None], *(P[:, i, None, None] for i in range(5))), S, soft)
    parts = {}
    for n in ("deep", "ventricle", "third", "choroid"):
        parts[n] = zeros(S)
        parts[n][b] = cov[[i for i, m in enumerate(names) if m == n]].max(axis=0)
    deep = parts["deep"]
    vent = np.maximum(parts["ventricle"], parts["third"])
    choroid = parts["choroid"]
    sinus = disk_cov(yy, xx, h["cy"] + h["ry"] * (1.0 - A["scalp"] - A["skull"]) - 0.012, h["cx"], 0.012, S)

    img = zeros(S)
    img = lerp(img, T["scalp"], head)
    img = lerp(img, T["bone"], skull)
    img = lerp(img, T["diploe"], diploe)
    img = lerp(img, T["csf"], intra)
    img = lerp(img, T["gm"] + 0.025 * tex, brain)
    img = lerp(img, T["wm"] + 0.015 * tex, wm)
    img = lerp(img, T["deep"], deep)
    img = lerp(img, T["csf"], vent)
    img = lerp(img, T["choroid"], choroid * vent)
    img = lerp(img, T["sinus"], sinus)

    fmasks = []
    for f in labels["findings"]:
        if f["type"] != "lesion":
            raise ValueError(f"unknown brain finding {f['type']!r}")
        cy, cx = f["center"]
        r = f["size_mm"] / 2 / A["fov_mm"]
        c = disk_cov(yy, xx, cy, cx, r, S)
        if not f["enhancing"]:
            img = lerp(img, T["lesion"], c)
        elif f["size_mm"] < RING_MM:
            img = lerp(img, T["enhance"], c)
        else:  # enhancing rim, necrotic core: one composite so partial pixels keep their coverage
            core = disk_cov(yy, xx, cy, cx, max(r - 0.3 * r, r - 2.5 / S), S)
            img = img * (1.0 - c) + T["lesion"] * core + T["enhance"] * (c - core)
        fmasks.append(c > 0)

    img = img * (1.0 + A["bias"] * bias_f)
    sigma = A["noise"]
    img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
    regions = {"brain": brain > 0.5, "white_matter": wm > 0.5, "ventricles": vent > 0.5, "head": head > 0.5}
    return BrainRender(image=img, findings=fmasks, regions=regions)

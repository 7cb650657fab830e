"""Chest radiograph phantoms: a PA projection of body, lungs, mediastinum, heart, ribs and diaphragm.

Radiological convention: the patient's **right is on the image left** (x < 0.5), as on any PA film.
All geometry is in normalised image coordinates (x, y in [0, 1], y downwards) and stored in the
labels, so `render_chest(labels)` is a pure function of the labels (noise and textures come from
the integer `seed` in the labels).

Lobes are projected onto the frontal film the way a reader localises them: each lung field, from
apex (top of its ellipse) to base (the lateral costophrenic level), is cut into horizontal zones
(`LOBES`). `lobe_of_point` is that geometry; the sampler places findings with it and the tests use
the same function to check, from the pixels alone, where a difference blob lies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._raster import (
    Draws,
    band_cov,
    box,
    clip,
    coverage,
    disk_cov,
    ellipse_cov,
    ellipse_q,
    ellipse_sd,
    grid,
    rotated_ellipse_cov,
    rotated_ellipse_sd,
    smooth_field,
    zeros,
)

# lobe -> (side, top fraction, bottom fraction) of that lung field's height (apex 0 -> base 1).
LOBES: dict[str, tuple[str, float, float]] = {
    "RUL": ("right", 0.0, 1 / 3),
    "RML": ("right", 1 / 3, 2 / 3),
    "RLL": ("right", 2 / 3, 1.0),
    "LUL": ("left", 0.0, 2 / 3),  # with the lingula
    "LLL": ("left", 2 / 3, 1.0),
}
LOBE_NAMES = {
    "RUL": "right upper lobe",
    "RML": "right middle lobe",
    "RLL": "right lower lobe",
    "LUL": "left upper lobe",
    "LLL": "left lower lobe",
}
SIDES = ("right", "left")
# +1: the lateral direction of that lung in image x (patient right = image left).
LATERAL = {"right": -1.0, "left": 1.0}

FINDING_TYPES = ("nodule", "consolidation", "effusion", "pneumothorax", "cardiomegaly")
EFFUSION_GRADES = {"small": (0.10, 0.20), "moderate": (0.20, 0.36), "large": (0.36, 0.55)}  # height fraction
PNEUMOTHORAX_SIZES = {"small": (8.0, 30.0), "large": (30.0, 55.0)}  # apical rim, mm (ACCP: >= 3 cm large)
NODULE_MM = (6.0, 30.0)  # a solid opacity > 30 mm is a mass
CARDIOMEGALY_CTR = (0.55, 0.68)
MAX_CTR = 0.72


def sample_anatomy(rng: np.random.Generator) -> dict[str, Any]:
    """One patient's chest: every shape parameter the renderer uses (normalised units)."""
    u = Draws(rng, 32)
    base_left = u(0.72, 0.77)
    lungs = {}
    for side in SIDES:
        s = LATERAL[side]
        lungs[side] = {
            "cx": round(0.5 + s * u(0.19, 0.215), 4),
            "cy": u(0.47, 0.51),
            "rx": u(0.135, 0.16) if side == "right" else u(0.125, 0.15),
            "ry": u(0.32, 0.35),
            "base": round(base_left - (u(0.01, 0.03) if side == "right" else 0.0), 4),
            "dome": u(0.05, 0.08),
        }
    return {
        "fov_mm": u(340.0, 420.0, 1),
        "body": {"rx": u(0.41, 0.46), "cy": u(0.6, 0.64)},
        "lungs": lungs,
        "mediastinum": {"top": u(0.035, 0.045), "rx": u(0.055, 0.068), "shift": u(-0.008, 0.008)},
        "heart": {"ctr": u(0.40, 0.48), "shift": u(0.25, 0.4), "aspect": u(0.66, 0.78), "tilt": u(0.35, 0.6)},
        "ribs": {"spacing": u(0.058, 0.066), "curve": u(1.3, 1.8), "thickness": u(0.012, 0.016)},
        "exposure": {"gain": u(0.9, 1.08), "offset": u(-0.03, 0.03)},
        "noise": u(0.008, 0.02),
        "markings": u(0.6, 1.0),
    }


# --- geometry -------------------------------------------------------------------------------------


def lung_field(anatomy: dict[str, Any], side: str) -> tuple[float, float]:
    """(apex_y, base_y) of one lung field, normalised."""
    lung = anatomy["lungs"][side]
    return lung["cy"] - lung["ry"], lung["base"]


def lobe_rows(anatomy: dict[str, Any], lobe: str) -> tuple[float, float]:
    side, f0, f1 = LOBES[lobe]
    apex, base = lung_field(anatomy, side)
    return apex + f0 * (base - apex), apex + f1 * (base - apex)


def side_of_x(x: float) -> str:
    """Patient side of an image column (normalised): the patient's right is the image left."""
    return "right" if x < 0.5 else "left"


def in_lobe(anatomy: dict[str, Any], lobe: str, y, x):
    """Whether normalised point(s) lie in that lobe's zone (vectorised)."""
    side, f0, f1 = LOBES[lobe]
    apex, base = lung_field(anatomy, side)
    f = clip((y - apex) / (base - apex), 0.0, 0.999999)
    on_side = (x < 0.5) if side == "right" else (x >= 0.5)
    return on_side & (f >= f0) & (f < f1)


def lobe_of_point(anatomy: dict[str, Any], y: float, x: float) -> str:
    """The lobe zone of a normalised point (the geometry findings are placed and checked with)."""
    for lobe in LOBES:
        if bool(in_lobe(anatomy, lobe, y, x)):
            return lobe
    raise AssertionError("unreachable")


def thoracic_width(anatomy: dict[str, Any]) -> float:
    """Inner thoracic width (normalised): lateral edge of the left lung to that of the right."""
    r, l = anatomy["lungs"]["right"], anatomy["lungs"]["left"]
    return (l["cx"] + l["rx"]) - (r["cx"] - r["rx"])


def heart_base(anatomy: dict[str, Any]) -> float:
    l = anatomy["lungs"]["left"]
    return l["base"] - 0.6 * l["dome"]


def heart_ellipse(anatomy: dict[str, Any], ctr: float) -> tuple[float, float, float, float, float]:
    """(cy, cx, minor, major, tilt) of the cardiac silhouette for a cardiothoracic ratio `ctr`.

    A tilted ellipse (long axis down towards the apex on the image right) whose horizontal extent
    is exactly `ctr` times the thoracic width.
    """
    h = anatomy["heart"]
    half_w = ctr * thoracic_width(anatomy) / 2.0
    c, s, k = np.cos(h["tilt"]), np.sin(h["tilt"]), h["aspect"]
    major = half_w / float(np.sqrt(c * c + k * k * s * s))
    half_h = major * float(np.sqrt(s * s + k * k * c * c))
    return heart_base(anatomy) - 0.8 * half_h, 0.5 + h["shift"] * half_w, k * major, major, h["tilt"]


def heart_ctr(labels: dict[str, Any]) -> float:
    for f in labels["findings"]:
        if f["type"] == "cardiomegaly":
            return float(f["ctr"])
    return float(labels["anatomy"]["heart"]["ctr"])


def dome_y(lung: dict[str, Any], x):
    """The hemidiaphragm under one lung: highest at the lung's centre, `base` at its lateral edge."""
    t = (x - lung["cx"]) / lung["rx"]
    return lung["base"] - lung["dome"] * (1.0 - t * t)


def mediastinum_rx(anatomy: dict[str, Any], y):
    m = anatomy["mediastinum"]
    top = 0.25
    return m["top"] + (m["rx"] - m["top"]) * clip(y / top, 0.0, 1.0)


def lung_sd(anatomy: dict[str, Any], side: str, y, x):
    """Signed distance (normalised, < 0 inside) to the visible lung field of one side (approximate)."""
    lung = anatomy["lungs"][side]
    sd = ellipse_sd(y, x, lung["cy"], lung["cx"], lung["ry"], lung["rx"])
    sd = np.maximum(sd, y - dome_y(lung, x))
    m = anatomy["mediastinum"]
    medial = (0.5 + m["shift"] + LATERAL[side] * mediastinum_rx(anatomy, y) - x) * LATERAL[side]
    return np.maximum(sd, medial)


def heart_sd(anatomy: dict[str, Any], ctr: float, y, x):
    return rotated_ellipse_sd(y, x, *heart_ellipse(anatomy, ctr))


def collapsed_lung(lung: dict[str, Any], side: str, rim_mm: float, fov_mm: float) -> tuple[float, float, float, float]:
    """(cy, cx, ry, rx) of a lung collapsed towards its hilum so the apical rim is `rim_mm`."""
    ay = lung["cy"] + 0.35 * lung["ry"]
    ax = lung["cx"] - LATERAL[side] * 0.5 * lung["rx"]
    apex = lung["cy"] - lung["ry"]
    f = 1.0 - (rim_mm / fov_mm) / (ay - apex)
    return ay + f * (lung["cy"] - ay), ax + f * (lung["cx"] - ax), f * lung["ry"], f * lung["rx"]


def effusion_level(lung: dict[str, Any], anatomy: dict[str, Any], side: str, height_fraction: float) -> float:
    apex, base = lung_field(anatomy, side)
    return base - height_fraction * (base - apex)


# --- rendering ------------------------------------------------------------------------------------


@dataclass
class ChestRender:
    image: np.ndarray  # float, [0, 1], noise included, before quantisation
    findings: list[np.ndarray] = field(default_factory=list)  # coverage > 0 per finding, labels order
    regions: dict[str, np.ndarray] = field(default_factory=dict)


def render_chest(labels: dict[str, Any], size: int | None = None) -> ChestRender:
    """Render a chest phantom from its labels (pure function of the labels)."""
    S = int(size or labels["size"])
    A = labels["anatomy"]
    yy, xx = grid(S)
    rng = np.random.default_rng(int(labels["seed"]))
    # Random fields, always drawn in the same order so the stream never depends on the findings.
    noise = rng.standard_normal((S, S), dtype=np.float32)
    body_tex = smooth_field(rng, S, 6)
    vessel_f = smooth_field(rng, S, 11)
    cons_tex = smooth_field(rng, S, 9)

    # body: neck and shoulders sloping out to the chest wall, abdomen below
    body = A["body"]
    t = clip((yy - 0.02) / 0.16, 0.0, 1.0)
    half = 0.1 + (body["rx"] - 0.1) * t * t * (3.0 - 2.0 * t)
    body_cov = coverage(np.abs(xx - 0.5) - half, S, 1.5)
    thick = np.sqrt(clip(1.0 - ((xx - 0.5) / half) ** 2, 0.0, 1.0))

    # diaphragm: below the dome of each side
    rl, ll = A["lungs"]["right"], A["lungs"]["left"]
    dome = np.where(xx < 0.5, dome_y(rl, xx), dome_y(ll, xx))
    abdomen = coverage(dome - yy, S, 1.5)

    # mediastinum (from the thoracic inlet down), aortic knob, heart
    med = A["mediastinum"]
    central, heart = central_cov(A, heart_ctr(labels), yy, xx, S)

    # lungs
    lung_cov = zeros(S)
    air_depth = zeros(S)
    lung_side = {}
    for side, lung in (("right", rl), ("left", ll)):
        c = lung_side[side] = lung_cov_side(A, side, yy, xx, S)
        q = ellipse_q(yy, xx, lung["cy"], lung["cx"], lung["ry"], lung["rx"])
        lung_cov += c
        air_depth += c * (0.55 + 0.45 * np.sqrt(clip(1.0 - q, 0.0, 1.0)))
    visible = lung_cov * (1.0 - central)
    air = air_depth * (1.0 - central)

    # vascular markings: ridges of a smooth field, strongest near the hila
    ridge = clip(1.0 - np.abs(vessel_f) / 0.3, 0.0, 1.0) ** 2
    hy = 0.5 * (rl["cy"] + ll["cy"]) - 0.02
    hx = np.abs(xx - 0.5) - (med["rx"] + 0.02)
    hil2 = (yy - hy) ** 2 + hx * hx  # squared distance to the nearer hilum
    marks = A["markings"] * 0.075 * ridge * clip(1.25 - hil2 * 8.0, 0.25, 1.0)

    # bones: posterior and anterior ribs (broadcast over ribs), clavicles, spine
    rib = A["ribs"]
    apex = min(rl["cy"] - rl["ry"], ll["cy"] - ll["ry"])
    dx = np.abs(xx[0] - 0.5)  # (S,)
    lateral_edge = max(0.5 - (rl["cx"] - rl["rx"]), (ll["cx"] + ll["rx"]) - 0.5) + 0.03
    th = rib["thickness"]
    sp = rib["spacing"]
    post0 = apex - 0.015 - 0.25 * dx + rib["curve"] * dx * dx  # (S,): rib 0's centre line
    rel = yy - post0[None, :]
    kk = clip(np.round(rel / sp), 0.0, 9.0)  # nearest of 10 posterior ribs
    xr = band_cov(dx, 0.035, lateral_edge, S)
    ribs = clip((th - np.abs(rel - kk * sp)) * S + 0.5, 0.0, 1.0) * xr[None, :]
    ant0 = apex + 0.03 + 0.33 * (lateral_edge - dx)
    rel = yy - ant0[None, :]
    asp = 1.25 * sp
    kk = clip(np.round(rel / asp), 0.0, 5.0)  # nearest of 6 anterior ribs
    ant = clip((1.2 * th - np.abs(rel - kk * asp)) * S + 0.5, 0.0, 1.0) * band_cov(dx, 0.12, lateral_edge, S)[None, :]
    clav_c = 0.2 - (dx - 0.05) * 0.3
    clav = clip((0.011 - np.abs(yy - clav_c[None, :])) * S + 0.5, 0, 1) * band_cov(dx, 0.05, 0.34, S)[None, :]
    vert = (0.75 + 0.25 * np.cos(2 * np.pi * yy[:, :1] / rib["spacing"])).astype(yy.dtype)  # (S, 1)
    spine = coverage(np.abs(xx - 0.5) - 0.03, S) * vert
    bubble = ellipse_cov(yy, xx, ll["base"] - ll["dome"] + 0.055, ll["cx"] + 0.02, 0.022, 0.04, S, 1.5)
    trachea = coverage(np.abs(xx - 0.5 - med["shift"]) - 0.013, S) * coverage(yy - 0.31, S, 2.0)

    # findings
    dens = zeros(S)
    air_fill = zeros(S)  # fraction of the air replaced (effusion)
    ptx = zeros(S)  # lung tissue absent (pneumothorax)
    fmasks = []
    for f in labels["findings"]:
        t = f["type"]
        if t == "nodule":
            cy, cx = f["center"]
            c = disk_cov(yy, xx, cy, cx, f["size_mm"] / 2.0 / A["fov_mm"], S)
            dens += f["density"] * c
            region = c > 0
        elif t == "consolidation":
            # airspace opacity where the lung is seen (not through the heart or mediastinum)
            c = consolidation_cov(A, f, yy, xx, S, lung_side[f["side"]]) * (1.0 - central)
            dens += f["density"] * c * (0.95 + 0.05 * clip(cons_tex, -1.0, 1.0))
            region = c > 0
        elif t == "effusion":
            c = effusion_cov(A, f, yy, xx, S, lung_side[f["side"]])
            air_fill = np.maximum(air_fill, 0.95 * c)
            dens += 0.04 * c
            region = c > 0
        elif t == "pneumothorax":
            side = f["side"]
            lung = A["lungs"][side]
            c = lung_side[side]
            cy, cx, ry, rx = collapsed_lung(lung, side, f["rim_mm"], A["fov_mm"])
            sd = ellipse_sd(yy, xx, cy, cx, ry, rx)
            rim = c * (1.0 - coverage(sd, S))
            line = c * clip(1.0 - np.abs(sd) * S / 0.8, 0.0, 1.0)
            ptx = np.maximum(ptx, rim)
            dens += 0.07 * line * (1.0 - central)
            region = (rim > 0) | (line > 0)
        elif t == "cardiomegaly":
            normal = rotated_ellipse_cov(yy, xx, *heart_ellipse(A, A["heart"]["ctr"]), S, 1.2)
            region = heart != normal
        else:
            raise ValueError(f"unknown chest finding {t!r}")
        fmasks.append(region)

    air = air * (1.0 - air_fill)
    air = air + ptx * (visible - air)  # a pneumothorax rim is all air, without lung tissue
    marks = marks * visible * (1.0 - ptx) * (1.0 - air_fill)

    D = (
        0.03
        + body_cov * (0.43 + 0.19 * thick + 0.025 * body_tex)
        + np.maximum(0.19 * central, 0.12 * abdomen) * body_cov
        - 0.46 * air
        + marks
        + (0.055 * ribs + 0.03 * ant) * body_cov * (1.0 - 0.6 * central)
        + 0.09 * clav
        + 0.035 * spine * body_cov
        - 0.09 * bubble * abdomen
        - 0.1 * trachea * body_cov
        + dens
    )
    ex = A["exposure"]
    img = ex["gain"] * D + ex["offset"]
    img = img + A["noise"] * (0.6 + 0.4 * np.sqrt(clip(img, 0.0, 1.0))) * noise
    regions = {"lungs": lung_cov > 0.5, "heart": heart > 0.5, "body": body_cov > 0.5}
    return ChestRender(image=img, findings=fmasks, regions=regions)


def central_cov(anatomy: dict[str, Any], ctr: float, yy, xx, S: int) -> tuple[np.ndarray, np.ndarray]:
    """(central shadow, heart): mediastinum, aortic knob and cardiac silhouette, which hide the lung."""
    med = anatomy["mediastinum"]
    med_cov = coverage(np.abs(xx - 0.5 - med["shift"]) - mediastinum_rx(anatomy, yy), S, 1.5) * coverage(0.13 - yy, S, 4.0)
    knob = ellipse_cov(yy, xx, 0.3, 0.5 + med["rx"] + 0.005, 0.028, 0.03, S, 1.5)
    heart = rotated_ellipse_cov(yy, xx, *heart_ellipse(anatomy, ctr), S, 1.2)
    return np.maximum(np.maximum(med_cov, knob), heart), heart


def lung_cov_side(anatomy: dict[str, Any], side: str, yy, xx, S: int) -> np.ndarray:
    """Coverage of one lung field: its ellipse above the hemidiaphragm, lateral to the midline."""
    lung = anatomy["lungs"][side]
    out = zeros(S)
    b = box(S, lung["cy"], lung["cx"], lung["ry"], lung["rx"])
    if b is not None:
        y, x = yy[b], xx[b]
        out[b] = (
            coverage(ellipse_sd(y, x, lung["cy"], lung["cx"], lung["ry"], lung["rx"]), S)
            * coverage(y - dome_y(lung, x), S)
            * coverage(-LATERAL[side] * (x - 0.5) + 0.005, S)
        )
    return out


def consolidation_cov(anatomy: dict[str, Any], f: dict[str, Any], yy, xx, S: int, lung=None) -> np.ndarray:
    """An ellipse of airspace opacity cut by the lung edge and the lobe's fissure lines."""
    cy, cx = f["center"]
    ry, rx = f["radii"]
    y0, y1 = lobe_rows(anatomy, f["lobe"])
    if lung is None:
        lung = lung_cov_side(anatomy, f["side"], yy, xx, S)
    return ellipse_cov(yy, xx, cy, cx, ry, rx, S) * lung * band_cov(yy, y0, y1, S)


def effusion_cov(anatomy: dict[str, Any], f: dict[str, Any], yy, xx, S: int, field_cov=None) -> np.ndarray:
    """Dependent fluid at the base of one lung field, with a meniscus rising laterally."""
    side = f["side"]
    lung = anatomy["lungs"][side]
    apex, base = lung_field(anatomy, side)
    level = effusion_level(lung, anatomy, side, f["height_fraction"])
    t = clip(((xx - lung["cx"]) * LATERAL[side] / lung["rx"] + 1.0) / 2.0, 0.0, 1.0)
    meniscus = level - 0.3 * f["height_fraction"] * (base - apex) * t * t
    if field_cov is None:
        field_cov = lung_cov_side(anatomy, side, yy, xx, S)
    return field_cov * coverage(meniscus - yy, S)

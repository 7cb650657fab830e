"""Phantom source: determinism, task mix, counterfactual locality, labels that agree with the pixels
(checked from the pixels alone), reports that name exactly the labelled findings, patient splits."""

from __future__ import annotations

import io
import json
import re
from collections import Counter, defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage

from unimedvl.config import IngestConfig, PhantomConfig, SourceSpec
from unimedvl.data.ingest import ingest
from unimedvl.data.phantoms import (
    brain,
    chest,
    render,
    render_from_labels,
    without_finding,
)
from unimedvl.data.phantoms.findings import (
    progress_finding,
    sample_brain_labels,
    sample_chest_labels,
)
from unimedvl.data.phantoms.tasks import SUB_TASKS, allocate
from unimedvl.data.schema import SUB_TO_MAIN
from unimedvl.data.shards import iter_records, read_manifest

ndimage = pytest.importorskip("scipy.ndimage")

COUNT = 180


def _cfg(**phantom) -> IngestConfig:
    return IngestConfig(sources=(SourceSpec(name="phantom"),), phantom=PhantomConfig(**phantom))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    cfg = _cfg(count=COUNT, seed=3)
    result = ingest([SourceSpec(name="phantom")], out, cfg, key=b"k")
    return out, result.manifest, list(iter_records(out)), cfg


def decode(img) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(img.png)))


# --- geometry helpers: the lobe / side of a blob, from its pixels ---------------------------------


def largest_blob(diff: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(diff != 0)
    assert n >= 1, "the pair does not differ at all"
    sizes = ndimage.sum(np.ones_like(diff), lab, range(1, n + 1))
    return lab == int(np.argmax(sizes)) + 1


def blob_centre(diff: np.ndarray, blob: np.ndarray) -> tuple[float, float]:
    """Normalised (y, x) of the |difference|-weighted centroid of the blob."""
    cy, cx = ndimage.center_of_mass(np.abs(diff) * blob)
    return (cy + 0.5) / diff.shape[0], (cx + 0.5) / diff.shape[1]


def blob_area_px(diff: np.ndarray, blob: np.ndarray) -> float:
    """Area in pixels of a uniform-contrast blob: its summed |difference| over its peak (partial
    pixels at the edge count by how much they changed)."""
    a = np.abs(diff[blob]).astype(float)
    return float(a.sum() / a.max())


def check_pair(labels: dict, index: int, with_img: np.ndarray, without_img: np.ndarray) -> None:
    """Everything a counterfactual pair must satisfy, judged from its two images."""
    f = labels["findings"][index]
    diff = with_img.astype(int) - without_img.astype(int)
    # 1. nothing changes outside the finding's own region (dilated by one pixel)
    region = ndimage.binary_dilation(render(labels).findings[index], iterations=1)
    assert not diff[~region].any(), f"{f['type']}: {np.count_nonzero(diff[~region])} pixels changed outside it"
    # 2. from the pixels alone: where the difference lies, and how large it is
    blob = largest_blob(diff)
    y, x = blob_centre(diff, blob)
    S = diff.shape[0]
    spacing = labels["anatomy"]["fov_mm"] / S
    A = labels["anatomy"]
    t = f["type"]
    if t in ("nodule", "consolidation"):
        assert chest.lobe_of_point(A, y, x) == f["lobe"], (t, f["lobe"], y, x)
    elif t in ("effusion", "pneumothorax"):
        assert chest.side_of_x(x) == f["side"], (t, f["side"], x)
        apex, base = chest.lung_field(A, f["side"])
        if t == "effusion":  # fluid collects at the base, a pneumothorax at the apex
            assert y > apex + 0.5 * (base - apex)
        else:
            rows = np.flatnonzero(blob.any(axis=1))
            assert (rows.min() + 0.5) / S < apex + 0.25 * (base - apex)
    elif t == "cardiomegaly":
        cols = np.flatnonzero((diff != 0).any(axis=0))
        ctr = (cols.max() - cols.min() + 1) / S / chest.thoracic_width(A)
        assert abs(ctr - f["ctr"]) < 0.06, (ctr, f["ctr"])
    elif t == "lesion":
        assert brain.lobe_of_point(A, y, x) == (f["lobe"], f["hemisphere"]), (f["lobe"], f["hemisphere"], y, x)
    if t in ("nodule", "lesion"):
        expected = np.pi * (f["size_mm"] / 2 / spacing) ** 2
        if t == "lesion" and labels["contrast"] == "T1c" and f["enhancing"] and f["size_mm"] >= brain.RING_MM:
            # a ring-enhancing lesion is not of uniform contrast: judge its outer diameter instead
            rows, cols = np.flatnonzero(blob.any(axis=1)), np.flatnonzero(blob.any(axis=0))
            diameter = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
            assert abs(diameter - f["size_mm"] / spacing) <= 2.0  # a partial pixel at either edge
        else:
            assert blob_area_px(diff, blob) == pytest.approx(expected, rel=0.2), (t, f["size_mm"])
    elif t == "consolidation":
        assert blob_area_px(diff, blob) == pytest.approx(f["area_mm2"] / spacing**2, rel=0.2)


# --- config and planning --------------------------------------------------------------------------


def test_defaults_cover_every_task_type():
    assert set(SUB_TASKS) == set(SUB_TO_MAIN)
    mix = PhantomConfig().task_mix
    assert set(mix) == set(SUB_TASKS) and all(v > 0 for v in mix.values())


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown task types"):
        PhantomConfig(task_mix={"vqa_closed": 1.0, "made_up": 1.0})
    with pytest.raises(ValueError, match="not divisible"):
        PhantomConfig(image_size=66, super_resolution_factor=4)
    with pytest.raises(ValueError):
        PhantomConfig(image_size=16)


def test_allocation_is_exact_and_proportional():
    mix = PhantomConfig().task_mix
    assert allocate(100, mix) == {k: round(100 * v) for k, v in mix.items()}
    counts = allocate(101, mix)  # the one left over goes to the largest remainder
    assert sum(counts.values()) == 101 and set(counts) == set(SUB_TASKS) and counts["vqa_closed"] == 17
    assert allocate(7, {"t2i": 1.0, "edit": 1.0, "caption": 0.0}) == {"t2i": 4, "edit": 3}


# --- the ingested data set ------------------------------------------------------------------------


def test_every_task_type_present_with_the_requested_mix(dataset):
    _, manifest, records, cfg = dataset
    assert manifest["by_source"]["phantom"] == {"seen": COUNT, "accepted": COUNT, "quarantined": 0}
    assert manifest["by_task"] == allocate(COUNT, cfg.phantom.task_mix)
    assert set(manifest["by_task"]) == set(SUB_TASKS)
    assert {r.dataset for r in records} == {"phantom"}
    assert {r.license for r in records} == {"CC0-1.0"}  # the SPDX id of "CC0 (procedurally generated)"
    for r in records:
        assert r.problems() == [] and r.phi_removed == []
        fam = r.labels["family"]
        assert r.modality == ({"chest": "xray", "brain": "mri"}[fam] if r.input_img or r.output_img else "none")
        assert r.labels["task"]["type"] == r.sub_task_type
        assert len(r.labels["input"]) == len(r.input_img) and len(r.labels["output"]) == len(r.output_img)


def test_custom_mix_is_honoured(tmp_path):
    cfg = _cfg(count=24, seed=1, task_mix={"counterfactual": 1.0, "cross_modal": 1.0, "caption": 1.0})
    m = ingest([SourceSpec(name="phantom")], tmp_path, cfg, key=b"k").manifest
    assert m["by_task"] == {"caption": 8, "counterfactual": 8, "cross_modal": 8}


def test_same_seed_gives_byte_identical_shards(tmp_path):
    def shards(name, seed):
        out = tmp_path / name
        ingest([SourceSpec(name="phantom")], out, _cfg(count=40, seed=seed), key=b"k")
        return [s["sha256"] for s in read_manifest(out)["shards"]]

    first = shards("a", 7)
    assert first and shards("b", 7) == first
    assert shards("c", 8) != first


def test_render_from_labels_reproduces_every_stored_image(dataset):
    _, _, records, _ = dataset
    n = 0
    for r in records:
        for imgs, labs in ((r.input_img, r.labels["input"]), (r.output_img, r.labels["output"])):
            for img, lab in zip(imgs, labs, strict=True):
                lab = json.loads(json.dumps(lab))  # exactly what evaluation reads back
                assert np.array_equal(decode(img), render_from_labels(lab)), r.sub_task_type
                assert "spacing_mm" in lab and lab["spacing_mm"] > 0
                n += 1
    assert n > COUNT


def test_splits_are_patient_disjoint(dataset):
    _, _, records, _ = dataset
    splits = defaultdict(set)
    for r in records:
        splits[r.patient_key].add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    by_split = defaultdict(set)
    for key, s in splits.items():
        by_split[next(iter(s))].add(key)
    assert {"train", "test"} <= set(by_split)
    assert not by_split["train"] & by_split["test"] and not by_split["train"] & by_split["val"]
    assert len(splits) > COUNT / 5  # patients hold 1-4 records
    family = {r.patient_key: r.labels["family"] for r in records}
    assert sum(f == "chest" for f in family.values()) / len(family) == pytest.approx(0.6, abs=0.02)


DERIVED = {"area_mm2", "fraction_of_lobe", "extent"}  # a consolidation's visible area follows the heart


def core(findings: list[dict]) -> list[dict]:
    return [{k: v for k, v in f.items() if k not in DERIVED} for f in findings]


def test_counterfactual_records_differ_only_at_the_finding(dataset):
    _, _, records, _ = dataset
    cfs = [r for r in records if r.sub_task_type == "counterfactual"]
    assert cfs
    for r in cfs:
        labels = r.labels["input"][0]
        i = r.labels["task"]["removed_index"]
        assert core(r.labels["output"][0]["findings"]) == core(labels["findings"][:i] + labels["findings"][i + 1 :])
        check_pair(labels, i, decode(r.input_img[0]), decode(r.output_img[0]))
        assert r.labels["task"]["removed"]["type"].replace("effusion", "pleural effusion") in r.message[0].value


@pytest.mark.parametrize(("size", "patients"), [(64, 30), (128, 10)])
def test_every_finding_type_agrees_with_its_pixels(size, patients):
    """Sweep many patients: for every finding, render with and without it and check the pair."""
    cfg = SimpleNamespace(image_size=size, min_visible_px=3.0)
    seen = Counter()
    for i in range(patients):
        rng = np.random.default_rng([size, i])
        cases = [sample_chest_labels(rng, cfg, need_finding=True)]
        cases.append(sample_brain_labels(rng, cfg, need_finding=True, contrast=brain.CONTRASTS[i % 4]))
        for labels in cases:
            for j, f in enumerate(labels["findings"]):
                check_pair(labels, j, render_from_labels(labels), render_from_labels(without_finding(labels, j)))
                seen[f["type"]] += 1
    assert set(seen) == set(chest.FINDING_TYPES) | {"lesion"}, seen


def test_findings_respect_the_visible_floor():
    for size in (32, 64, 128):
        cfg = SimpleNamespace(image_size=size, min_visible_px=3.0)
        for i in range(25):
            rng = np.random.default_rng([size, i, 9])
            for labels in (sample_chest_labels(rng, cfg, need_finding=True), sample_brain_labels(rng, cfg, need_finding=True)):
                spacing = labels["anatomy"]["fov_mm"] / size
                assert labels["spacing_mm"] == pytest.approx(spacing, abs=1e-4)
                assert labels["min_visible_mm"] == pytest.approx(3.0 * spacing, abs=0.01)
                for f in labels["findings"]:
                    if f["type"] in ("nodule", "lesion"):
                        assert f["size_mm"] / spacing >= 3.0 - 1e-6
                        assert f["visible_floor_applied"] == (3.0 * spacing > {"nodule": 6.0, "lesion": 5.0}[f["type"]])
                    if f["type"] == "pneumothorax":
                        assert f["rim_mm"] / spacing >= 3.0 - 1e-6


def test_enhancement_shows_only_on_t1c():
    cfg = SimpleNamespace(image_size=64, min_visible_px=3.0)
    checked = Counter()
    for i in range(30):
        labels = sample_brain_labels(np.random.default_rng([5, i]), cfg, need_finding=True)
        t1 = render_from_labels({**labels, "contrast": "T1"}).astype(int)
        t1c = render_from_labels({**labels, "contrast": "T1c"}).astype(int)
        masks = render({**labels, "contrast": "T1"}).findings
        for f, m in zip(labels["findings"], masks, strict=True):
            if f["enhancing"]:  # brighter after contrast (the whole disk, or its rim from 18 mm)
                assert (t1c - t1)[m].max() > 40
            else:  # T1c and T1 are the same image there
                assert not (t1c - t1)[m].any()
            checked[f["enhancing"]] += 1
    assert checked[True] and checked[False]


def test_progression_changes_only_the_finding_and_in_the_named_direction(dataset):
    _, _, records, _ = dataset
    edits = [r for r in records if r.sub_task_type == "edit"]
    assert edits
    for r in edits:
        before, after = r.labels["input"][0], r.labels["output"][0]
        i, direction = r.labels["task"]["finding_index"], r.labels["task"]["direction"]
        region = render(before).findings[i] | render(after).findings[i]
        diff = decode(r.input_img[0]).astype(int) - decode(r.output_img[0]).astype(int)
        assert diff.any() and not diff[~ndimage.binary_dilation(region)].any()
        f0, f1 = before["findings"][i], after["findings"][i]
        key = {"nodule": "size_mm", "lesion": "size_mm", "effusion": "height_fraction", "pneumothorax": "rim_mm",
               "cardiomegaly": "ctr", "consolidation": "area_mm2"}[f0["type"]]
        assert (f1[key] > f0[key]) == (direction == "up"), (f0, f1)
        assert progress_finding(before, i, direction) == after


def test_interleaved_pairs_have_the_right_shape(dataset):
    _, _, records, cfg = dataset
    by = defaultdict(list)
    for r in records:
        by[r.sub_task_type].append(r)
    f = cfg.phantom.super_resolution_factor
    for r in by["super_resolution"]:
        low, high = decode(r.input_img[0]), decode(r.output_img[0])
        assert low.shape[0] * f == high.shape[0] == cfg.phantom.image_size
        assert np.abs(low.astype(float) - high.reshape(low.shape[0], f, -1, f).mean(axis=(1, 3))).max() <= 1.0
    for r in by["cross_modal"]:
        src, dst = r.labels["input"][0], r.labels["output"][0]
        assert src["contrast"] == "T1" and dst["contrast"] in ("T2", "FLAIR")
        assert {k: v for k, v in src.items() if k != "contrast"} == {k: v for k, v in dst.items() if k != "contrast"}
    for r in by["reconstruction"]:
        assert r.labels["input"][0]["degradation"]["kind"] in ("kspace_undersample", "low_dose")
        assert decode(r.input_img[0]).shape == decode(r.output_img[0]).shape
        assert not np.array_equal(decode(r.input_img[0]), decode(r.output_img[0]))
    for r in by["t2i"]:
        assert not r.input_img and len(r.output_img) == 1
    for r in by["text_only"] + by["report_structure"]:
        assert not r.input_img and not r.output_img and "subject" in r.labels


# --- text -----------------------------------------------------------------------------------------

TERMS = {
    "nodule": r"\bnodul",
    "consolidation": r"\bconsolidat",
    "effusion": r"\beffusion",
    "pneumothorax": r"\bpneumothorax",
    "cardiomegaly": r"\bcardiomegaly|\bheart\b|\bcardiac\b",
    "lesion": r"\blesion",
}
NEGATION = re.compile(r"\b(no|not|without|normal|sharp|clear|unremarkable)\b", re.IGNORECASE)


def mentions(text: str) -> tuple[set[str], set[str]]:
    """(findings stated as present, findings stated as absent), sentence by sentence."""
    pos, neg = set(), set()
    for sentence in re.split(r"(?<=\.)\s+|\n+", text):
        for t, pat in TERMS.items():
            if re.search(pat, sentence, re.IGNORECASE):
                (neg if NEGATION.search(sentence) else pos).add(t)
    return pos, neg


def test_reports_mention_exactly_the_labelled_findings(dataset):
    _, _, records, _ = dataset
    reports = [r for r in records if r.sub_task_type == "report"]
    assert len(reports) >= 10
    for r in reports:
        labels = r.labels["input"][0]
        text = r.message[1].value
        assert text.startswith("FINDINGS: ") and "\n\nIMPRESSION: " in text
        findings, impression = text.removeprefix("FINDINGS: ").split("\n\nIMPRESSION: ")
        present = {f["type"] for f in labels["findings"]}
        universe = set(chest.FINDING_TYPES) if labels["family"] == "chest" else {"lesion"}
        pos, neg = mentions(findings)
        assert pos == present, (pos, present, findings)
        assert neg == universe - present, (neg, findings)
        ipos, _ = mentions(impression)
        assert ipos == present, impression
        for f in labels["findings"]:  # the positive sentence says where
            where = chest.LOBE_NAMES[f["lobe"]] if f["type"] in ("nodule", "consolidation") else (
                f"{f['hemisphere']} {f['lobe']}" if f["type"] == "lesion" else f.get("side", ""))
            assert where.lower() in findings.lower(), (where, findings)


def test_answers_agree_with_the_labels(dataset):
    _, _, records, _ = dataset
    closed = [r for r in records if r.sub_task_type == "vqa_closed"]
    assert closed
    for r in closed:
        task, labels = r.labels["task"], r.labels["input"][0]
        fs = labels["findings"]
        if task["question"] == "presence":
            truth = any(f["type"] == task["finding"] for f in fs)
        elif task["question"] == "side":
            truth = any(f["type"] == task["finding"] and f["side"] == task["side"] for f in fs)
        elif task["question"] == "contrast":
            truth = labels["contrast"] == task["contrast"]
        elif task["question"] == "enhancement":
            truth = any(f["enhancing"] for f in fs)
        else:
            truth = any(f["type"] == task["finding"] and f["lobe"] == task["lobe"]
                        and f.get("hemisphere") == task.get("hemisphere") for f in fs)
        assert r.message[1].value == ("Yes." if truth else "No.") and task["answer"] == ("yes" if truth else "no")
    answers = Counter(r.labels["task"]["answer"] for r in closed)
    assert answers["yes"] and answers["no"]


def test_phrasing_varies():
    from unimedvl.data.phantoms import text

    cfg = SimpleNamespace(image_size=64, min_visible_px=3.0)
    labels = sample_chest_labels(np.random.default_rng(2), cfg, need_finding=True)
    rng = np.random.default_rng(0)
    assert len({text.report_text(labels, rng) for _ in range(30)}) > 5
    assert len({text.caption(labels, rng) for _ in range(30)}) > 2
    for table in (text.CHEST_POSITIVE, text.CHEST_NEGATIVE, text.PRESENCE_Q):
        assert all(len(v) >= 3 for v in table.values())
    for t, templates in text.CHEST_POSITIVE.items():  # the conventions `mentions` relies on
        for tpl in templates:
            assert not NEGATION.search(tpl) and re.search(TERMS[t], tpl, re.IGNORECASE), tpl
    for t, templates in text.CHEST_NEGATIVE.items():
        for tpl in templates:
            assert NEGATION.search(tpl) and re.search(TERMS[t], tpl, re.IGNORECASE), tpl


# --- command line ---------------------------------------------------------------------------------


def test_cli_overrides_and_grid(tmp_path):
    from typer.testing import CliRunner

    from unimedvl.cli import _with_phantom, app

    cfg = _with_phantom(IngestConfig(), 12, 5)
    assert (cfg.phantom.count, cfg.phantom.seed) == (12, 5) and cfg.phantom.image_size == 64
    assert _with_phantom(cfg, None, None) is cfg
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(app, ["phantom-grid", "--output", str(out), "--count", "2", "--params", str(tmp_path / "none.yaml")])
    assert res.exit_code == 0, res.output
    assert PILImage.open(out).size[0] > 200


def test_presence_questions_are_a_fair_coin_for_every_chest_finding():
    from unimedvl.data.phantoms.findings import with_chest_finding
    from unimedvl.data.phantoms.tasks import balanced_presence

    cfg = SimpleNamespace(image_size=64, min_visible_px=3.0)
    rng = np.random.default_rng(5)
    asked: Counter = Counter()
    yes: Counter = Counter()
    for _ in range(1500):
        labels = sample_chest_labels(rng, cfg)
        img, finding, present = balanced_presence(labels, rng)
        assert present == any(f["type"] == finding for f in img["findings"])  # the answer is the image's truth
        others = lambda lab: sorted((f["type"], f.get("side"), f.get("lobe")) for f in lab["findings"] if f["type"] != finding)
        if finding != "cardiomegaly":  # only the finding asked about changes (cardiomegaly resizes consolidations)
            assert others(img) == others(labels)
        asked[finding] += 1
        yes[finding] += present
    # before: "yes" 15-45% per finding, as only findings the patient happened to have were asked "yes"
    for f in asked:
        assert 0.38 <= yes[f] / asked[f] <= 0.62, (f, yes[f], asked[f])
    # pleural findings never share a side: an effusion cannot be added beside a pneumothorax
    lab = sample_chest_labels(np.random.default_rng(0), cfg)
    lab["findings"] = [{"type": "pneumothorax", "side": "left", "size": "small", "rim_mm": 5.0, "visible_floor_applied": False}]
    assert with_chest_finding(lab, "effusion", np.random.default_rng(0)) is None
    assert with_chest_finding(lab, "cardiomegaly", np.random.default_rng(0))["findings"][0]["type"] == "pneumothorax"

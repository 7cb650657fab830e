"""The packaged real corpus: the embedded default, built offline from scans and reports in packages.

What it reads (nothing is downloaded; a package that is not installed becomes one quarantine line):

- DICOM: pydicom's test files, pydicom-data's `data_store/data` and nibabel's test DICOMs. Every
  file is read through `dicom_io.read_dicom` (allow-list, burned-in text, de-identification,
  decoding, windowing). Photographs and secondary captures (OT/SC, among them the face photograph
  in pydicom-data), SEG, RTDOSE, SR, ... are quarantined `modality_not_allowed`. Several files are
  one image in several transfer syntaxes (RG1_*, RG3_*, MR2_*, US1_*, 693_*, emri_small_*,
  OBXXXX1A*): candidates are ordered original-first (no lossy history, uncompressed, then lossless
  compressed, then lossy), and a later variant of an image already taken is quarantined
  `duplicate_encoding` (same keyed SOP instance, pixel-identical, or a lossy-derived copy that
  correlates with a kept image of the same patient).
- NIfTI / MINC / AFNI volumes: nilearn's MNI152 2009a T1 template with its grey- and white-matter
  probability maps (one subject), nibabel's real test scans and dipy's real diffusion data. Volumes
  become 2D slices: `packaged.slices_per_volume` evenly spaced slices per plane in
  `packaged.planes`, from the central 80% of the extent the anatomy occupies, reoriented to the
  closest canonical (RAS) orientation, rotated so the anatomy is upright and resampled to square
  pixels. 4D volumes contribute up to `packaged.frames_per_series` volumes.
- scikit-image's `retina.jpg` (fundus), `microaneurysms.png` (fundus detail) and `ihc.png`
  (immunohistochemistry), read as files; its non-medical pictures are never read. dipy's
  `t1_coronal_slice.npy` and matplotlib's `s1045.ima.gz` (single MRI slices).
- The 3,955 Indiana University chest X-ray reports (text only): see `packaged_reports`.

Questions and captions come only from real metadata (modality, body part, plane, sequence, view,
laterality, and what each package documents about its file). Each 2D image is encoded once and the
same `Image` goes into all of its records: a caption, open questions on modality / plane / body
part / sequence / view / laterality where known, one yes/no question and one text-to-image record.

Splits: the corpus has few subjects, so groups (a DICOM patient, a volume and what is derived from
it) are dealt to train/val/test per modality, largest first, to the split furthest below its
share of images; a group never straddles splits. The manifest's `subjects` shows how few there are.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from .. import images
from ..privacy import Keyed, scrub_path
from ..schema import Image, Rejected
from .base import Context, Item
from .packaged_reports import iter_reports

NAME = "packaged"
NEEDS_INPUT = False

MIN_SIDE = 32  # a volume plane with fewer voxels than this on a side gives no useful 2D image (= qc.min_side)
CENTRAL = 0.8  # slices come from the central 80% of the extent the anatomy occupies
INSTALL_HINT = "install the corpus extras: pip install -e '.[corpus]' (or `make setup`)"

LICENSES = {
    "pydicom": "MIT (pydicom test files; see pydicom/data/test_files/README.txt)",
    "pydicom-data": "pydicom-data (MIT; see package)",
    "nibabel": "MIT (nibabel test data; see package)",
    "nilearn": "MNI ICBM152 (permissive, see nilearn)",
    "dipy": "BSD-3-Clause (dipy)",
    "matplotlib": "matplotlib sample data (matplotlib licence, PSF-style)",
}

MODALITY_NAMES = {
    "xray": "X-ray", "ct": "CT", "mri": "MRI", "ultrasound": "ultrasound", "nuclear": "nuclear medicine",
    "angiography": "angiography", "fundus": "fundus photography", "histology": "histology",
    "endoscopy": "endoscopy", "oct": "OCT", "dermatology": "dermatology",
}
# Noun phrases for captions / generation prompts.
MODALITY_NOUNS = {
    "xray": "X-ray image", "ct": "CT image", "mri": "MRI image", "ultrasound": "ultrasound image",
    "nuclear": "nuclear medicine image", "angiography": "angiography image", "fundus": "fundus photograph",
    "histology": "histology image", "endoscopy": "endoscopy image", "oct": "OCT image",
}
DICOM_MODALITY_NAMES = {"CR": "computed radiography", "DX": "digital radiography", "NM": "nuclear medicine",
                        "PT": "PET", "US": "ultrasound", "CT": "CT", "MR": "MR", "XA": "X-ray angiography"}
SEQUENCE_NAMES = {
    "T1": "T1-weighted", "T2": "T2-weighted", "PD": "proton-density-weighted", "FLAIR": "FLAIR",
    "DWI": "diffusion-weighted", "ADC": "ADC map", "SWI": "susceptibility-weighted", "T2*": "T2*-weighted",
    "b0": "b0 (non-diffusion-weighted)", "fMRI": "functional (BOLD fMRI)",
    "GM map": "grey-matter probability map", "WM map": "white-matter probability map",
}
BODY_PARTS = {"cspine": "cervical spine", "tspine": "thoracic spine", "lspine": "lumbar spine",
              "whole body": "whole body", "extremity": "extremity"}
VIEWS = {"PA": "PA", "AP": "AP", "LL": "left lateral", "RL": "right lateral", "LAT": "lateral", "LATERAL": "lateral"}
LATERALITY = {"L": "left", "R": "right", "B": "both sides"}


# --- the catalogue of non-DICOM files (curated: only real scans, with what their packages document) ---


@dataclass(frozen=True)
class VolumeEntry:
    package: str  # import name of the package holding the file
    rel: str  # path inside the package
    group: str  # subject group: every image of one group goes to one split
    dataset: str
    sequence: str | None
    body_part: str = "brain"
    description: str = ""
    value_range: tuple[float, float] | None = None  # fixed display range (probability maps)
    slices_from: str | None = None  # take the slice positions of this entry (rel) so images pair up
    stack_is_series: bool = False  # the 3rd axis holds repeated acquisitions of one slice, not space
    symmetric: bool = False  # left-right symmetric template: sagittal slices from one hemisphere only
    derived: bool = False


VOLUMES: tuple[VolumeEntry, ...] = (
    VolumeEntry("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "mni152",
                "nilearn-mni152", "T1", description="MNI ICBM152 2009a nonlinear symmetric T1-weighted template",
                symmetric=True),
    VolumeEntry("nilearn", "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", "mni152",
                "nilearn-mni152", "GM map", description="MNI ICBM152 2009a grey-matter probability map",
                value_range=(0, 255), slices_from="datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                derived=True),
    VolumeEntry("nilearn", "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", "mni152",
                "nilearn-mni152", "WM map", description="MNI ICBM152 2009a white-matter probability map",
                value_range=(0, 255), slices_from="datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                derived=True),
    # nibabel's SPM example subject: the structural scan and the EPI run (one subject, one group).
    # reoriented_anat_moved.nii is left out: a rotated resampling of anatomical.nii, mostly empty corners.
    VolumeEntry("nibabel", "tests/data/anatomical.nii", "nibabel-spm-example", "nibabel", None,
                description="spatially normalised structural brain MRI (SPM)"),
    VolumeEntry("nibabel", "tests/data/functional.nii", "nibabel-spm-example", "nibabel", "fMRI",
                description="spatially normalised functional EPI run (SPM)"),
    VolumeEntry("nibabel", "tests/data/example4d.nii.gz", "nibabel-example4d", "nibabel", "fMRI",
                description="functional EPI time series (FSL, TR 2 s)"),
    VolumeEntry("nibabel", "tests/data/example4d+orig.HEAD", "nibabel-afni-example4d", "nibabel", "fMRI",
                description="functional EPI time series (AFNI, TR 3 s)"),
    VolumeEntry("nibabel", "tests/data/scaled+tlrc.HEAD", "nibabel-afni-tlrc", "nibabel", None,
                description="brain MRI in Talairach space (AFNI)"),
    VolumeEntry("nibabel", "tests/data/small.mnc", "nibabel-minc-small", "nibabel", None,
                description="brain MRI (MINC)"),
    VolumeEntry("dipy", "data/files/S0_10slices.nii.gz", "dipy-S0_10slices", "dipy", "b0",
                description="b0 image of a diffusion MRI acquisition (10 slices)"),
    VolumeEntry("dipy", "data/files/aniso_vox.nii.gz", "dipy-aniso_vox", "dipy", None,
                description="brain MRI with anisotropic voxels"),
    VolumeEntry("dipy", "data/files/test_piesno.nii.gz", "dipy-test_piesno", "dipy", "DWI",
                description="one slice of a diffusion MRI acquisition, 14 diffusion-weighted volumes",
                stack_is_series=True),
)


@dataclass(frozen=True)
class PictureEntry:
    package: str
    rel: str
    group: str
    dataset: str
    modality: str
    license: str
    caption: str  # what the package documents about the picture
    kind: str  # "image" (PIL-readable) | "npy" | "ima16" (raw 256x256 uint16, gzip)
    body_part: str | None = None
    plane: str | None = None
    sequence: str | None = None
    laterality: str | None = None
    finding: str | None = None
    stain: str | None = None


PICTURES: tuple[PictureEntry, ...] = (
    PictureEntry("skimage", "data/retina.jpg", "skimage-retina", "scikit-image", "fundus",
                 "CC0-1.0 (scikit-image data; Wikimedia Commons)",
                 "Colour fundus photograph of a normal left eye.", "image",
                 body_part="retina", laterality="L", finding="normal"),
    PictureEntry("skimage", "data/microaneurysms.png", "skimage-microaneurysms", "scikit-image", "fundus",
                 "CC0-1.0 (scikit-image data; HRF database, Budai et al. 2013)",
                 "Green-channel detail of a retinal fundus image from a diabetic retinopathy case, "
                 "showing microaneurysms.", "image", body_part="retina", finding="microaneurysms"),
    PictureEntry("skimage", "data/ihc.png", "skimage-ihc", "scikit-image", "histology",
                 "no known copyright restrictions (scikit-image data; CMMI)",
                 "Immunohistochemistry of colonic glands: FHL2 protein expression revealed with DAB, "
                 "hematoxylin counterstain.", "image", body_part="colon", stain="IHC (DAB, hematoxylin)"),
    PictureEntry("dipy", "data/files/t1_coronal_slice.npy", "dipy-t1_coronal_slice", "dipy", "mri",
                 LICENSES["dipy"], "Coronal T1-weighted MRI slice of the brain.", "npy",
                 body_part="brain", plane="coronal", sequence="T1"),
    PictureEntry("matplotlib", "mpl-data/sample_data/s1045.ima.gz", "matplotlib-s1045", "matplotlib", "mri",
                 LICENSES["matplotlib"], "MRI slice of the head.", "ima16", body_part="head"),
)


# --- one 2D image and everything known about it -------------------------------------------------


@dataclass
class Shot:
    key: str  # unique within the source: file + position
    item: str  # package-relative file it came from
    group: str  # subject group (raw: only ever keyed)
    image: Image
    modality: str
    dataset: str
    license: str
    uri: str
    meta: dict[str, Any]
    phi_removed: list[str] = field(default_factory=list)


class Shots(list):
    """The 2D images collected so far; an image whose PNG is already here is not added twice."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def add(self, shot: Shot) -> bool:
        digest = hashlib.sha256(shot.image.png).hexdigest()
        if digest in self.seen:
            return False
        self.seen.add(digest)
        self.append(shot)
        return True


def read(root: Path | None, ctx: Context) -> Iterator[Item]:
    shots = Shots()
    yield from _dicom_shots(ctx, shots)
    yield from _volume_shots(ctx, shots)
    yield from _picture_shots(ctx, shots)
    splits = assign_splits(ctx, shots)
    yield from ctx.each([(shot.item, shot.key, shot) for shot in shots],
                        lambda shot: image_records(ctx, shot, splits[shot.group]))
    if ctx.cfg.packaged.reports:
        yield from iter_reports(ctx)


# --- package files ---------------------------------------------------------------------------------


def package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_file(package: str, rel: str) -> tuple[str, Path | None]:
    """(item name, path) of a file shipped inside a package; path is None when it is not installed."""
    base = package_dir(package)
    path = base / rel if base else None
    return f"{package}/{rel}", path if path is not None and path.is_file() else None


# (package import name, folder inside it, prefix for item names, licence key)
DICOM_ROOTS = (
    ("data_store", "data", "pydicom-data", "pydicom-data"),
    ("pydicom", "data/test_files", "pydicom/data/test_files", "pydicom"),
    ("nibabel", "tests/data", "nibabel/tests/data", "nibabel"),
    ("nibabel", "nicom/tests/data", "nibabel/nicom/tests/data", "nibabel"),
)
# Test files whose pixels are not (only) a scan, checked by eye against the package READMEs:
# item -> (reason, detail). Their headers are real, so nothing else would catch them.
_PATTERN = "its pixel data is a synthetic test pattern (horizontal gradient bars), not a scan"
_TWO_FRAME = ("a test copy of pydicom-data/OBXXXX1A.dcm whose second frame is the first one inverted "
              "(made by a script for pydicom PR #714): the image is already taken from OBXXXX1A.dcm")
CURATED_DICOM: dict[str, tuple[str, str]] = {
    "nibabel/tests/data/0.dcm": ("synthetic_pixels", _PATTERN),
    "nibabel/tests/data/1.dcm": ("synthetic_pixels", _PATTERN),
    "nibabel/nicom/tests/data/0.dcm": ("synthetic_pixels", _PATTERN),
    "nibabel/nicom/tests/data/1.dcm": ("synthetic_pixels", _PATTERN),
    "pydicom-data/OBXXXX1A_2frame.dcm": ("duplicate_encoding", _TWO_FRAME),
    "pydicom-data/OBXXXX1A_expb_2frame.dcm": ("duplicate_encoding", _TWO_FRAME),
    "pydicom-data/OBXXXX1A_rle_2frame.dcm": ("duplicate_encoding", _TWO_FRAME),
}
_LOSSY_TS = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101",
    "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
}


@dataclass
class _Candidate:
    path: Path
    item: str
    dataset: str
    license: str
    lossy: bool
    compressed: bool
    order: int
    sop_key: str | None = None  # keyed (SOP instance, rows, columns, frames): same object, any encoding

    def rank(self) -> tuple:
        return (self.lossy, self.compressed, self.order, self.item)


def dicom_candidates(keyed: Keyed | None = None) -> tuple[list[_Candidate], list[str]]:
    """Every DICOM file in the packages (*.dcm, or DICM after the preamble), originals first."""
    out, missing = [], []
    for order, (pkg, sub, prefix, lic) in enumerate(DICOM_ROOTS):
        base = package_dir(pkg)
        folder = base / sub if base else None
        if folder is None or not folder.is_dir():
            if prefix.split("/")[0] not in missing:
                missing.append(prefix.split("/")[0])
            continue
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or "__pycache__" in p.parts:
                continue
            if p.suffix.lower() != ".dcm" and not (p.suffix == "" and _has_dicm(p)):
                continue
            lossy, compressed, sop_key = _encoding_history(p, keyed)
            out.append(_Candidate(p, f"{prefix}/{p.relative_to(folder).as_posix()}", prefix.split("/")[0],
                                  LICENSES[lic], lossy, compressed, order, sop_key))
    out.sort(key=_Candidate.rank)
    return out, missing


def _has_dicm(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _encoding_history(p: Path, keyed: Keyed | None) -> tuple[bool, bool, str | None]:
    """(lossy history, compressed, keyed object key) from the header only: orders the variants of an
    image and lets a later variant be recognised before its pixels are decoded. The raw SOP instance
    UID is only ever hashed here."""
    import pydicom

    tags = ["LossyImageCompression", "SOPInstanceUID", "Rows", "Columns", "NumberOfFrames"]
    try:
        # pydicom warns with element values in the message (a malformed UID, say): never let them out.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=tags)
            ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            sop = str(ds.get("SOPInstanceUID", "") or "").strip()
            dims = [str(ds.get(k, "") or "") for k in ("Rows", "Columns", "NumberOfFrames")]
            lossy_flag = str(ds.get("LossyImageCompression", "") or "").strip()
    except Exception:  # noqa: BLE001 - read_dicom will quarantine it with the proper reason
        return True, True, None
    lossy = lossy_flag == "01" or str(ts or "") in _LOSSY_TS
    compressed = bool(ts is not None and getattr(ts, "is_compressed", False))
    key = keyed.token("packaged-dicom-object", sop, *dims, length=24) if keyed is not None and sop else None
    return lossy, compressed, key


def _thumb(arr: np.ndarray) -> np.ndarray:
    a = arr.astype(np.float32)
    if a.ndim == 3:
        a = a.mean(axis=2)
    t = np.asarray(PILImage.fromarray(a, mode="F").resize((32, 32), PILImage.Resampling.BOX), dtype=np.float64).ravel()
    t = t - t.mean()
    n = np.linalg.norm(t)
    return t / n if n > 0 else t


def _dicom_shots(ctx: Context, shots: Shots) -> Iterator[Item]:
    if package_dir("pydicom") is None:
        yield ctx.reject("pydicom", "missing_file", f"pydicom is not installed, so no DICOM is read: {INSTALL_HINT}")
        return
    from ..dicom_io import read_dicom

    candidates, missing = dicom_candidates(ctx.keyed)
    for name in missing:
        yield ctx.reject(name, "missing_file", f"the package {name!r} is not installed: {INSTALL_HINT}")
    dedupe = _Dedupe()
    for cand in candidates:
        if cand.item in CURATED_DICOM:
            yield ctx.reject(cand.item, *CURATED_DICOM[cand.item])
            continue
        if cand.sop_key and (first := dedupe.objects.get(cand.sop_key)):
            yield ctx.reject(cand.item, "duplicate_encoding", f"{_safe(first)} was taken already and {_SAME}")
            continue
        try:
            img = read_dicom(cand.path, ctx.keyed, ctx.cfg, max_frames=ctx.cfg.packaged.frames_per_series)
            made = _dicom_images(cand, img, shots, dedupe)
        except Rejected as e:
            yield ctx.rejected(cand.item, e)
            continue
        except Exception as e:  # noqa: BLE001 - one odd file must not lose the others: the shared classification
            yield ctx.failed(cand.item, e)
            continue
        for shot in made:
            shots.add(shot)


_SAME = "it is the same image (same SOP instance or identical pixels)"


@dataclass
class _Dedupe:
    """What the DICOM pass has seen, each mapped to the item that was kept for it."""

    objects: dict[str, str] = field(default_factory=dict)  # header key (SOP instance + size)
    keys: dict[str, str] = field(default_factory=dict)  # dicom_io's image_key
    pixels: dict[str, str] = field(default_factory=dict)  # sha256 of the frames' PNGs
    thumbs: dict[str, list] = field(default_factory=lambda: defaultdict(list))  # patient -> kept frames


def _dicom_images(cand: _Candidate, img: Any, shots: Shots, seen: _Dedupe) -> list[Shot]:
    """The images one DICOM object adds, or `Rejected` (duplicate, blank) naming why not."""
    if first := seen.keys.get(img.image_key):
        if cand.sop_key:
            seen.objects.setdefault(cand.sop_key, first)
        raise Rejected("duplicate_encoding", f"{_safe(first)} was taken already and {_SAME}; {img.transfer_syntax}")
    if all(int(f.max()) == int(f.min()) for f in img.frames):
        raise Rejected("blank_image", "every pixel has the same value after the modality LUT and window: a blank image")
    indices = list(img.frame_indices or range(len(img.frames)))
    pngs = [images.encode_png(f, path=_safe(cand.item + (f"#frame={i}" if img.n_frames > 1 else "")))
            for i, f in zip(indices, img.frames, strict=False)]
    digests = [hashlib.sha256(p.png).hexdigest() for p in pngs]
    digest = hashlib.sha256("".join(digests).encode()).hexdigest()
    thumbs = [(f.shape, _thumb(f)) for f in img.frames]
    first, why = seen.pixels.get(digest), _SAME
    if first is None and all(d in shots.seen for d in digests):
        first = next((s.item for s in shots if hashlib.sha256(s.image.png).hexdigest() == digests[0]), "?")
    if first is None:
        first = _copy_of(thumbs, seen.thumbs[img.patient], LOSSY_R if cand.lossy else COPY_R)
        why = ("it is a lossy-compressed copy of it" if cand.lossy else "its frames are copies of it") + \
            " (pixels correlate with that image, or are its intensity inversion)"
    # Map this file's keys to the image that was kept, so later variants name that one.
    seen.keys[img.image_key] = first or cand.item
    seen.pixels.setdefault(digest, first or cand.item)
    if cand.sop_key:
        seen.objects.setdefault(cand.sop_key, first or cand.item)
    if first is not None:
        raise Rejected("duplicate_encoding", f"{_safe(first)} was taken already and {why}; {img.transfer_syntax}")
    seen.thumbs[img.patient] += [(s, t, cand.item) for s, t in thumbs]
    out = []
    for n, (idx, png) in enumerate(zip(indices, pngs, strict=False)):
        if _copy_of(thumbs[n:n + 1], [(s, t, "") for s, t in thumbs[:n]], COPY_R) is not None:
            continue  # a frame that repeats (or inverts) an earlier frame of the same object
        pos = f"#frame={idx}" if img.n_frames > 1 else ""
        meta = {k: v for k, v in img.meta.items() if v is not None}
        meta["source_file"] = _safe(cand.item)
        if img.n_frames > 1:
            meta["frame"] = idx
        out.append(Shot(
            key=cand.item + pos, item=cand.item, group=f"dicom-patient/{img.patient}", image=png,
            modality=img.modality, dataset=cand.dataset, license=cand.license, uri=cand.item + pos, meta=meta,
            phi_removed=list(img.phi_removed),
        ))
    return out


LOSSY_R = 0.9  # a lossy-derived file is a copy of a kept image of the same patient above this correlation
COPY_R = 0.999  # any other file (or frame) only when it is practically identical
INVERTED_R = -0.999  # or the intensity inversion of one (test files made by inverting a frame)


def _copy_of(thumbs: list, kept: list, threshold: float) -> str | None:
    """The kept item this object copies: every frame matches some kept frame (same aspect ratio)."""
    if not kept or not thumbs:
        return None
    match = None
    for shape, t in thumbs:
        best = None
        for kshape, kt, item in kept:
            if abs(shape[0] / shape[1] - kshape[0] / kshape[1]) > 0.02:
                continue
            r = float(np.dot(t, kt))
            if r >= threshold or r <= INVERTED_R:
                best = item
                break
        if best is None:
            return None
        match = match if match is not None else best
    return match


def _safe(path: str) -> str:
    return scrub_path(path)[0]


# --- volumes ------------------------------------------------------------------------------------------

PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


def _volume_shots(ctx: Context, shots: Shots) -> Iterator[Item]:
    try:
        import nibabel as nib
    except ImportError:
        yield ctx.reject("nibabel", "missing_file", f"nibabel is not installed, so no volumes are read: {INSTALL_HINT}")
        return
    positions: dict[str, dict[str, list[int]]] = {}
    for entry in VOLUMES:
        item, path = _package_file(entry.package, entry.rel)
        if path is None:
            yield ctx.reject(item, "missing_file", f"{entry.package} (or this file in it) is not installed: {INSTALL_HINT}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = nib.as_closest_canonical(nib.load(str(path)))
                data = np.asanyarray(img.dataobj)
                zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        except Exception as e:  # noqa: BLE001 - an unreadable file is quarantined, never a crash
            yield ctx.failed(item, e)
            continue
        try:
            made = _volume_images(ctx, entry, item, data, zooms, positions)
        except Exception as e:  # noqa: BLE001 - one odd volume must not lose the others
            yield ctx.failed(item, e)
            continue
        if not sum(shots.add(shot) for shot in made):
            yield ctx.reject(item, "invalid_value",
                             f"no plane of the {data.shape} volume has {MIN_SIDE}+ voxels a side and content")


def _volume_images(ctx: Context, entry: VolumeEntry, item: str, data: np.ndarray, zooms: tuple[float, ...],
                   positions: dict[str, dict[str, list[int]]]) -> list[Shot]:
    """The 2D images of one volume (all of them, or an exception: never half a volume)."""
    cfg = ctx.cfg
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3 and entry.stack_is_series:
        return _series_images(ctx, entry, item, data, zooms)
    if data.ndim == 4:
        frames: list[int | None] = list(images.evenly_spaced(data.shape[3], cfg.packaged.frames_per_series))
    elif data.ndim == 3:
        frames = [None]
    else:
        raise ValueError(f"expected a 3D or 4D volume, got shape {data.shape}")
    keep16 = bool(cfg.keep_16bit) and data.dtype not in (np.uint8, np.int8)
    ref = data[..., frames[0]] if frames[0] is not None else data
    ref = np.nan_to_num(np.asarray(ref, dtype=np.float32))
    pos = positions.get(entry.slices_from or "") or _slice_positions(
        ref, cfg.packaged.planes, cfg.packaged.slices_per_volume, symmetric=entry.symmetric)
    positions[entry.rel] = pos
    out: list[Shot] = []
    for t in frames:
        vol = ref if t == frames[0] else np.nan_to_num(np.asarray(data[..., t], dtype=np.float32))
        lo, hi = entry.value_range or _robust_range(vol)
        for plane in cfg.packaged.planes:
            for k in pos.get(plane, []):
                arr = _slice(vol, plane, k, zooms)
                if arr is None or float(arr.max()) <= float(arr.min()):
                    continue
                png = images.resize_max_side(_window(arr, lo, hi, keep16), cfg.max_side)
                frag = f"#{plane}={k}" + (f"&t={t}" if t is not None else "")
                meta = {
                    "source_file": item, "plane": plane, "slice_index": k,
                    "n_slices": int(vol.shape[PLANE_AXIS[plane]]), "sequence": entry.sequence,
                    "body_part": entry.body_part, "description": entry.description,
                    "voxel_size_mm": [round(z, 3) for z in zooms], "derived": entry.derived,
                }
                if t is not None:
                    meta.update({"volume_index": t, "n_volumes": int(data.shape[3])})
                out.append(Shot(
                    key=item + frag, item=item, group=entry.group,
                    image=images.encode_png(png, path=item + frag), modality="mri",
                    dataset=entry.dataset, license=LICENSES[entry.package], uri=item + frag,
                    meta={k2: v for k2, v in meta.items() if v is not None},
                ))
    return out


def _series_images(ctx: Context, entry: VolumeEntry, item: str, data: np.ndarray,
                   zooms: tuple[float, ...]) -> list[Shot]:
    """A stack of repeated acquisitions of one slice (plane not documented): each one is an image."""
    keep16 = bool(ctx.cfg.keep_16bit) and data.dtype not in (np.uint8, np.int8)
    vol = np.nan_to_num(np.asarray(data, dtype=np.float32))
    lo, hi = entry.value_range or _robust_range(vol)
    out: list[Shot] = []
    for i in images.evenly_spaced(data.shape[2], ctx.cfg.packaged.frames_per_series):
        arr = _square_pixels(np.rot90(vol[:, :, i]), zooms[1], zooms[0])
        if min(arr.shape) < MIN_SIDE or float(arr.max()) <= float(arr.min()):
            continue
        png = images.resize_max_side(_window(arr, lo, hi, keep16), ctx.cfg.max_side)
        frag = f"#volume={i}"
        meta = {"source_file": item, "volume_index": i, "n_volumes": int(data.shape[2]),
                "sequence": entry.sequence, "body_part": entry.body_part, "description": entry.description}
        out.append(Shot(key=item + frag, item=item, group=entry.group,
                        image=images.encode_png(png, path=item + frag), modality="mri", dataset=entry.dataset,
                        license=LICENSES[entry.package], uri=item + frag,
                        meta={k: v for k, v in meta.items() if v is not None}))
    return out


def _robust_range(vol: np.ndarray) -> tuple[float, float]:
    finite = vol[np.isfinite(vol)]
    if finite.size == 0:
        return 0.0, 1.0
    sample = finite[:: max(1, finite.size // 2_000_000)]
    lo, hi = np.percentile(sample, (0.5, 99.5))
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _window(arr: np.ndarray, lo: float, hi: float, keep16: bool) -> np.ndarray:
    # images.window takes a centre/width; scale first so tiny-valued volumes keep a width > 1.
    span = hi - lo if hi > lo else 1.0
    scaled = (arr - lo) * (1000.0 / span)
    return images.window(scaled, 500.0, 1000.0, keep16=keep16)


def _slice_positions(vol: np.ndarray, planes: tuple[str, ...], n: int, *, symmetric: bool = False) -> dict[str, list[int]]:
    """Evenly spaced slice indices per plane inside the central 80% of the anatomy's extent.

    For a left-right symmetric template the sagittal slices come from one hemisphere (midline
    included): the mirrored hemisphere would repeat them pixel for pixel.
    """
    lo, hi = _robust_range(vol)
    mask = vol > lo + 0.1 * (hi - lo)
    out: dict[str, list[int]] = {}
    for plane in planes:
        axis = PLANE_AXIS[plane]
        in_plane = [vol.shape[a] for a in range(3) if a != axis]
        if min(in_plane) < MIN_SIDE:
            out[plane] = []
            continue
        profile = mask.sum(axis=tuple(a for a in range(3) if a != axis))
        nz = np.flatnonzero(profile > 0.01 * profile.max()) if profile.max() > 0 else np.arange(vol.shape[axis])
        first, last = int(nz[0]), int(nz[-1])
        if symmetric and plane == "sagittal":
            last = (first + last + 1) // 2
            margin = (1.0 - CENTRAL) / 2.0 * (last - first)
            a, b = math.ceil(first + 2 * margin), last  # no margin needed at the midline
            out[plane] = sorted({round(float(x)) for x in np.linspace(a, b, min(n, b - a + 1))})
            continue
        margin = (1.0 - CENTRAL) / 2.0 * (last - first)
        a, b = math.ceil(first + margin), math.floor(last - margin)
        if b < a:
            a = b = (first + last) // 2
        count = min(n, b - a + 1)
        out[plane] = sorted({round(float(x)) for x in np.linspace(a, b, count)})
    return out


def _slice(vol: np.ndarray, plane: str, k: int, zooms: tuple[float, ...]) -> np.ndarray | None:
    """One slice of a canonical (RAS) volume, rotated so superior / anterior is up, square pixels."""
    axis = PLANE_AXIS[plane]
    a, b = (x for x in range(3) if x != axis)
    # Basic indexing is a view; np.take would copy (or, on an array proxy, load the volume) each time.
    sl = vol[(slice(None),) * axis + (k,)]  # shape (n_a, n_b)
    if min(sl.shape) < MIN_SIDE:
        return None
    return _square_pixels(np.rot90(sl), zooms[b], zooms[a])


def _square_pixels(arr: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    if not (row_mm > 0 and col_mm > 0) or abs(row_mm / col_mm - 1.0) < 0.1:
        return np.ascontiguousarray(arr)
    step = min(row_mm, col_mm)
    rows = max(1, round(arr.shape[0] * row_mm / step))
    cols = max(1, round(arr.shape[1] * col_mm / step))
    im = PILImage.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(im.resize((cols, rows), PILImage.Resampling.BILINEAR), dtype=np.float32)


# --- pictures (skimage / dipy / matplotlib single images) ---------------------------------------------


def _picture_shots(ctx: Context, shots: Shots) -> Iterator[Item]:
    for e in PICTURES:
        item, path = _package_file(e.package, e.rel)
        if path is None:
            yield ctx.reject(item, "missing_file", f"{e.package} (or this file in it) is not installed: {INSTALL_HINT}")
            continue
        try:
            if e.kind == "image":
                arr = images.decode_image(images.read_bytes(path), name=item)
            elif e.kind == "npy":
                arr = images.window(np.load(path, allow_pickle=False), keep16=ctx.cfg.keep_16bit)
            else:  # raw 256x256 16-bit slice, as matplotlib's MRI example reads it
                raw = np.frombuffer(gzip.decompress(path.read_bytes()), dtype="<u2")
                if raw.size != 256 * 256:
                    raise Rejected("invalid_value", f"expected 256x256 16-bit pixels, got {raw.size} values")
                arr = images.window(raw.reshape(256, 256).astype(np.float64), keep16=ctx.cfg.keep_16bit)
        except Rejected as err:
            yield ctx.rejected(item, err)
            continue
        except Exception as err:  # noqa: BLE001 - one odd file must not lose the others
            yield ctx.failed(item, err)
            continue
        meta = {"source_file": item, "body_part": e.body_part, "plane": e.plane, "sequence": e.sequence,
                "laterality": e.laterality, "finding": e.finding, "stain": e.stain, "description": e.caption}
        shots.add(Shot(key=item, item=item, group=e.group,
                          image=images.encode_png(images.resize_max_side(arr, ctx.cfg.max_side), path=item),
                          modality=e.modality, dataset=e.dataset, license=e.license, uri=item,
                          meta={k: v for k, v in meta.items() if v is not None}))


# --- splits ----------------------------------------------------------------------------------------


def assign_splits(ctx: Context, shots: list[Shot]) -> dict[str, str]:
    """Deal whole groups to splits per modality: largest group first, to the split most short of its share.

    Deterministic for a key (ties broken by the keyed split fraction). With as few subjects as this
    corpus has, hashing alone would often leave a split empty.
    """
    fractions = ctx.cfg.split_fractions
    total = sum(fractions.values()) or 1.0
    share = {s: fractions.get(s, 0.0) / total for s in ("train", "val", "test")}
    sizes: dict[str, Counter] = defaultdict(Counter)
    for s in shots:
        sizes[s.group][s.modality] += 1
    by_modality: dict[str, list[str]] = defaultdict(list)
    for group, mods in sizes.items():
        by_modality[mods.most_common(1)[0][0]].append(group)
    out: dict[str, str] = {}
    for modality in sorted(by_modality):
        groups = sorted(by_modality[modality],
                        key=lambda g: (-sum(sizes[g].values()), ctx.keyed.fraction("packaged-split", g)))
        n_total = sum(sum(sizes[g].values()) for g in groups)
        taken = Counter()
        for g in groups:
            n = sum(sizes[g].values())
            # The split furthest below its share (train first on ties: the biggest group trains).
            split = max(("train", "val", "test"),
                        key=lambda s: (share[s] > 0, share[s] * n_total - taken[s], share[s]))
            out[g] = split
            taken[split] += n
    return out


# --- records ---------------------------------------------------------------------------------------

CAPTION_PROMPTS = (
    "Describe this image.",
    "What does this image show?",
    "Write a short caption for this medical image.",
    "Briefly describe the image.",
)
OPEN_QUESTIONS = {
    "modality": ("What imaging modality was used for this image?", "Which imaging modality is this?",
                 "What kind of medical image is this?"),
    "plane": ("In which plane is this slice?", "What is the imaging plane of this image?",
              "Which anatomical plane does this image show?"),
    "body_part": ("Which part of the body is shown?", "What body region is imaged here?",
                  "Which organ or region does this image show?"),
    "sequence": ("Which MRI sequence or contrast is this?", "What is the MR weighting of this image?",
                 "What kind of MR image is this (weighting or map)?"),
    "view": ("What is the projection of this radiograph?", "In which view was this radiograph taken?"),
    "laterality": ("Which side is imaged?", "Is this the left or the right side?"),
    "finding": ("What finding does this image show?", "What is seen in this image?"),
}
T2I_PROMPTS = ("Generate {a} {phrase}.", "Create {a} {phrase}.", "Synthesize {a} {phrase}.")
T2I_REPLY = "Here is the generated image."
PLANES = ("axial", "coronal", "sagittal")


def _pick(ctx: Context, seq: tuple[str, ...], *parts: str) -> str:
    return seq[int(ctx.keyed.fraction("packaged-template", *parts) * len(seq)) % len(seq)]


def _attributes(shot: Shot) -> dict[str, str]:
    """Display answers for what is known about an image (only real metadata)."""
    m = shot.meta
    out = {"modality": MODALITY_NAMES.get(shot.modality, shot.modality)}
    if shot.modality == "xray" and m.get("dicom_modality") in DICOM_MODALITY_NAMES:
        out["modality"] = f"X-ray ({DICOM_MODALITY_NAMES[m['dicom_modality']]})"
    if m.get("plane") in PLANES:
        out["plane"] = m["plane"]
    if bp := m.get("body_part"):
        out["body_part"] = BODY_PARTS.get(str(bp).lower(), str(bp).lower())
    if (seq := m.get("sequence")) and shot.modality == "mri":
        out["sequence"] = SEQUENCE_NAMES.get(seq, seq)
    if (view := m.get("view")) and shot.modality == "xray":
        out["view"] = VIEWS.get(str(view).upper(), str(view))
    if (lat := m.get("laterality")) in LATERALITY:
        out["laterality"] = LATERALITY[lat]
    if finding := m.get("finding"):
        out["finding"] = finding
    return out


def _phrase(shot: Shot, attrs: dict[str, str]) -> str:
    """'axial T1-weighted MRI slice of the brain' from the known attributes."""
    if shot.modality in ("fundus", "histology") and shot.meta.get("description"):
        d = shot.meta["description"].rstrip(".")
        return d[0].lower() + d[1:]
    words = []
    if "plane" in attrs:
        words.append(attrs["plane"])
    seq = shot.meta.get("sequence")
    if seq in ("GM map", "WM map"):
        words.append(SEQUENCE_NAMES[seq])
        noun = "(derived from T1-weighted MRI)"
        phrase = " ".join(words) + f" {noun}"
    else:
        if "sequence" in attrs:
            words.append(attrs["sequence"])
        noun = MODALITY_NOUNS.get(shot.modality, "medical image")
        if shot.modality == "mri" and "plane" in attrs:
            noun = "MRI slice"
        if shot.modality == "xray" and shot.meta.get("dicom_modality") == "CR":
            noun = "computed radiography (X-ray) image"
        words.append(noun)
        phrase = " ".join(words)
    if "body_part" in attrs:
        phrase += f" of the {attrs['body_part']}"
    extras = []
    if "view" in attrs:
        extras.append(f"{attrs['view']} view")
    if "laterality" in attrs and shot.modality != "fundus":
        extras.append(f"{attrs['laterality']} side")
    if extras:
        phrase += ", " + ", ".join(extras)
    return phrase


def _caption(shot: Shot, attrs: dict[str, str]) -> str:
    if shot.modality in ("fundus", "histology") and shot.meta.get("description"):
        return shot.meta["description"]
    phrase = _phrase(shot, attrs)
    text = phrase[0].upper() + phrase[1:] + "."
    desc = shot.meta.get("description")
    if desc and shot.modality == "mri":
        text += f" Source: {desc}."
    if shot.meta.get("n_volumes") and shot.meta.get("volume_index") is not None:
        text += f" Volume {shot.meta['volume_index'] + 1} of {shot.meta['n_volumes']}."
    return text


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" or phrase.startswith(("MRI", "X-ray", "FLAIR")) else "a"


# Body part -> region, so a "no" answer never names a part the image may contain (head CT / brain).
REGIONS = {
    "brain": "head", "head": "head", "skull": "head", "retina": "eye", "eye": "eye",
    "chest": "thorax", "heart": "thorax", "lung": "thorax", "thorax": "thorax",
    "abdomen": "abdomen", "pancreas": "abdomen", "liver": "abdomen", "kidney": "abdomen", "colon": "abdomen",
    "pelvis": "pelvis", "knee": "limb", "extremity": "limb", "hand": "limb", "foot": "limb",
    "spine": "spine", "cervical spine": "spine", "thoracic spine": "spine", "lumbar spine": "spine", "neck": "neck",
}
OVERLAPS = {"head": {"eye"}, "eye": {"head"}, "neck": {"spine", "head"}, "spine": {"neck", "thorax", "abdomen", "pelvis"},
            "thorax": {"spine", "abdomen"}, "abdomen": {"spine", "thorax", "pelvis"}, "pelvis": {"spine", "abdomen"}}

CLOSED_MODALITIES = {
    "xray": "an X-ray image", "ct": "a CT image", "mri": "an MRI image", "ultrasound": "an ultrasound image",
    "nuclear": "a nuclear medicine image", "fundus": "a fundus photograph", "histology": "a histology image",
}


def _closed_question(ctx: Context, shot: Shot, attrs: dict[str, str]) -> tuple[str, str, str, str]:
    """(question, answer, attribute, asked value): one yes/no question with a keyed yes/no choice."""
    options = [a for a in ("modality", "plane", "body_part") if a in attrs]
    attr = options[int(ctx.keyed.fraction("packaged-closed-attr", shot.key) * len(options)) % len(options)]
    truth = attrs[attr]
    yes = ctx.keyed.fraction("packaged-closed-yes", shot.key) < 0.5
    if attr == "body_part" and REGIONS.get(truth, "all") == "all":
        yes = True  # a "no" would need to know what the region does not contain
    if attr == "modality":
        truth = shot.modality
        pool = [m for m in CLOSED_MODALITIES if m != truth]
    elif attr == "plane":
        pool = [p for p in PLANES if p != truth]
    else:
        near = {REGIONS.get(truth, "all")} | OVERLAPS.get(REGIONS.get(truth, "all"), set())
        pool = [b for b in ("brain", "chest", "abdomen", "knee", "spine", "pelvis", "retina") if REGIONS[b] not in near]
    asked = truth if yes else pool[int(ctx.keyed.fraction("packaged-closed-alt", shot.key) * len(pool)) % len(pool)]
    short = asked.split(" (")[0]
    if attr == "modality":
        q = f"Is this {CLOSED_MODALITIES.get(asked, 'a medical image')}?"
        asked = MODALITY_NAMES.get(asked, asked)
    elif attr == "plane":
        q = f"Is this {_article(short)} {short} slice?"
    else:
        q = f"Does this image show the {short}?"
    return q, "Yes." if yes else "No.", attr, asked


def image_records(ctx: Context, shot: Shot, split: str) -> Iterator[Item]:
    attrs = _attributes(shot)
    base_labels = {"metadata": shot.meta, "modality": shot.modality}
    common = {"patient": shot.group, "modality": shot.modality, "license": shot.license,
              "source_uri": shot.uri, "split": split, "dataset": shot.dataset, "phi_removed": shot.phi_removed}
    img = [shot.image]
    todo: list[tuple[str, str, list[tuple[str, str]], dict[str, Any], dict[str, Any]]] = []
    todo.append(("caption", "caption",
                 [("human", f"<image>\n{_pick(ctx, CAPTION_PROMPTS, shot.key, 'caption')}"),
                  ("gpt", _caption(shot, attrs))],
                 {"question_type": "caption"}, {"input_img": img}))
    for attr, answer in attrs.items():
        q = _pick(ctx, OPEN_QUESTIONS[attr], shot.key, attr)
        todo.append((f"open-{attr}", "vqa_open", [("human", f"<image>\n{q}"), ("gpt", answer[0].upper() + answer[1:])],
                     {"question_type": attr, "answer": answer}, {"input_img": img}))
    q, a, attr, asked = _closed_question(ctx, shot, attrs)
    truth = MODALITY_NAMES.get(shot.modality, shot.modality) if attr == "modality" else attrs[attr]
    todo.append(("closed", "vqa_closed", [("human", f"<image>\n{q}"), ("gpt", a)],
                 {"question_type": attr, "asked": asked, "answer": a.rstrip(".").lower(), "truth": truth},
                 {"input_img": img}))
    phrase = _phrase(shot, attrs)
    prompt = _pick(ctx, T2I_PROMPTS, shot.key, "t2i").format(a=_article(phrase), phrase=phrase)
    todo.append(("t2i", "t2i", [("human", prompt), ("gpt", T2I_REPLY)], {"question_type": "t2i", "prompt": phrase},
                 {"output_img": img}))
    for suffix, sub, message, extra, imgs in todo:
        try:
            yield ctx.record(source_id=f"{shot.key}/{suffix}", sub_task=sub, message=message,
                             labels={**base_labels, **extra}, **common, **imgs)
        except Rejected as e:
            yield ctx.rejected(shot.item, e, source_id=f"{shot.key}/{suffix}")

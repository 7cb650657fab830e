"""`dicom`: a folder of DICOM files as exported from a PACS, a CD or a research archive.

Every file under the input folder (recursively, sorted; any name, with or without `.dcm`; DICOMDIR
index files and hidden files are skipped) goes through `dicom_io.read_dicom`, which de-identifies
the header before anything else is read. Each accepted frame becomes a caption record and VQA
records whose answers come from the real metadata (modality, body part, plane, view, laterality, MR
sequence). Transfer-syntax variants of one image (the same SOP instance stored uncompressed, as RLE,
as JPEG 2000, ...) are kept once: the first file in sorted order wins.

Folder and file names in exports routinely carry patient names and MRNs (`DOE^JANE/MRN123/...`),
which no pattern can reliably recognise, so every path component is replaced by a keyed token
before it is written anywhere (records, quarantine). `locate` maps such a token path back to the
file for whoever holds the key and the input folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .. import images
from ..dicom_io import DicomImage, read_dicom
from ..patterns import bounded
from ..privacy import Keyed
from ..schema import IMAGE_TOKEN, Rejected
from .base import Context, Item

NAME = "dicom"
NEEDS_INPUT = True
PROGRESS_BY_UNITS = True  # count() counts files; each frame yields several records
LICENSE = "user-provided"
MAX_FRAMES = 8

_SKIP_NAMES = {"dicomdir"}

# DICOM modality -> what a radiologist would call it (answer to "Which imaging modality is this?").
MODALITY_NAME = {
    "CT": "CT", "MR": "MRI", "CR": "X-ray", "DX": "X-ray", "RG": "X-ray", "MG": "mammography",
    "US": "ultrasound", "NM": "nuclear medicine", "PT": "PET", "XA": "angiography", "RF": "fluoroscopy",
    "OP": "fundus photography", "OPT": "OCT", "SM": "histology", "ES": "endoscopy", "OT": "secondary capture",
}
# schema modality -> the yes/no question about it.
IS_QUESTION = {
    "ct": "Is this a CT scan?",
    "mri": "Is this an MRI scan?",
    "xray": "Is this an X-ray image?",
    "ultrasound": "Is this an ultrasound image?",
    "nuclear": "Is this a nuclear medicine image?",
    "angiography": "Is this an angiogram?",
    "fundus": "Is this a fundus photograph?",
    "oct": "Is this an OCT scan?",
    "histology": "Is this a histology image?",
    "endoscopy": "Is this an endoscopy image?",
}
SEQUENCE_NAME = {
    "T1": "T1-weighted", "T2": "T2-weighted", "PD": "proton-density-weighted", "FLAIR": "FLAIR",
    "DWI": "diffusion-weighted", "ADC": "ADC map", "SWI": "susceptibility-weighted", "T2*": "T2*-weighted",
}
SIDE = {"L": "left", "R": "right", "B": "bilateral"}


# --- walking the folder -------------------------------------------------------------------------------


def _candidates(root: Path) -> list[tuple[str, bool]]:
    """(relative path, is_dir_symlink) for every file to read, sorted; symlinked dirs are listed too."""
    out: list[tuple[str, bool]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for d in dirnames:
            if (base / d).is_symlink():
                out.append(((base / d).relative_to(root).as_posix(), True))
        for f in filenames:
            if f.startswith(".") or f.lower() in _SKIP_NAMES:
                continue
            out.append(((base / f).relative_to(root).as_posix(), False))
    return sorted(out)


def count(root: Path | None, ctx: Context) -> int:
    """Files that will be read (a frame yields several records, so items seen exceed this)."""
    if root is None or not Path(root).is_dir():
        return 1 if root is not None and Path(root).is_file() else 0
    return len(_candidates(Path(root)))


# --- path pseudonyms ----------------------------------------------------------------------------------

_EXT = bounded(r"(.+?)(\.[A-Za-z][A-Za-z0-9]{0,4})", 4096)
_LETTERS = str.maketrans("0123456789abcdef", "ghijklmnopqrstuv")


def _component_token(keyed: Keyed, part: str, kind: str) -> str:
    # Letters only: a run of digits would be taken for an ID by the text scrubber and mangled.
    return kind + "-" + keyed.token("dicom-path", part, length=12).translate(_LETTERS)


def pseudo_path(keyed: Keyed, rel: str) -> str:
    """`Doe_Jane/MRN123/IM0001.dcm` -> `d-…/d-…/f-….dcm`: keyed tokens, the extension kept."""
    parts = [p for p in Path(rel).as_posix().split("/") if p and p != "."]
    if not parts:
        return "f-" + keyed.token("dicom-path", "", length=12).translate(_LETTERS)
    out = [_component_token(keyed, p, "d") for p in parts[:-1]]
    name = parts[-1]
    m = _EXT.fullmatch(name)
    stem, ext = (m.group(1), m.group(2).lower()) if m else (name, "")
    out.append(_component_token(keyed, stem, "f") + ext)
    return "/".join(out)


def locate(root: Path, keyed: Keyed, pseudo: str) -> Path | None:
    """The file under `root` whose pseudonymous path is `pseudo` (the `#frame=` suffix ignored)."""
    pseudo = pseudo.split("#", 1)[0]
    for rel, _ in _candidates(Path(root)):
        if pseudo_path(keyed, rel) == pseudo:
            return Path(root) / rel
    return None


# --- reading ------------------------------------------------------------------------------------------


def read(root: Path | None, ctx: Context) -> Iterator[Item]:
    if root is None:
        raise Rejected("missing_file", "the dicom source needs an --input folder")
    root = Path(root)
    if root.is_file():  # a single file given as the input
        entries, base = [(root.name, False)], root.parent
    else:
        entries, base = _candidates(root), root
    seen_keys: set[str] = set()

    def one(entry: tuple[str, bool]) -> list[Item]:
        try:
            return list(_read_one(base, *entry, seen_keys, ctx))
        finally:
            ctx.unit_done()

    # Items are named by their pseudonymous path everywhere, the guard's quarantine lines included.
    yield from ctx.each([(pseudo_path(ctx.keyed, rel), None, (rel, link)) for rel, link in entries], one)


def _read_one(base: Path, rel: str, is_dir_link: bool, seen_keys: set[str], ctx: Context) -> Iterator[Item]:
    uri = pseudo_path(ctx.keyed, rel)
    try:
        path = images.safe_path(base, rel, regular=not is_dir_link)
        if is_dir_link:
            return  # a symlinked folder inside the input: its files are walked at their real place
        dcm = read_dicom(path, ctx.keyed, ctx.cfg, max_frames=MAX_FRAMES)
    except Rejected as e:
        yield ctx.rejected(uri, e)
        return
    if dcm.image_key in seen_keys:
        yield ctx.reject(
            uri, "duplicate_encoding",
            f"the same image (SOP instance, size and frame count) was already read from an earlier file; "
            f"this copy is its {dcm.transfer_syntax} encoding",
        )
        return
    seen_keys.add(dcm.image_key)
    yield from _records(dcm, uri, ctx)


def _records(d: DicomImage, uri: str, ctx: Context) -> Iterator[Item]:
    multi = d.n_frames > 1
    for frame, idx in zip(d.frames, d.frame_indices, strict=True):
        frame_uri = f"{uri}#frame={idx}" if multi else uri
        image = images.encode_png(frame, path=frame_uri)
        labels = dict(d.meta, frame=idx)
        for sub_task, qtype, question, answer, extra in questions(d, idx, ctx.keyed):
            try:
                yield ctx.record(
                    source_id=f"{d.image_key}/{idx}/{qtype}",
                    patient=d.patient,
                    sub_task=sub_task,
                    modality=d.modality,
                    license=LICENSE,
                    source_uri=frame_uri,
                    message=[("human", f"{IMAGE_TOKEN}\n{question}"), ("gpt", answer)],
                    input_img=[image],
                    labels=dict(labels, **extra, question_type=qtype, answer=answer),
                    phi_removed=[*d.phi_removed, "path:pseudonymised"],
                )
            except Rejected as e:
                yield ctx.rejected(frame_uri, e, source_id=f"{d.image_key}/{idx}/{qtype}")


# --- text from metadata -------------------------------------------------------------------------------


def caption(d: DicomImage) -> str:
    """One sentence built only from the coded metadata, e.g. 'Axial CT slice of the chest.'"""
    mod, dm = d.modality, d.dicom_modality
    body = d.body_part
    side = SIDE.get(d.laterality or "")
    if mod == "mri":
        kind = f"{SEQUENCE_NAME[d.sequence]} MRI" if d.sequence in SEQUENCE_NAME else "MRI"
    elif mod == "nuclear":
        kind = "PET" if dm == "PT" else "nuclear medicine"
    elif mod == "xray":
        kind = "mammogram" if dm == "MG" else "radiograph"
        if d.view:
            kind = f"{d.view} {kind}"
    else:
        kind = {
            "ct": "CT", "ultrasound": "ultrasound", "angiography": "fluoroscopy" if dm == "RF" else "X-ray angiography",
            "fundus": "fundus photograph", "oct": "OCT", "histology": "histology", "endoscopy": "endoscopy",
            "other": "secondary capture",
        }[mod]
    if mod in ("ct", "mri", "nuclear") and d.plane:
        head = f"{d.plane} {kind} slice"
    elif mod in ("xray", "fundus"):
        head = kind
    elif mod == "oct":
        head = "OCT scan"
    else:
        head = f"{kind} image"
    if body and side and side != "bilateral":
        where = f" of the {side} {body}"
    elif body:
        where = f" of the {body}" + (", bilateral" if side == "bilateral" else "")
    elif side:
        where = f" of the {side} eye" if mod in ("fundus", "oct") else f", {side} side"
    else:
        where = ""
    text = head + where + "."
    return text[0].upper() + text[1:]


def questions(d: DicomImage, frame: int, keyed: Keyed) -> list[tuple[str, str, str, str, dict]]:
    """(sub_task, question type, question, answer, extra labels) for one frame, where the metadata knows."""
    out: list[tuple[str, str, str, str]] = [
        ("caption", "caption", "Describe this image.", caption(d)),
        ("vqa_open", "modality", "Which imaging modality is this?", MODALITY_NAME[d.dicom_modality]),
    ]
    if d.body_part:
        out.append(("vqa_open", "body_part", "Which body part is shown?", d.body_part))
    if d.plane:
        out.append(("vqa_open", "plane", "Which plane is this slice in?", d.plane))
    if d.modality == "xray" and d.view:
        out.append(("vqa_open", "view", "Which view is this radiograph?", d.view))
    if d.modality == "mri" and d.sequence in SEQUENCE_NAME:
        out.append(("vqa_open", "sequence", "Which MRI sequence is this?", SEQUENCE_NAME[d.sequence]))
    result = [(*q, {}) for q in out]
    if d.modality not in IS_QUESTION:  # a secondary capture: no yes/no modality question fits it
        return result
    out.append(("vqa_closed", "modality_yes", IS_QUESTION[d.modality], "yes"))
    others = sorted(m for m in IS_QUESTION if m != d.modality)
    other = others[int(keyed.fraction("dicom-closed", d.image_key, str(frame)) * len(others))]
    result = [(*q, {}) for q in out]
    result.append(("vqa_closed", "modality_no", IS_QUESTION[other], "no", {"asked_modality": other}))
    result[-2][4]["asked_modality"] = d.modality
    return result

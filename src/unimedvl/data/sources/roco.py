"""ROCO (Pelka et al., 2018): figures from PubMed Central Open Access papers with their captions.

Layouts accepted (every `captions.txt` under the input folder is read):

    captions.txt + images/ROCO_00001.jpg                     a flat copy
    <train|validation|test>/<radiology|non-radiology>/       the official repository layout
        captions.txt, images/, dlinks.txt, licences.txt

`captions.txt` lines are `ROCO_ID<TAB>caption`. The image is found through `licences.txt`
(`ROCO_ID,PMC_ID,CC`: the image file name and that image's own licence) or `dlinks.txt`
(`ROCO_ID<TAB>wget .../PMCxxx.tar.gz ...<TAB>name` -> `PMCxxx_name`, as the fetch script names it),
else `images/<ROCO_ID>.jpg|.png|.jpeg`.

Each line is one `caption` record. The split is the folder's (else by image). Modality is "other"
unless the caption names exactly one (CT, MRI, X-ray, ultrasound, ...).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

from .. import images
from ..schema import IMAGE_TOKEN, Quarantine, Record, Rejected
from .base import Context, Item
from ._common import ImageCache, modality_from_text, split_from_path, under

NAME = "roco"
NEEDS_INPUT = True
LICENSE = "per image: the source article's PMC Open Access licence (see licences.txt)"
CAPTIONS = "captions.txt"
EXTS = (".jpg", ".png", ".jpeg")
PROMPTS = (
    "Describe this image.",
    "Write a caption for this medical image.",
    "What does this image show?",
    "Give a short description of this figure.",
)


def _caption_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(CAPTIONS) if p.is_file())


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    files = _caption_files(root)
    if not files:
        yield ctx.reject(".", "missing_file", f"no {CAPTIONS} under the input folder")
        return
    cache = ImageCache(root, ctx.cfg.max_side)
    for rel in files:
        folder = Path(rel).parent.as_posix()
        folder = "" if folder == "." else folder
        split = split_from_path(folder) if folder else None
        category = next((c for c in ("non-radiology", "radiology") if c in Path(folder).parts), None)
        names, licences, problems = _side_files(root, folder)
        for q in problems:
            yield ctx.rejected(q[0], q[1])
        data, bad = ctx.attempt(rel, lambda rel=rel: images.read_bytes(images.safe_path(root, rel)))
        if bad is not None:
            yield bad
            continue
        lines = [(f"{rel}:{n}", None, (n, raw)) for n, raw in enumerate(data.splitlines(), start=1) if raw.strip()]
        yield from ctx.each(lines, lambda p, rel=rel, folder=folder, split=split, category=category, names=names,
                            licences=licences: _line(root, ctx, cache, rel, folder, split, category, names, licences, *p))


def _line(root: Path, ctx: Context, cache: ImageCache, rel: str, folder: str, split: str | None,
          category: str | None, names: dict[str, str], licences: dict[str, str], n: int, raw: bytes) -> Item:
    roco_id = None
    try:
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise Rejected("invalid_encoding", f"line {n} of {rel} is not valid UTF-8") from None
        if "\t" not in line:
            raise Rejected("malformed_csv", f"line {n} of {rel} has no tab between the id and the caption")
        roco_id, caption = (x.strip() for x in line.split("\t", 1))
        if not roco_id:
            raise Rejected("missing_field", f"line {n} of {rel} has no image id")
        if not caption:
            raise Rejected("missing_field", f"the caption of {roco_id} is empty")
        return _record(root, ctx, cache, rel, folder, split, category, names, licences, roco_id, caption)
    except Exception as e:  # noqa: BLE001 - the guard's own handling, with the id once it is known
        return ctx.failed(f"{rel}:{n}", e, roco_id or None)


def count(root: Path, ctx: Context) -> int | None:
    try:
        total = 0
        for rel in _caption_files(root):
            with open(root / rel, "rb") as fh:
                total += sum(1 for line in fh if line.strip())
        return total
    except Exception:  # noqa: BLE001 - progress total only
        return None


def _side_files(root: Path, folder: str) -> tuple[dict[str, str], dict[str, str], list[tuple[str, Rejected]]]:
    """ROCO_ID -> image file name and -> licence, from licences.txt and dlinks.txt when present."""
    names: dict[str, str] = {}
    licences: dict[str, str] = {}
    problems: list[tuple[str, Rejected]] = []
    for side in ("licences.txt", "dlinks.txt"):
        rel = under(folder, side) if folder else side
        if not (root / rel).is_file():
            continue
        try:
            text = images.read_bytes(images.safe_path(root, rel)).decode("utf-8", errors="replace")
        except Rejected as e:
            problems.append((rel, e))
            continue
        for line in text.splitlines():
            if side == "licences.txt":
                parts = [x.strip() for x in line.split(",", 2)]
                if len(parts) == 3 and parts[0].startswith("ROCO_"):
                    names.setdefault(parts[0], parts[1])
                    licences[parts[0]] = parts[2]
            else:
                parts = [x.strip() for x in line.split("\t")]
                if len(parts) >= 3 and parts[0].startswith("ROCO_"):
                    words = parts[1].split()
                    archive = next((w for w in words if w.endswith(".tar.gz")), "")
                    pmc = archive.rsplit("/", 1)[-1].removesuffix(".tar.gz")
                    if pmc:
                        names.setdefault(parts[0], f"{pmc}_{parts[-1]}")
    return names, licences, problems


def _image_rel(root: Path, folder: str, roco_id: str, names: dict[str, str]) -> str:
    if roco_id in names:
        return under(under(folder, "images") if folder else "images", names[roco_id])
    base = under(folder, "images") if folder else "images"
    candidates = [under(base, roco_id + ext) for ext in EXTS]
    for rel in candidates:
        try:
            images.safe_path(root, rel)
            return rel
        except Rejected as e:
            if e.reason != "missing_file":
                raise
    raise Rejected("missing_file", f"no image for {roco_id} in {base}/ (tried {', '.join(EXTS)})")


def _record(root: Path, ctx: Context, cache: ImageCache, rel: str, folder: str, split: str | None,
            category: str | None, names: dict[str, str], licences: dict[str, str], roco_id: str,
            caption: str) -> Record:
    img, touched = cache.load(_image_rel(root, folder, roco_id, names))
    prompt = PROMPTS[zlib.crc32(roco_id.encode()) % len(PROMPTS)]
    modality = modality_from_text(caption) if category != "non-radiology" else "other"
    return ctx.record(
        source_id=roco_id,
        # the article (PMC id) when the image name is known, so one paper's figures share a group
        patient=names[roco_id].split("_", 1)[0] if roco_id in names else roco_id,
        sub_task="caption",
        modality=modality,
        license=licences.get(roco_id) or LICENSE,
        source_uri=f"{rel}#{roco_id}",
        message=[("human", f"{IMAGE_TOKEN}\n{prompt}"), ("gpt", caption)],
        input_img=[img],
        split=split,
        labels={"roco_id": roco_id, "category": category} if category else {"roco_id": roco_id},
        phi_removed=touched,
    )

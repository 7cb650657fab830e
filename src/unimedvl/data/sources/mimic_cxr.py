"""MIMIC-CXR (Johnson et al., 2019) reports, with MIMIC-CXR-JPG images where present.

Layout (the two PhysioNet releases merged into one folder, or just the reports):

    files/pXX/pSUBJECT/sSTUDY.txt                 free-text report (FINDINGS:, IMPRESSION:, ...)
    files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg      images (optional)
    mimic-cxr-2.0.0-metadata.csv[.gz]             dicom_id, subject_id, study_id, ViewPosition, ...
    mimic-cxr-2.0.0-split.csv[.gz]                dicom_id, study_id, subject_id, split

Each report file is one item: a `report` record with up to two of the study's images (frontal PA/AP
first, by ViewPosition) when it has images, else a `text_only` record (modality "none"). The answer
is FINDINGS + IMPRESSION when the report has those sections, else the whole report; the INDICATION
(when there is one) goes into the prompt. MIMIC's "___" de-identification placeholders are kept.

Split from the split CSV when it lists the study, else by subject. The subject is the patient group;
subject and study numbers are scrubbed out of every stored path.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .. import images
from ..patterns import linear
from ..schema import IMAGE_TOKEN, Quarantine, Record, Rejected
from .base import Context, classify_failure
from ._common import ImageCache, load_images, read_text

NAME = "mimic_cxr"
NEEDS_INPUT = True
LICENSE = "PhysioNet Credentialed Health Data License 1.5.0"
METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLITS = "mimic-cxr-2.0.0-split.csv"
MAX_IMAGES = 2
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
VIEW_RANK = {"PA": 0, "AP": 1}
_REPORT = linear(r"^s(\d+)\.txt$")
_SUBJECT = linear(r"^p(\d+)$")
_SECTION = linear(r"(?m)^[ \t]*([A-Z][A-Z /&()-]{1,40}):")


def _reports(root: Path) -> list[str]:
    out = []
    for p in root.rglob("s*.txt"):
        if _REPORT.match(p.name) and _SUBJECT.match(p.parent.name) and p.is_file():
            out.append(p.relative_to(root).as_posix())
    return sorted(out)


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    reports = _reports(root)
    if not reports:
        yield ctx.reject(".", "missing_file", "no files/pXX/pSUBJECT/sSTUDY.txt report under the input folder")
        return
    views: dict[str, str] = {}
    splits: dict[str, str] = {}
    for name, columns in ((METADATA, ("dicom_id", "ViewPosition")), (SPLITS, ("study_id", "split"))):
        table, bad = ctx.attempt(name, _table, root, name, columns)
        if bad is not None:
            yield bad
            continue
        top = {k: v.most_common(1)[0][0] for k, v in table.items()}
        if name == METADATA:
            views = top
        else:
            splits = {k: Context.normalise_split(v) or "" for k, v in top.items()}
    cache = ImageCache(root, ctx.cfg.max_side)
    entries = [(rel, None, rel) for rel in reports]
    yield from ctx.each(entries, lambda rel: _report(root, ctx, cache, rel, views, splits))


def _report(root: Path, ctx: Context, cache: ImageCache, rel: str, views: dict[str, str],
            splits: dict[str, str]) -> Record | Quarantine:
    subject = _SUBJECT.match(Path(rel).parent.name).group(1)  # type: ignore[union-attr]
    study = _REPORT.match(Path(rel).name).group(1)  # type: ignore[union-attr]
    try:
        return _record(root, ctx, cache, rel, subject, study, views, splits.get(study) or None)
    except Exception as e:  # noqa: BLE001 - quarantined with subject and study numbers cut out
        reason, detail = classify_failure(e)
        for ident in (subject, study):
            detail = detail.replace(ident, "[ID]") if len(ident) >= 4 else detail
        return ctx.reject(rel, reason, detail, f"{subject}/{study}")  # the path is pseudonymised there


def count(root: Path, ctx: Context) -> int | None:
    try:
        return len(_reports(root))
    except Exception:  # noqa: BLE001 - progress total only
        return None


def _table(root: Path, name: str, columns: tuple[str, str]) -> dict[str, Counter[str]]:
    """key column -> counts of the other column's values, from `name` or `name.gz` (absent -> empty)."""
    for rel in (name, name + ".gz"):
        if (root / rel).is_file():
            break
    else:
        return {}
    data = images.read_bytes(images.safe_path(root, rel))
    try:
        if rel.endswith(".gz"):
            data = gzip.decompress(data)
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Rejected("invalid_encoding", f"{rel} is not valid UTF-8; it was not used") from None
    except (OSError, EOFError) as e:
        raise Rejected("unreadable", f"{rel} could not be decompressed: {e}; it was not used") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    key, value = columns
    if not reader.fieldnames or key not in reader.fieldnames or value not in reader.fieldnames:
        raise Rejected("missing_field", f"{rel} has no {key!r} and {value!r} columns; it was not used")
    out: dict[str, Counter[str]] = {}
    try:
        for row in reader:
            k, v = (row.get(key) or "").strip(), (row.get(value) or "").strip()
            if k and v:
                out.setdefault(k, Counter())[v] += 1
    except csv.Error as e:
        raise Rejected("malformed_csv", f"{rel} line {reader.line_num}: {e}; it was not used") from None
    return out


def _sections(text: str) -> dict[str, str]:
    marks = list(_SECTION.finditer(text))
    out = {}
    ends = [m.start() for m in marks[1:]] + [len(text)] if marks else []
    for m, end in zip(marks, ends, strict=True):
        body = text[m.end(): end]
        out.setdefault(m.group(1).strip(), " ".join(body.split()))
    return out


def _answer(text: str) -> tuple[str, str | None]:
    """(report answer, indication) — FINDINGS + IMPRESSION when present, else the whole report."""
    sec = _sections(text)
    parts = [f"{name}: {sec[name]}" for name in ("FINDINGS", "IMPRESSION") if sec.get(name)]
    if parts:
        answer = "\n".join(parts)
    else:
        answer = "\n".join(" ".join(line.split()) for line in text.strip().splitlines() if line.strip())
        answer = answer.removeprefix("FINAL REPORT").strip()
    indication = sec.get("INDICATION") or sec.get("CLINICAL HISTORY") or sec.get("HISTORY") or None
    return answer, indication


def _record(root: Path, ctx: Context, cache: ImageCache, rel: str, subject: str, study: str,
            views: dict[str, str], split: str | None) -> Record:
    ids = (subject, study)
    answer, indication = _answer(read_text(root, rel))
    if not answer:
        raise Rejected("missing_field", "the report has no text")
    study_dir = root / rel[: -len(".txt")]
    jpgs = sorted(p.name for p in study_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS) if study_dir.is_dir() else []
    jpgs.sort(key=lambda n: (VIEW_RANK.get(views.get(Path(n).stem, "").upper(), 2), n))
    chosen = [f"{rel[: -len('.txt')]}/{n}" for n in jpgs[:MAX_IMAGES]]
    imgs, touched = load_images(cache, chosen, ids)
    if imgs:
        view = "these chest X-ray views" if len(imgs) > 1 else "this chest X-ray"
        prompt = f"{IMAGE_TOKEN}\n" * len(imgs) + f"Write the findings and impression for {view}."
    else:
        prompt = "Write a chest X-ray report (findings and impression)."
    if indication:
        prompt += f"\nIndication: {indication}"
    return ctx.record(
        source_id=f"{subject}/{study}",
        patient=subject,
        sub_task="report" if imgs else "text_only",
        modality="xray" if imgs else "none",
        license=LICENSE,
        source_uri=rel,
        message=[("human", prompt), ("gpt", answer)],
        input_img=imgs,
        split=split,
        labels={"views": [views.get(Path(n).stem) for n in jpgs[:MAX_IMAGES]]} if imgs else None,
        phi_removed=touched,
    )

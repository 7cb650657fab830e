"""Records already in UniMedVL's training JSONL schema.

Layout: `*.jsonl` files anywhere under the input folder; each line

    {"main_task_type", "sub_task_type", "modality", "dataset", "message": [{"from", "value"}],
     "input_img": [{"path", "height", "width"}], "output_img": [...],
     "split"?, "id"?, "license"?, "lang"?, "labels"?, "patient"?}

with image paths relative to the input folder. Every line is validated (task pair, modality, split,
roles, one `<image>` per input image); a line that fails goes to quarantine with the reason.
Image sizes are re-read from the files. A given split is kept; otherwise the split follows the
`patient` field, else the first input image, else the id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import images
from ..schema import SUB_TO_MAIN, Image, Quarantine, Record, Rejected
from .base import Context, guess_lang
from ._common import JSONL_MAX_LINE_BYTES, ImageCache, normalise_modality, parse_json, scrub_labels, text_field

NAME = "unimedvl_jsonl"
NEEDS_INPUT = True
LICENSE = "unknown (user-supplied data: check its terms before training on it)"
ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
REQUIRED = ("main_task_type", "sub_task_type", "modality", "dataset", "message")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jsonl") if p.is_file())


def read(root: Path, ctx: Context) -> Iterator[Record | Quarantine]:
    files = _files(root)
    if not files:
        yield ctx.reject(".", "missing_file", "no *.jsonl file under the input folder")
        return
    cache = ImageCache(root, ctx.cfg.max_side)
    for rel in files:
        lines, bad = ctx.attempt(rel, lambda rel=rel: list(_lines(root, rel)))
        if bad is not None:  # the file itself: missing, empty, unreadable, a symlink leaving root
            yield bad
            continue
        yield from ctx.each([(f"{rel}:{n}", None, (n, raw)) for n, raw in lines],
                            lambda p, rel=rel: _line(ctx, cache, rel, p[0], p[1], f"{rel}:{p[0]}"))


def _lines(root: Path, rel: str) -> Iterator[tuple[int, bytes | Rejected]]:
    """Non-blank lines; a line over JSONL_MAX_LINE_BYTES is skipped to its end and stands as a Rejected."""
    path = images.safe_path(root, rel)
    try:
        if path.stat().st_size == 0:
            raise Rejected("empty_file", f"{rel} is zero bytes long")
        with open(path, "rb") as fh:
            n = 0
            while raw := fh.readline(JSONL_MAX_LINE_BYTES + 1):
                n += 1
                if len(raw) > JSONL_MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                        pass
                    yield n, Rejected("malformed_json", f"line {n} of {rel} is longer than {JSONL_MAX_LINE_BYTES:,} bytes")
                elif raw.strip():
                    yield n, raw
    except OSError as e:
        raise Rejected("unreadable", f"could not read {rel}: {e.strerror or e}") from None


def _line(ctx: Context, cache: ImageCache, rel: str, n: int, raw: bytes | Rejected, item: str) -> Record | Quarantine:
    source_id = None
    try:
        if isinstance(raw, Rejected):
            raise raw
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise Rejected("invalid_encoding", f"line {n} of {rel} is not valid UTF-8") from None
        obj = parse_json(line, f"line {n} of {rel}")
        if not isinstance(obj, dict):
            raise Rejected("malformed_json", f"line {n} of {rel} is a JSON {type(obj).__name__}, not an object")
        source_id = text_field(obj, "id", required=False) or item
        return _record(ctx, cache, item, obj, source_id)
    except Exception as e:  # noqa: BLE001 - quarantined under the line's id once it is known
        return ctx.failed(item, e, source_id)


def count(root: Path, ctx: Context) -> int | None:
    try:
        return sum(sum(1 for _ in _lines(root, rel)) for rel in _files(root))
    except Exception:  # noqa: BLE001 - progress total only
        return None


def _images(cache: ImageCache, obj: dict[str, Any], key: str) -> tuple[list[Image], list[str], list[str]]:
    value = obj.get(key)
    if value is None:
        return [], [], []
    if not isinstance(value, list):
        raise Rejected("invalid_value", f"{key!r} should be a list of {{path, height, width}}")
    imgs, rels, touched = [], [], []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise Rejected("invalid_value", f"{key}[{i}] should be an object with a path")
        rel = text_field(entry, "path")
        img, t = cache.load(rel)
        imgs.append(img)
        rels.append(rel)
        touched += t
    return imgs, rels, touched


def _message(obj: dict[str, Any]) -> list[tuple[str, str]]:
    turns = obj.get("message")
    if not isinstance(turns, list) or not turns:
        raise Rejected("missing_field", "field 'message' is missing or not a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Rejected("invalid_value", f"message[{i}] should be an object {{from, value}}")
        role = str(turn.get("from", "")).strip().lower()
        if role not in ROLES:
            raise Rejected("invalid_value", f"message[{i}].from is {turn.get('from')!r}, not human or gpt")
        value = turn.get("value")
        if not isinstance(value, str):
            raise Rejected("missing_field" if value is None else "invalid_value",
                           f"message[{i}].value should be text")
        out.append((ROLES[role], value))
    return out


def _record(ctx: Context, cache: ImageCache, item: str, obj: dict[str, Any], source_id: str) -> Record:
    for name in REQUIRED:
        if name != "message":
            text_field(obj, name)
    message = _message(obj)
    sub = text_field(obj, "sub_task_type")
    main = text_field(obj, "main_task_type")
    if sub not in SUB_TO_MAIN:
        raise Rejected("invalid_value", f"sub_task_type {sub!r} is not one of {sorted(SUB_TO_MAIN)}")
    if main != SUB_TO_MAIN[sub]:
        raise Rejected("invalid_value", f"main_task_type {main!r} does not go with sub_task_type {sub!r} "
                       f"(expected {SUB_TO_MAIN[sub]!r})")
    raw_modality = text_field(obj, "modality")
    modality = normalise_modality(raw_modality)
    if modality is None:
        raise Rejected("invalid_value", f"modality {raw_modality!r} is not a known modality")
    split = None
    if raw_split := text_field(obj, "split", required=False):
        split = Context.normalise_split(raw_split)
        if split is None:
            raise Rejected("invalid_value", f"split {raw_split!r} is not train, val or test")
    labels = obj.get("labels")
    if labels is not None and not isinstance(labels, dict):
        raise Rejected("invalid_value", "labels should be a JSON object")
    inputs, in_rels, t_in = _images(cache, obj, "input_img")
    outputs, _, t_out = _images(cache, obj, "output_img")
    patient = text_field(obj, "patient", required=False) or (in_rels[0] if in_rels else source_id)
    text = " ".join(v for _, v in message)
    return ctx.record(
        source_id=source_id,
        patient=patient,
        sub_task=sub,
        modality=modality,
        license=text_field(obj, "license", required=False) or LICENSE,
        source_uri=item,
        message=message,
        input_img=inputs,
        output_img=outputs,
        split=split,
        lang=text_field(obj, "lang", required=False) or guess_lang(text),
        labels=None if labels is None else scrub_labels(labels),
        dataset=text_field(obj, "dataset"),
        phi_removed=t_in + t_out,
    )

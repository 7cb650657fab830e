"""The record every step reads and writes, and the one quarantine schema every step uses.

The record follows UniMedVL's training JSONL schema (`main_task_type`, `sub_task_type`, `modality`,
`dataset`, `input_img`, `output_img`, `message`) so data already in that schema ingests as-is, plus
the fields the platform needs for accounting and privacy (`id`, `split`, `license`, `source_uri`,
`patient_key`, `phi_removed`, `labels`, `lang`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

SPLITS = ("train", "val", "test")

# main task type -> its sub task types (DESIGN section 4).
TASKS: dict[str, tuple[str, ...]] = {
    "understanding": ("vqa_closed", "vqa_open", "report", "caption"),
    "generation": ("t2i",),
    "interleaved": ("edit", "counterfactual", "super_resolution", "cross_modal", "reconstruction"),
    # `report_structure`: report text re-cast as "findings -> impression" (no image).
    "text_only": ("text_only", "report_structure"),
}
SUB_TO_MAIN = {sub: main for main, subs in TASKS.items() for sub in subs}

# Normalised modality vocabulary. Adapters map whatever a source calls it onto these.
MODALITIES = (
    "xray",  # CR / DX / projection radiography
    "ct",
    "mri",
    "ultrasound",
    "nuclear",  # NM / PT
    "angiography",  # XA
    "fundus",  # OP, colour fundus photography
    "histology",  # SM, pathology, IHC
    "endoscopy",
    "dermatology",
    "oct",
    "other",
    "none",  # text-only records
)

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Image:
    """One embedded image: PNG bytes (8- or 16-bit grey, or 8-bit RGB) and its size."""

    png: bytes
    height: int
    width: int
    path: str = ""  # where it came from, relative to the input root (scrubbed of names/IDs)


@dataclass(frozen=True)
class Turn:
    role: str  # "human" | "gpt"
    value: str

    def to_json(self) -> dict[str, str]:
        return {"from": self.role, "value": self.value}


@dataclass
class Record:
    id: str
    dataset: str
    modality: str
    main_task_type: str
    sub_task_type: str
    split: str
    lang: str
    license: str
    source_uri: str
    patient_key: str
    message: list[Turn]
    input_img: list[Image] = field(default_factory=list)
    output_img: list[Image] = field(default_factory=list)
    phi_removed: list[str] = field(default_factory=list)
    labels: dict[str, Any] | None = None

    def problems(self) -> list[str]:
        """Structural problems that make a record unusable (empty list when it is well formed)."""
        out = []
        if self.split not in SPLITS:
            out.append(f"split {self.split!r} is not one of {SPLITS}")
        if SUB_TO_MAIN.get(self.sub_task_type) != self.main_task_type:
            out.append(f"task {self.main_task_type}/{self.sub_task_type} is not a known pair")
        if self.modality not in MODALITIES:
            out.append(f"modality {self.modality!r} is not one of {MODALITIES}")
        if not self.message:
            out.append("message has no turns")
        placeholders = sum(t.value.count(IMAGE_TOKEN) for t in self.message)
        if placeholders != len(self.input_img):
            out.append(f"{placeholders} {IMAGE_TOKEN} placeholders for {len(self.input_img)} input images")
        return out

    def labels_json(self) -> str | None:
        """The labels as stored (sorted keys, non-ASCII escaped), serialised once per record: the
        text check and the row both need them (re-serialised if `labels` is reassigned)."""
        cached = self.__dict__.get("_labels_json")
        if cached is None or cached[0] is not self.labels:
            text = None if self.labels is None else json.dumps(self.labels, sort_keys=True)
            cached = self.__dict__["_labels_json"] = (self.labels, text)
        return cached[1]

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset": self.dataset,
            "modality": self.modality,
            "main_task_type": self.main_task_type,
            "sub_task_type": self.sub_task_type,
            "split": self.split,
            "lang": self.lang,
            "license": self.license,
            "source_uri": self.source_uri,
            "patient_key": self.patient_key,
            "phi_removed": sorted(set(self.phi_removed)),
            "labels": self.labels_json(),
            "message": [t.to_json() for t in self.message],
            "input_img": [_image_row(i) for i in self.input_img],
            "output_img": [_image_row(i) for i in self.output_img],
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        return cls(
            id=row["id"],
            dataset=row["dataset"],
            modality=row["modality"],
            main_task_type=row["main_task_type"],
            sub_task_type=row["sub_task_type"],
            split=row["split"],
            lang=row["lang"],
            license=row["license"],
            source_uri=row["source_uri"],
            patient_key=row["patient_key"],
            phi_removed=list(row["phi_removed"] or []),
            labels=None if row["labels"] is None else json.loads(row["labels"]),
            message=[Turn(t["from"], t["value"]) for t in row["message"]],
            input_img=[Image(i["bytes"], i["height"], i["width"], i["path"]) for i in row["input_img"]],
            output_img=[Image(i["bytes"], i["height"], i["width"], i["path"]) for i in row["output_img"]],
        )


def _image_row(img: Image) -> dict[str, Any]:
    return {"path": img.path, "height": img.height, "width": img.width, "bytes": img.png}


IMAGE_TYPE = pa.struct(
    [("path", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("bytes", pa.binary())]
)
TURN_TYPE = pa.struct([("from", pa.string()), ("value", pa.string())])

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("modality", pa.string()),
        ("main_task_type", pa.string()),
        ("sub_task_type", pa.string()),
        ("split", pa.string()),
        ("lang", pa.string()),
        ("license", pa.string()),
        ("source_uri", pa.string()),
        ("patient_key", pa.string()),
        ("phi_removed", pa.list_(pa.string())),
        ("labels", pa.string()),  # JSON ground truth, null where the source has none
        ("message", pa.list_(TURN_TYPE)),
        ("input_img", pa.list_(IMAGE_TYPE)),
        ("output_img", pa.list_(IMAGE_TYPE)),
    ]
)


# --- quarantine -----------------------------------------------------------------------------------

# Stable reason codes. Every step uses these (and may add its own); tests and reports key on them.
REASONS = {
    "missing_file": "a file the source refers to does not exist",
    "empty_file": "the file is zero bytes long",
    "truncated_image": "the image file ends before its data does",
    "corrupt_image": "the image data is present but no decoder can make pixels of it",
    "not_an_image": "the file is not an image in any format we read, whatever its extension",
    "image_too_large": "the image has more pixels than the decompression-bomb cap",
    "no_pixel_data": "the DICOM object carries no pixel data",
    "unsupported_transfer_syntax": "no installed decoder handles this DICOM transfer syntax",
    "burned_in_annotation": "the DICOM says text is burned into the pixels (BurnedInAnnotation=YES)",
    "modality_not_allowed": "the modality is not on the clinical allow-list",
    "blank_image": "the image is (near-)constant: there is nothing to learn from (qc: std below qc.blank_std)",
    "synthetic_pixels": "a package test file whose header is real but whose pixels are a synthetic pattern",
    "duplicate_encoding": "the same image already came in through another transfer syntax",
    "malformed_json": "a JSON/JSONL document or line could not be parsed",
    "malformed_csv": "a CSV/TSV row could not be parsed",
    "invalid_encoding": "text is not valid UTF-8",
    "missing_field": "a required field is absent or empty",
    "invalid_value": "a field has a value outside its allowed set",
    "path_escape": "an image path points outside the input folder",
    "unreadable": "the file could not be read",
    "not_a_regular_file": "the path is a FIFO, device, socket or folder where a file was expected",
    "invalid_text": "text is not well-formed UTF-8 (e.g. a lone surrogate escape)",
    "decode_error": "reading, decoding or building the item failed (the exception class is in the detail)",
    "oversized": "the decoded image would be larger than ingest.max_decoded_bytes",
    "invalid_base64": "an image embedded as base64 text (a TSV cell) is not valid base64",
}
# Codes the qc step adds (src/unimedvl/qc names which check or expectation gives which code).
QC_REASONS: dict[str, str] = {
    # Great Expectations, row level (expectations.py names which expectation gives which code)
    "malformed_turns": "message turns are not human/gpt alternating, starting with the human",
    "placeholder_mismatch": "the number of <image> placeholders differs from the number of input images",
    "image_too_small": "an image's shorter side is below qc.min_side",
    "image_too_big": "an image's longer side is above qc.max_side",
    "empty_answer": "a VQA record has an empty answer",
    "caption_length": "a caption/report is outside qc.caption_min_chars..caption_max_chars",
    "duplicate_id": "two records share one id",
    # image checks
    "unsupported_bit_depth": "the image is not 8-bit grey, 16-bit grey or 8-bit RGB",
    "size_mismatch": "the decoded image size differs from the size the record declares",
    "saturated_image": "too many pixels sit at the top of the range (qc.saturated_fraction)",
    "extreme_aspect_ratio": "the image is longer than qc.max_aspect times its width (or the reverse)",
    # text checks
    "text_length": "a turn is blank or longer than qc.max_turn_chars",
    "residual_phi": "text still holds a value the ingest scrubber detects (name, date, phone, ID, address...)",
    "mojibake": "text holds replacement/control characters or UTF-8 decoded as Latin-1",
    "language_mismatch": "the language tag does not match the script of the text",
    # duplicates, leakage, alignment
    "duplicate_record": "same image(s), task and text as an earlier record of the same split",
    "split_leakage": "an image (near-)duplicates an image of a later split (val or test)",
    "text_leakage": "the report text near-duplicates a report text of a later split (val or test)",
    "low_alignment": "image-text alignment score below the kept top fraction",
}
REASONS.update(QC_REASONS)


@dataclass(frozen=True)
class Quarantine:
    """One rejected item. `item` is what was read, relative to the input root."""

    step: str
    source: str
    item: str
    reason: str
    detail: str
    id: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Quarantine:
        return cls(**json.loads(line))


def is_utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (no lone surrogates); linear, no pattern engine involved."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, so it always encodes as UTF-8."""
    return text if is_utf8(text) else text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def text_problem(rec: Record) -> str | None:
    """Why `rec` holds text that is not well-formed UTF-8 (None when every string encodes)."""
    strings = [rec.id, rec.dataset, rec.license, rec.source_uri, rec.lang, *rec.phi_removed,
               *(t.value for t in rec.message), *(i.path for i in rec.input_img + rec.output_img)]
    # The stored labels are ASCII JSON, where every surrogate (paired or lone) reads `\udXXX`:
    # without one the labels are clean; with one the unescaped text decides.
    labels = rec.labels_json()
    if labels is not None and "\\ud" in labels:
        strings.append(json.dumps(rec.labels, ensure_ascii=False))
    if not is_utf8("\x00".join(strings)):
        return "a text field holds a lone surrogate (not well-formed UTF-8)"
    return None


class Rejected(Exception):
    """Raised inside an adapter for an item that must go to quarantine (never a traceback)."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

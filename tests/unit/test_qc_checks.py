"""QC image and text checks on crafted records (and the record builders the other QC tests use)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from unimedvl.config import QCConfig
from unimedvl.data.images import encode_png
from unimedvl.data.schema import REASONS, Image, Record, Turn
from unimedvl.qc import QC_REASONS
from unimedvl.qc.checks import check_batch, check_row, script_of

CFG = QCConfig()


# --- builders (imported by the other QC tests) ---------------------------------------------------


def phantom(seed: int, size: int = 128) -> np.ndarray:
    """A smooth, textured 8-bit 'scan': dark background, an elliptic body, seeded blobs inside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ax, ay, ox, oy = rng.uniform(0.3, 0.45), rng.uniform(0.3, 0.47), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)
    body = ((xx - 0.5 - ox) / ax) ** 2 + ((yy - 0.5 - oy) / ay) ** 2 < 1
    img = np.where(body, 60.0, 0.0)
    for _ in range(9):
        cx, cy, r, amp = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.04, 0.14), rng.uniform(-60, 190)
        img += amp * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))) * body
    img += rng.normal(0, 3, img.shape) * body
    return np.clip(img, 0, 255).astype(np.uint8)


def near_copy(arr: np.ndarray) -> np.ndarray:
    """Resized to 75%, shifted by 2 px and JPEG re-encoded: what a second source might ship."""
    h, w = arr.shape
    shifted = np.pad(arr, ((2, 0), (2, 0)), mode="edge")[:h, :w]
    small = PILImage.fromarray(shifted).resize((w * 3 // 4, h * 3 // 4), PILImage.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=75)
    return np.asarray(PILImage.open(buf))


def png_image(arr: np.ndarray, path: str = "img.png") -> Image:
    return encode_png(arr, path=path)


def make_record(
    rid: str,
    *,
    split: str = "train",
    sub: str = "caption",
    modality: str = "xray",
    images: list[np.ndarray] | None = None,
    outputs: list[np.ndarray] | None = None,
    question: str = "Write a short caption for this image.",
    answer: str = "Frontal chest radiograph without acute findings.",
    dataset: str = "crafted",
    lang: str = "en",
    patient: str | None = None,
) -> Record:
    main = {"caption": "understanding", "vqa_open": "understanding", "vqa_closed": "understanding",
            "report": "understanding", "t2i": "generation", "counterfactual": "interleaved",
            "text_only": "text_only", "report_structure": "text_only"}[sub]
    imgs = [png_image(a, f"{rid}-{k}.png") for k, a in enumerate(images or [])]
    outs = [png_image(a, f"{rid}-out{k}.png") for k, a in enumerate(outputs or [])]
    q = "<image>\n" * len(imgs) + question
    return Record(id=rid, dataset=dataset, modality=modality, main_task_type=main, sub_task_type=sub, split=split,
                  lang=lang, license="CC0", source_uri=f"crafted/{rid}", patient_key=patient or f"pt-{rid}",
                  message=[Turn("human", q), Turn("gpt", answer)], input_img=imgs, output_img=outs)


def row_of(rec: Record) -> dict:
    return rec.to_row()


def reason_of(rec: Record, cfg: QCConfig = CFG) -> str | None:
    return check_row(row_of(rec), cfg)["check_reason"]


# --- tests ---------------------------------------------------------------------------------------


def test_reasons_registered_in_the_one_schema():
    assert set(QC_REASONS) <= set(REASONS)


def test_good_record_passes_and_gets_hashes():
    out = check_row(row_of(make_record("a", images=[phantom(1)])), CFG)
    assert out["check_reason"] is None
    assert len(out["img_pixel_hash"]) == 1 and out["img_phash"][0] != 0 and len(out["img_thumb"][0]) == 32 * 32


def test_dark_background_is_not_blank_but_a_flat_frame_is():
    dark = np.zeros((128, 128), np.uint8)
    dark[50:70, 50:70] = 120  # anatomy filling 2.4% of a black frame (an MNI edge slice is like this)
    assert reason_of(make_record("a", images=[dark])) is None
    flat = np.full((128, 128), 40, np.uint8) + np.random.default_rng(0).integers(0, 2, (128, 128)).astype(np.uint8)
    assert reason_of(make_record("b", images=[flat])) == "blank_image"
    assert reason_of(make_record("c", images=[np.zeros((64, 64), np.uint16)])) == "blank_image"


def test_saturated_and_aspect_ratio():
    sat = phantom(2)
    sat[:100] = 255
    assert reason_of(make_record("a", images=[sat])) == "saturated_image"
    strip = np.tile(phantom(3)[:, 64:65], (1, 600))
    assert reason_of(make_record("b", images=[strip])) == "extreme_aspect_ratio"


def test_bit_depth_corrupt_and_size_mismatch():
    rgba = io.BytesIO()
    PILImage.fromarray(np.dstack([phantom(4)] * 4)).save(rgba, format="PNG")
    rec = make_record("a", images=[phantom(4)])
    rec.input_img[0] = Image(rgba.getvalue(), 128, 128, "x.png")
    assert reason_of(rec) == "unsupported_bit_depth"
    rec.input_img[0] = Image(b"\x89PNG\r\n\x1a\nnot really", 128, 128, "x.png")
    assert reason_of(rec) == "corrupt_image"
    good = png_image(phantom(4))
    rec.input_img[0] = Image(good.png, 100, 128, "x.png")
    assert reason_of(rec) == "size_mismatch"
    # 16-bit grey is a supported depth
    assert reason_of(make_record("b", images=[phantom(5).astype(np.uint16) * 257])) is None


def test_output_image_is_checked_too():
    rec = make_record("a", sub="counterfactual", images=[phantom(6)], outputs=[np.zeros((128, 128), np.uint8)],
                      question="Remove the nodule.", answer="Here is the edited image.")
    out = check_row(row_of(rec), CFG)
    assert out["check_reason"] == "blank_image" and "output image" in out["check_detail"]


@pytest.mark.parametrize(
    ("answer", "lang", "reason"),
    [
        ("Nodule first seen on 12/03/2021 in the right upper lobe.", "en", "residual_phi"),
        ("Call 555-123-4567 for the results of this study.", "en", "residual_phi"),
        ("Reviewed by Dr. Smith, no acute abnormality.", "en", "residual_phi"),
        ("Patient MRN: 12345678 has a small effusion.", "en", "residual_phi"),
        ("LesiÃ³n hipodensa en el lÃ³bulo derecho.", "es", "mojibake"),
        ("Small effusion \ufffd noted on the left.", "en", "mojibake"),
        ("The lungs are clear without effusion.", "zh", "language_mismatch"),
        ("右肺上叶可见结节，大小约一厘米。", "en", "language_mismatch"),
        ("右肺上叶可见结节，大小约一厘米。", "zh", None),
        ("   ", "en", "text_length"),
        ("Normal heart size [DATE], [NAME] reviewed.", "en", None),  # what ingest's scrubber leaves
    ],
)
def test_text_checks(answer, lang, reason):
    assert reason_of(make_record("a", images=[phantom(7)], answer=answer, lang=lang)) == reason


def test_too_long_turn():
    cfg = QCConfig(max_turn_chars=50)
    assert reason_of(make_record("a", images=[phantom(8)], answer="x " * 40), cfg) == "text_length"


def test_script_of():
    assert script_of("The lungs are clear") == "latin"
    assert script_of("Лёгкие без очаговых изменений") == "cyrillic"
    assert script_of("ok") is None


def test_metadata_columns_for_ge():
    t = check_batch(
        __import__("pyarrow").Table.from_pylist(
            [row_of(make_record("a", sub="vqa_open", images=[phantom(9)], answer="")),
             row_of(make_record("b", sub="report", images=[phantom(9)], answer="Short"))]
        ),
        CFG,
    ).to_pylist()
    assert t[0]["vqa_answer_len"] == 0 and t[0]["caption_len"] is None
    assert t[1]["caption_len"] == 5 and t[1]["turn_roles"] == "human,gpt"
    assert t[1]["n_image_tokens"] == t[1]["n_input_img"] == 1 and t[1]["img_min_side"] == 128

"""The per-item guard's vocabulary: each failure class maps to its stable quarantine reason (reports
and dashboards group by it), quoted paths in a detail are pseudonymised or hidden, the language tag's
script ranges, and `Rejected`'s message. Mutation testing found these reasons unpinned."""

from __future__ import annotations

import errno

from unimedvl.config import IngestConfig
from unimedvl.data.privacy import Keyed
from unimedvl.data.schema import Rejected, clean_text
from unimedvl.data.sources.base import Context, classify_failure, guess_lang


def test_each_failure_class_has_its_reason():
    assert classify_failure(Rejected("blank_image", "3 px")) == ("blank_image", "3 px")
    assert classify_failure(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")) == (
        "invalid_text", "text is not well-formed UTF-8 (UnicodeDecodeError)")
    assert classify_failure(RecursionError()) == ("malformed_json", "the value is nested too deeply to be read (RecursionError)")
    assert classify_failure(MemoryError()) == ("oversized", "the item needs more memory than is available (MemoryError)")
    assert classify_failure(OSError(errno.ENOENT, "No such file or directory")) == (
        "unreadable", "the file could not be read: No such file or directory (FileNotFoundError)")
    assert classify_failure(OSError(errno.ENAMETOOLONG, "x")) == ("unreadable", "the file could not be read: file name too long (OSError)")
    assert classify_failure(OSError()) == ("unreadable", "the file could not be read: I/O error (OSError)")
    reason, detail = classify_failure(ValueError("bad\n  header   value"))
    assert reason == "decode_error" and detail == "the item could not be processed (ValueError: bad header value)"
    _, long = classify_failure(ValueError("x" * 500))
    assert long.endswith("...)") and len(long) < 220


def test_quoted_paths_in_a_detail_are_pseudonymised_or_hidden():
    ctx = Context("src", Keyed(b"k"), IngestConfig())
    for absolute in ("/home/jsmith/x.png", "C:\\scans\\x.png", "~/x.png", "\\\\share\\x.png"):
        q = ctx.reject("item", "missing_file", f"image file '{absolute}' does not exist")
        assert q.detail == "image file '<an absolute path>' does not exist", (absolute, q.detail)
    q = ctx.reject("item", "missing_file", "image file 'Smith_John\\x.png' does not exist")
    assert "Smith" not in q.detail and "'p-" in q.detail, q.detail  # a relative path keeps its shape
    q = ctx.reject("item", "missing_file", "image file 'Smith_John\\scan' does not exist")  # no dot, a backslash
    assert "Smith" not in q.detail and "'p-" in q.detail, q.detail
    q = ctx.reject("item", "missing_file", "image file 'plain' does not exist")
    assert q.detail == "image file 'plain' does not exist"
    # a bare name (no separator, no dot) and a bare ID are pseudonymised too; one character and a drive
    # letter alone are read safely
    for bare in ("Smith_John", "12345678"):
        q = ctx.reject("item", "missing_file", f"image file '{bare}' does not exist")
        assert bare not in q.detail and q.detail.startswith("image file 'p-"), q.detail
    assert ctx.reject("item", "bad", "value 'x' is bad").detail == "value 'x' is bad"
    assert ctx.reject("item", "bad", "drive 'C:' is gone").detail == "drive '<an absolute path>' is gone"


def test_a_failure_detail_is_one_line_of_at_most_160_characters():
    from unimedvl.data.sources.base import _first_line

    assert _first_line(ValueError("x" * 160)) == "x" * 160
    assert _first_line(ValueError("x" * 161)) == "x" * 157 + "..."
    assert _first_line(ValueError("a\n  b\tc")) == "a b c"


def test_language_tag_by_script():
    assert guess_lang("肺部清晰") == "zh" and guess_lang("Легкие чистые") == "ru" and guess_lang("Lungs clear") == "en"
    assert guess_lang("\u04ff") == "ru" and guess_lang("\u9fff") == "zh"  # the ranges' last characters
    assert guess_lang("\u4e00") == "zh" and guess_lang("\u0400") == "ru"  # and first ones ("one" is U+4E00)


def test_rejected_carries_reason_and_detail():
    e = Rejected("blank_image", "3 px")
    assert str(e) == "blank_image: 3 px" and (e.reason, e.detail) == ("blank_image", "3 px")
    assert clean_text("ok \udc80") == "ok " + "\ufffd" * 3  # a lone surrogate's three bytes become U+FFFD
    assert clean_text("fine") == "fine"


def _build(ctx, **over):
    import numpy as np

    from unimedvl.data.images import encode_png
    from unimedvl.data.schema import Image

    kw = dict(source_id="s1", patient="MRN1", sub_task="caption", modality="xray", license="CC0-1.0",
              source_uri="src/Smith_John/report.txt", message=[("human", "<image>\nDescribe."), ("gpt", "Clear lungs.")],
              input_img=[Image(png=encode_png(np.full((8, 8), 9, np.uint8)), height=8, width=8, path="Smith_John/x.png")])
    kw.update(over)
    return ctx.record(**kw)


def test_record_pseudonymises_image_paths_and_names_label_categories():
    import pytest

    from unimedvl.data.privacy import component_token

    k = Keyed(b"k")
    ctx = Context("src", k, IngestConfig())
    rec = _build(ctx, labels={"note": "Findings discussed with Dr. Brown."})
    # The keyed pseudonym (the same folder always maps to the same token), not a bare placeholder.
    assert rec.input_img[0].path == component_token(k, "Smith_John") + "/x.png"
    assert rec.labels == {"note": "Findings discussed with [NAME]."}
    assert "labels:name" in rec.phi_removed and "text:name" not in rec.phi_removed
    with pytest.raises(Rejected, match=r"^invalid_value: task 'nope' is not one of \["):
        _build(Context("src", k, IngestConfig()), sub_task="nope")
    with pytest.raises(Rejected, match=r"^missing_field: the answer text is empty$"):
        _build(Context("src", k, IngestConfig()), message=[("human", "<image>\nDescribe."), ("gpt", " ")])


def test_a_failed_item_keeps_its_keyed_record_id():
    """The quarantine line of an item that raised names the record it would have been (keyed), so a
    re-export can be matched to it; an item without a source id has none."""
    ctx = Context("src", Keyed(b"k"), IngestConfig())
    q = ctx.failed("rows.jsonl:7", ValueError("bad"), "row-7")
    assert q.id == Keyed(b"k").record_id("src", "row-7") and q.id is not None
    assert ctx.failed("rows.jsonl:8", ValueError("bad")).id is None
    assert q.reason == "decode_error" and q.item == "rows.jsonl:7"

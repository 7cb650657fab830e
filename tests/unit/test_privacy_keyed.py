"""The keyed derivations pinned against an independent HMAC-SHA256 computation (a changed purpose
string, length, modulus or offset changes every pseudonym, UID and date shift already written, so
re-ingesting would no longer link to earlier data), the key file's creation, and the JSON scrubber's
paths that the record adapters rarely take (unpicklable and very large nested values)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

from unimedvl.data.privacy import Keyed, component_token, load_key, scrub_json

KEY = b"pinned-key"


def _ref(*parts: str) -> bytes:
    return hmac.new(KEY, "\x1f".join(parts).encode(), hashlib.sha256).digest()


def test_keyed_derivations_match_the_documented_hmac():
    k = Keyed(KEY)
    assert k.token("a", "b") == _ref("a", "b").hex()[:16]
    assert k.record_id("src", "42") == _ref("record", "src", "42").hex()[:24]
    assert k.patient_key("src", "MRN7") == "pt-" + _ref("patient", "src", "MRN7").hex()[:16]
    assert k.uid("1.2.3") == "2.25." + str(int.from_bytes(_ref("uid", "1.2.3")[:16], "big"))
    for patient in ("MRN7", "MRN8", "someone else"):
        want = -(1 + int.from_bytes(_ref("dateshift", patient)[:4], "big") % 3650)
        assert k.date_shift_days(patient) == want
    assert k.fraction("x", "y") == int.from_bytes(_ref("fraction", "x", "y")[:8], "big") / 2**64


def test_date_shifts_cover_one_to_3650_days_back():
    k = Keyed(KEY)
    shifts = [k.date_shift_days(f"p{i}") for i in range(20000)]
    assert min(shifts) == -3650 and max(shifts) == -1  # both ends are reached, nothing beyond


def test_component_token_is_twelve_letters_after_the_kind():
    k = Keyed(KEY)
    tok = component_token(k, "Smith_John", "d")
    letters = str.maketrans("0123456789abcdef", "ghijklmnopqrstuv")
    assert tok == "d-" + _ref("path", "Smith_John").hex()[:12].translate(letters)
    assert len(tok) == 14 and tok[2:].isalpha()
    assert component_token(k, "Smith_John").startswith("p-")


def test_load_key_creates_missing_folders_and_a_new_file_in_an_existing_one(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b" / "secret.key"
    monkeypatch.delenv("UNIMEDVL_SECRET_KEY", raising=False)
    monkeypatch.setenv("UNIMEDVL_SECRET_FILE", str(deep))
    key = load_key()
    assert deep.read_text().strip().encode() == key and len(key) == 64 and int(key, 16) >= 0
    assert stat.S_IMODE(os.stat(deep).st_mode) == 0o600
    beside = tmp_path / "a" / "b" / "other.key"  # the folder exists now: still fine
    monkeypatch.setenv("UNIMEDVL_SECRET_FILE", str(beside))
    assert load_key() != key and beside.exists()


def test_scrub_json_scrubs_unpicklable_and_very_large_nested_values():
    phi = "Findings discussed with Dr. Brown."
    unpicklable = {"meta": [phi, lambda: None]}  # pickle refuses the lambda: the plain walk decides
    out, touched = scrub_json(unpicklable)
    assert out["meta"][0] == "Findings discussed with [NAME]." and "text:name" in touched
    large = {"terms": [f"term {i}" for i in range(3000)] + [phi]}  # pickles to more than 16 KB
    out, touched = scrub_json(large)
    assert out["terms"][-1] == "Findings discussed with [NAME]." and out["terms"][:3] == ["term 0", "term 1", "term 2"]
    assert "text:name" in touched
    small = {"terms": ["term 1", phi]}  # the memoised path gives the same answer, in a fresh copy
    first, t1 = scrub_json(small)
    second, t2 = scrub_json(small)
    assert first == second == {"terms": ["term 1", "Findings discussed with [NAME]."]} and t1 == t2 == ["text:name"]
    assert first["terms"] is not second["terms"]

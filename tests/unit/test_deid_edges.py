"""The shortest forms each text pattern must still catch: 6-digit record numbers and dates with
two-digit years. A pattern that needs one more digit, or drops the two-digit year, lets these through
while the longer forms in the corpus tests still pass."""

from __future__ import annotations

import pytest

from unimedvl.data.privacy import scrub_text


@pytest.mark.parametrize(("text", "value", "category"), [
    ("Accession 482913 was reviewed.", "482913", "text:id"),
    ("Record 604217 was closed.", "604217", "text:id"),
    ("Seen on 3/4/19 for follow-up.", "3/4/19", "text:date"),
    ("Seen on 03.04.19 again.", "03.04.19", "text:date"),
    ("Study of 12-05-19 compared.", "12-05-19", "text:date"),
])
def test_shortest_forms_are_removed(text, value, category):
    out, touched = scrub_text(text, mode="drop")
    assert value not in out and category in touched, (out, touched)
    assert out.rstrip(".").split()[-1] in text  # the sentence around the value survives


@pytest.mark.parametrize("text", ["Dictated by Dr. Ng.", "Seen by Dr. Ng today.", "Findings discussed with Dr. Wu. Heart size is normal."])
def test_a_short_surname_after_a_title_is_removed(text):
    """A two-letter surname that is also a clinical abbreviation ("NG" tube) is still a name after a title."""
    out, touched = scrub_text(text)
    assert "Ng" not in out and "Wu" not in out and "text:name" in touched, out
    assert out.split()[0] in text  # the words around it survive


@pytest.mark.parametrize(("value", "phone"), [
    ("555-0199", True), ("55-0199", False),  # 7 digits at least
    ("+49 123 4567 8901 234", True), ("+49 1234 5678 9012 345", False),  # 16 at most
    ("555-0199x907", True), ("555-0199 ext. 12", True),
    # an extension does not count towards the 7: six digits and an extension are no phone number
    ("12-3456x789", False), ("12-3456 ext 789", False), ("12-3456 EXT. 789", False), ("123-45-6 ext 7", False),
    # a list of decimals is not one, in parentheses too
    ("0.5 1.2 3.4 5.6", False), ("(0.5) (1.2) (3.4) (5.6)", False), ("555.0199.123", True),
])
def test_what_counts_as_a_phone_number(value, phone):
    from unimedvl.data.deid import _plausible_phone

    assert _plausible_phone(value) is phone


@pytest.mark.parametrize(("text", "eponym"), [
    ("Parkinson's disease", True), ("Parkinson’s disease", True), ("Graves' disease", True), ("Graves’ disease", True),
    ("Parkinson disease.", True), ("Parkinson disease\nwas noted", True), ("Parkinson\ndisease", True),
    ("Parkinson Chiari", True),  # another eponym follows
    ("Parkinson the disease", False), ("Parkinson", False), ("Parkinson said", False),
])
def test_when_a_surname_is_used_as_an_eponym(text, eponym):
    from unimedvl.data.deid import _eponym_use

    assert _eponym_use(text, len("Parkinson") if text.startswith("Parkinson") else len("Graves")) is eponym


def test_an_eponym_before_a_line_break_is_kept_and_a_name_is_not():
    """Reports wrap lines anywhere: "Parkinson" then a newline then "disease" is still the disease."""
    assert scrub_text("History of Parkinson disease\nwas noted.")[0] == "History of Parkinson disease\nwas noted."
    assert scrub_text("History of Parkinson\ndisease.")[0] == "History of Parkinson\ndisease."
    assert "Parkinson" not in scrub_text("Seen by Dr. Parkinson today.")[0]


@pytest.mark.parametrize(("text", "start", "stop"), [
    ("patient John Smith", 0, 8), ("pt John", 0, 3),  # a lower-case cue ends at the first capital
    ("Patient John", 0, 7), ("Pat John", 0, 3),  # a capitalised one at its space
    ("patient", 0, 7), ("Patient", 0, 7),  # the match's end bounds both
    ("so patient John", 3, 11),
])
def test_where_a_name_cue_stops(text, start, stop):
    from unimedvl.data.deid import _cue_end

    assert _cue_end(text, start, len(text)) == stop


def test_a_sentence_ends_at_the_text_end_or_white_space():
    from unimedvl.data.deid import _sentence_end

    assert _sentence_end("Smith.", 6) and _sentence_end("Smith. Next", 6) and not _sentence_end("Smith.jr", 6)

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

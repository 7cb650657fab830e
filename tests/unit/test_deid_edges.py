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

"""Free-text de-identification: the one detector and scrubber for every text value that leaves
ingest (message turns, labels, paths, quarantine lines, log lines), QC's residual-PHI check and the
server's door.

How it works: one combined RE2 pattern (linear time, one pass; `patterns.linear`) finds the
structural identifiers (e-mail, URL, SSN, phone and fax numbers in national and international
form, dates more specific than the year, ages over 89, MRN / account / accession / serial numbers,
street addresses, ZIP and postcodes, institution names, and person names announced by a title, an
initial, a degree or a context such as "discussed with"); then one pass over the capitalised tokens
finds bare person names ("John Smith", "Smith, John", "SMITH, JOHN") with the US Census 1990 name
lists (the `names` package: 5,494 given names, 88,799 surnames), minus every word of the clinical
vocabulary (`deid_data/clinical_words.txt`, the words of half of the packaged IU reports) and
minus medical eponyms followed by what they name (Hodgkin lymphoma, Parkinson disease, Crohn's,
Bell's palsy, Wilms tumor...), so anatomy, findings and drug names survive.

Why this and not a library (measured by `benchmarks/bench_deid.py` on the same corpus):
presidio-analyzer's recognizers are the same kind of regular expressions plus spaCy NER, and no
spaCy model can be installed here, so without NER it finds no bare names; its phone recognizer
(`phonenumbers`) needs a region per number. philter-lite's name filter needs NLTK's POS tagger
data, which cannot be downloaded. pyap finds US/CA/GB street addresses only and is ~30x slower
per KB. Measured on the held-out PHI corpus: this detector 0.997 minimum per-category recall at
~0.6 ms per KB; presidio's recognizers 0.15 on the five categories they cover, phonenumbers 0.67
on phones, pyap 0.08 on addresses. It never backtracks (a 1 MB token costs ~16x a 64 KB one).

Modes: `scrub_text(text)` replaces each value by its category placeholder (`[NAME]`, `[DATE]`...);
`scrub_text(text, mode="drop")` removes the value (the serving helper's door, where no pseudonym
key exists). Neither needs a key: text never carries a pseudonym, only paths do
(`privacy.scrub_path`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .deid_rules import (  # noqa: F401 - PATTERNS is re-exported for the engine test and the bench
    CHUNK,
    PATTERNS,
    EPONYMS,
    EPONYM_HEADS,
    _CASE_SENSITIVE_GATES,
    _DEGREE,
    _DIGIT,
    _EACH,
    _GATE,
    _GATE_PATTERNS,
    _NAMEY_VOCAB,
    _NOT_NAMES,
    _STOPWORDS,
    _TITLE_WORDS,
    _TOKENS,
    _WORD_AFTER,
    _WORD_BEFORE,
    _words,
)

PLACEHOLDER = {
    "name": "[NAME]", "date": "[DATE]", "age": "[AGE]", "phone": "[PHONE]", "email": "[EMAIL]",
    "url": "[URL]", "ssn": "[ID]", "id": "[ID]", "serial": "[ID]", "address": "[ADDRESS]",
    "zip": "[ADDRESS]", "institution": "[INSTITUTION]",
}
CATEGORIES = tuple(PLACEHOLDER)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    category: str


# --- detection ----------------------------------------------------------------------------------------


def detect(text: str) -> list[Span]:
    """Every PHI span in `text`, sorted and non-overlapping."""
    if len(text) <= CHUNK:
        return list(_detect_short(text))  # templated questions and labels repeat: one dict lookup
    if not _GATE.search(text):
        return []
    # Long text in chunks cut at whitespace, each read with an overlap so a value across a cut is
    # seen whole: keeps every pass bounded (the RE2 wrapper's offset mapping is not free per match).
    spans: list[Span] = []
    start = 0
    while start < len(text):
        cut = min(len(text), start + CHUNK)
        if cut < len(text):
            ws = text.rfind(" ", start + CHUNK // 2, cut)
            cut = ws if ws > start else cut
        window = text[start:min(len(text), cut + 200)]
        for sp in _detect_cached(window):
            if sp.start + start < cut or cut == len(text):
                spans.append(Span(sp.start + start, sp.end + start, sp.category))
        start = cut
    return _merge(spans)


@functools.lru_cache(maxsize=1 << 17)
def _detect_short(text: str) -> tuple[Span, ...]:
    if not text or not _GATE.search(text):
        return ()
    return _detect_cached(text)


@functools.lru_cache(maxsize=1 << 12)
def _detect_cached(text: str) -> tuple[Span, ...]:
    first, last, vocab = _words()
    spans: list[Span] = []
    has_digit = _DIGIT.search(text) is not None
    low = text.lower()
    for cat, needs_digit, pattern in _EACH:
        if needs_digit and not has_digit:
            continue
        gate = _GATE_PATTERNS.get(cat)
        if gate is not None and not gate.search(text if cat in _CASE_SENSITIVE_GATES else low):
            continue  # a substring every form of this category contains is absent: skip the pass
        for m in pattern.finditer(text):
            span = _classify(text, m.start(), m.end(), m.group(), cat, first, last, vocab)
            if span is not None:
                spans.append(span)
    spans += _bare_names(text, spans, first, last, vocab)
    return tuple(_merge(_extend_names(text, spans, vocab)))


def _extend_names(text: str, spans: list[Span], vocab: frozenset[str]) -> list[Span]:
    """Grow each name span over an adjacent capitalised word that is not a clinical word
    ("Othmar" before "M. Haase", a second surname after "Dr. Garcia")."""
    out = []
    for sp in spans:
        if sp.category == "name":
            start, end = sp.start, sp.end
            m = _WORD_BEFORE.search(text[max(0, start - 40):start])
            if m and _is_name_word(m.group(1), vocab) and m.group(1).lower() not in _TITLE_WORDS:
                start -= len(m.group(0))
            m = _WORD_AFTER.match(text[end:end + 40])
            if m and _is_name_word(m.group(1), vocab) and m.group(1).lower() not in _STOPWORDS:
                end += len(m.group(0))
            sp = Span(start, end, "name")
        out.append(sp)
    return out


def _classify(text: str, start: int, end: int, found: str, cat: str, first, last, vocab) -> Span | None:
    """The span a category's match stands for after its checks (None: not PHI after all)."""
    if cat.startswith("name"):
        return _name_span(text, start, end, cat, first, last, vocab)
    if cat == "address_generic":
        if not all(_is_name_word(w, vocab) for w in found.split()[1:4] if w[:1].isupper()):
            return None
        cat = "address"
    if cat == "phone":
        if not _plausible_phone(found):
            return None
        while start < end and not (text[start].isdigit() or text[start] in "+("):
            start += 1  # "fax 555-0199": the label stays, the number goes
    return Span(start, end, cat)


def _plausible_phone(value: str) -> bool:
    body = value.lower().rstrip("0123456789").rstrip(" .")
    if body.endswith(("x", "ext")) and body.rstrip("xet. ")[-1:].isdigit():
        value = body.rstrip("xet. ")  # "555-0199x907": the extension does not count
    digits = sum(ch.isdigit() for ch in value)
    if not 7 <= digits <= 16:
        return False
    # "0.5 1.2 3.4" is a list of decimals, not a phone number
    parts = value.replace("(", " ").replace(")", " ").split()
    return not any("." in p and len(p.split(".")[-1]) == 1 for p in parts)


def _is_name_word(tok: str, vocab: frozenset[str]) -> bool:
    low = tok.lower().rstrip(".").removesuffix("'s").removesuffix("’s")
    if low in _NOT_NAMES:
        return False
    return len(low) <= 1 or low not in vocab or low in _NAMEY_VOCAB






def _name_span(text: str, start: int, end: int, cat: str, first, last, vocab) -> Span | None:
    """Trim a title/cue/degree/initial match to its name tokens; None when no name remains."""
    toks = _cap_tokens(text[start:end], start)
    if cat == "name_title":
        toks = toks[1:] if toks and not toks[0][2].rstrip(".").lower() in ("m",) else toks
        head = start
    elif cat == "name_cue":
        head = None
        toks = [t for t in toks if t[0] >= start]  # the cue word may be capitalised ("Patient")
        cue_end = _cue_end(text, start, end)
        toks = [t for t in toks if t[0] >= cue_end]
    elif cat == "name_degree":
        head = None
        degree = toks[-1] if toks else None
        toks = toks[:-1] if degree else toks
        while toks and not _is_name_word(toks[0][2], vocab):
            toks = toks[1:]
        if not toks:
            return None
        return Span(toks[0][0], end, "name")
    else:  # initial(s) + surname
        head = None
        if not toks or len(toks[-1][2]) < 2:
            return None
    # keep the leading run of name-like tokens (a title inside a cue match belongs to the name)
    kept = []
    for t in toks:
        word = t[2]
        if not kept and word.rstrip(".").lower() in _TITLE_WORDS:
            kept.append(t)
            continue
        if len(word.rstrip(".")) > 1 and not _is_name_word(word, vocab):
            w = word.lower().rstrip(".")
            after_title = cat == "name_title" or bool(kept and kept[0][2].rstrip(".").lower() in _TITLE_WORDS)
            if not (after_title and w not in _NOT_NAMES and (w in last or w in first)):
                break  # after a title a surname that is also a word ("Mrs. Felix Ring", "Dr. Ng") is still a name
        if word.rstrip(".").lower() in EPONYMS and _eponym_use(text, t[1]):
            break
        kept.append(t)
        stop = t[1] + (0 if word.endswith(".") else 1)
        if len(word.rstrip(".")) > 1 and text[stop - 1:stop] == "." and _sentence_end(text, stop):
            break  # "Dr. Brown. Heart size..." - a full stop after a word (not an initial) ends the name
    while kept and kept[-1][2].endswith(".") and len(kept[-1][2]) > 2 and _sentence_end(text, kept[-1][1]):
        kept[-1] = (kept[-1][0], kept[-1][1] - 1, kept[-1][2][:-1])  # "Dr. Smith." -> the full stop stays
    if cat == "name_initial" and (len(kept) < 2 or all(len(k[2].rstrip(".")) <= 1 for k in kept)):
        return None
    if not kept or all(len(k[2].rstrip(".")) <= 1 for k in kept) and cat != "name_title":
        return None
    if not kept:
        return None
    stop = kept[-1][1]
    if m := _DEGREE.match(text, stop):
        stop = m.end()
    return Span(head if head is not None else kept[0][0], stop, "name")


def _cue_end(text: str, start: int, end: int) -> int:
    """Where the cue words of a `name_cue` match stop (the names start at the next capital)."""
    i = start
    while i < end and not text[i].isupper():
        i += 1
    # a capitalised cue ("Patient", "Attending") is itself followed by a space
    if i == start:
        while i < end and not text[i].isspace():
            i += 1
    return i


def _sentence_end(text: str, pos: int) -> bool:
    return pos >= len(text) or text[pos:pos + 1].isspace()


def _eponym_use(text: str, end: int) -> bool:
    """Whether the word ending at `end` is used as an eponym (followed by "'s", a head noun...)."""
    rest = text[end:end + 40]
    if rest.startswith(("'", "’")):  # "Parkinson's", "Graves' disease"
        return True
    # the next word, after any white space: a line break between "Parkinson" and "disease" is common in reports
    nxt = next(iter(rest.split()), "").strip(".,;:").lower()
    return nxt in EPONYM_HEADS or nxt in EPONYMS


def _bare_names(text: str, found: list[Span], first, last, vocab) -> list[Span]:
    """Names with no title or context: 'John Smith', 'Smith, John', 'SMITH, JOHN', 'John Q. Public'."""
    toks = _cap_tokens(text, 0)
    if not toks:
        return []
    # Per token, once: its lower-case form and what the word lists say about it.
    words = [t[2].lower().rstrip(".").removesuffix("'s").removesuffix("’s") for t in toks]
    in_vocab = [w in vocab for w in words]
    if all(v and w not in _NAMEY_VOCAB for v, w in zip(in_vocab, words, strict=True)) and not any(
            t[2].isupper() and len(w) >= 3 and not v for t, w, v in zip(toks, words, in_vocab, strict=True)):
        return []  # every capitalised word is a clinical or common word: no bare name here
    covered = [(s.start, s.end) for s in found]

    def free(a: int, b: int) -> bool:
        return not any(s < b and a < e for s, e in covered)

    def is_first(k: int) -> bool:
        w = words[k]
        return len(w) >= 2 and w in first and not in_vocab[k]

    def in_last(k: int) -> bool:
        return words[k] in last

    def is_last(k: int) -> bool:
        w = words[k]
        return (len(w) >= 2 and all(p in last or p in first for p in w.split("-") if p)
                and not (in_vocab[k] and w not in _NAMEY_VOCAB))

    def unknown(k: int) -> bool:
        return len(words[k]) >= 3 and not in_vocab[k] and not toks[k][2].isupper()

    def caps(k: int) -> bool:  # "MICHEL", "NOËL": an upper-case word that is not a clinical one
        return toks[k][2].isupper() and len(words[k]) >= 3 and not in_vocab[k]

    out: list[Span] = []
    n = len(toks)
    i = 0
    while i < n:
        s, e, t = toks[i]
        if words[i] in EPONYMS and _eponym_use(text, e):
            i += 1
            continue
        # surname, given name
        if ((is_last(i) or unknown(i) or caps(i) or in_last(i)) and i + 1 < n and text[e:toks[i + 1][0]] in (", ", ",")
                and (is_first(i + 1) or (unknown(i) or caps(i)) and (unknown(i + 1) or caps(i + 1)))):
            j, end = i + 1, toks[i + 1][1]
            if j + 1 < n and _gap(text, end, toks[j + 1][0]) and (
                    is_first(j + 1) or unknown(j + 1) or len(toks[j + 1][2]) <= 2):
                end, j = toks[j + 1][1], j + 1
            if free(s, end):
                out.append(Span(s, end, "name"))
                i = j + 1
                continue
        j, end = i, e
        # given name [initial] surname [second surname]
        if is_first(i):
            k = i + 1
            if k < n and len(toks[k][2]) == 2 and toks[k][2].endswith(".") and _gap(text, end, toks[k][0]):
                end, k = toks[k][1], k + 1
            if k < n and _gap(text, end, toks[k][0]) and (is_last(k) or unknown(k) or is_first(k) or in_last(k)):
                end, j = toks[k][1], k
                if j + 1 < n and _gap(text, end, toks[j + 1][0]) and is_last(j + 1) and unknown(j + 1):
                    end, j = toks[j + 1][1], j + 1
            if free(s, end) and (j > i or not _sentence_start(text, s) or len(t) > 3):
                out.append(Span(s, end, "name"))
                i = j + 1
                continue
        # two adjacent capitalised words that are neither clinical words nor names we know
        if i + 1 < n and _gap(text, e, toks[i + 1][0]) and free(s, toks[i + 1][1]) and (
                unknown(i) and unknown(i + 1) or caps(i) and caps(i + 1)):
            out.append(Span(s, toks[i + 1][1], "name"))
            i += 2
            continue
        # a lone surname inside a sentence
        if is_last(i) and not in_vocab[i] and not _sentence_start(text, s) and len(t) >= 3 and not t.isupper() and free(s, e):
            out.append(Span(s, e, "name"))
        i += 1
    return out


def _cap_tokens(text: str, offset: int) -> list[tuple[int, int, str]]:
    """Capitalised words with their offsets; a full stop is kept only on an initial ("J.", "Dr.")."""
    out = []
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if not tok[0].isupper():
            continue
        a, b = m.start(), m.end()
        if (b < len(text) and text[b].isdigit()) or (a and text[a - 1].isdigit()):
            continue  # part of a code ("ICBM152", "T1W"), not a word
        end = m.end()
        if tok.endswith(".") and len(tok) > 3:
            tok, end = tok[:-1], end - 1
        out.append((m.start() + offset, end + offset, tok))
    return out


def _gap(text: str, a: int, b: int) -> bool:
    return 0 < b - a <= 2 and text[a:b].strip(" \t") == ""  # never across a line break


def _sentence_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip()
    return not before or before[-1] in ".!?:;\n>\"(" or before.endswith("<image>")


def _merge(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for sp in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and sp.start < out[-1].end:
            if sp.end > out[-1].end:
                out[-1] = Span(out[-1].start, sp.end, out[-1].category)
            continue
        out.append(sp)
    return out


# --- scrubbing ----------------------------------------------------------------------------------------


def scrub_text(text: str, *, mode: str = "placeholder") -> tuple[str, list[str]]:
    """`text` with every detected PHI value replaced by its category placeholder (`mode="placeholder"`,
    ingest) or removed (`mode="drop"`, the server's door); and the categories touched (`text:name`...)."""
    if mode not in ("placeholder", "drop"):
        raise ValueError(f"mode must be 'placeholder' or 'drop', not {mode!r}")
    spans = detect(text)
    if not spans:
        return text, []
    parts, pos = [], 0
    for sp in spans:
        parts.append(text[pos:sp.start])
        parts.append(PLACEHOLDER[sp.category] if mode == "placeholder" else "")
        pos = sp.end
    parts.append(text[pos:])
    out = "".join(parts)
    if mode == "drop":
        out = " ".join(out.split(" ")).replace("  ", " ")
    return out, sorted({f"text:{sp.category}" for sp in spans})

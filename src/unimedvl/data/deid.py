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
data, which cannot be downloaded. pyap finds US/CA/GB street addresses only and is ~100x slower
per KB than one RE2 pass. The detector below reaches the recall goal per category on the
held-out templates at a few microseconds per KB, and it never backtracks (a 1 MB token costs ~16x
a 64 KB one, not 256x).

Modes: `scrub_text(text)` replaces each value by its category placeholder (`[NAME]`, `[DATE]`...);
`scrub_text(text, mode="drop")` removes the value (the serving helper's door, where no pseudonym
key exists). Neither needs a key: text never carries a pseudonym, only paths do
(`privacy.scrub_path`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from .patterns import bounded, linear

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


# --- word lists -------------------------------------------------------------------------------------


@functools.cache
def _words() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(given names, surnames, clinical vocabulary), all lower-case."""
    import names as census  # the US Census 1990 lists ship inside this package

    folder = resources.files(census)

    def census_list(*files: str) -> frozenset[str]:
        return frozenset(line.split()[0].lower() for f in files for line in folder.joinpath(f).read_text().splitlines()
                         if line.strip())

    data = resources.files(__package__).joinpath("deid_data")
    vocab = frozenset(w for f in ("clinical_words.txt", "common_words.txt")
                      for line in data.joinpath(f).read_text().splitlines() if not line.startswith("#")
                      for w in line.split())
    vocab |= _STOPWORDS
    return census_list("dist.male.first", "dist.female.first"), census_list("dist.all.last"), vocab


_STOPWORDS = frozenset("""
a an the and or but nor of in on at to for from by with without within into onto over under above below
is are was were be been being has have had do does did not no yes this that these those there here it its
as if then than so such very also both either neither each every all any some most more less few many
which what who whom whose when where why how please see note per via new old same other another
patient pt history exam study image images view views film films report findings impression comparison
indication technique clinical right left bilateral normal mild moderate severe stable unchanged
""".split())

# Eponyms: a capitalised surname that names a disease, sign or structure when one of these follows.
EPONYMS = frozenset("""
hodgkin hodgkin's parkinson parkinson's crohn crohn's bell bell's wilms wilm's alzheimer addison cushing
graves hashimoto kerley barrett paget down sjogren wegener kaposi ewing raynaud horner colles smith baker
zenker meckel hirschsprung boerhaave mallory weiss schmorl morgagni bochdalek chiari dandy walker osgood
schlatter perthes legg calve ghon pancoast hampton westermark fleischner swan ganz hickman foley luschka
virchow homer wright klatskin caroli budd chiari gilbert huntington marfan turner klinefelter tietze
poland kartagener lyme whipple kawasaki takayasu moyamoya charcot monteggia galeazzi bennett rolando
barton jefferson hangman chance segond hill sachs bankart baker's zenker's meckel's paget's graves'
""".split())
EPONYM_HEADS = frozenset("""
disease diseases syndrome sign signs lymphoma lymphomas tumor tumour palsy fracture fractures cyst
line lines hump node nodes disease's ulcer esophagus oesophagus diverticulum hernia malformation
catheter catheters sarcoma deformity lesion lesions classification criteria arthritis thyroiditis
triad aneurysm anomaly body bodies nodule nodules foramen foramina point angle space spaces
""".split())


# --- the structural pattern ---------------------------------------------------------------------------

_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
          r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_NAME_TOKEN = r"(?:\p{Lu}[\p{L}'’]*(?:-\p{Lu}[\p{L}'’]*)?\.?|\p{Lu}\.)"
# A comma only after the first token ("Smith, John"): "Dr. Smith, Mercy Hospital" is two things.
_NAMES_1_4 = rf"{_NAME_TOKEN}(?:,?[ \t]*{_NAME_TOKEN})?(?:[ \t]*{_NAME_TOKEN}){{0,2}}"
_TITLE = (r"(?:[Dd][Rr][Ss]?|DOCTOR|[Dd]octor|Mrs|MRS|Mr|MR\.|Ms|MS\.|Miss|MISS|Mx|Prof|PROF|Professor|"
          r"PROFESSOR|Sister|Nurse|Herr|Frau|Mme|Mlle|Dott|Dra|Sra|Sr|Sig)")
_CUE = (r"(?i:discussed\s+with|d/w|called\s+to|reported\s+to|telephoned\s+to|communicated\s+to|"
        r"conveyed\s+to|notified|informed|paged|signed\s+by|dictated\s+by|read\s+by|reviewed\s+by|"
        r"transcribed\s+by|verified\s+by|interpreted\s+by|attending|referring\s+(?:physician|doctor|provider)|"
        r"physician|radiologist|resident|fellow|technologist|patient(?:'s)?\s+name|patient|pt|name|"
        r"contact|husband|wife|son|daughter|mother|father|son-in-law|guardian|by)")
_STREET_TYPES = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
                 r"Terrace|Ter|Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Trail|Trl|Loop|Row|Crescent|"
                 r"Close|Gardens|Grove|Mews|Hill|Park|Walk|Alley|Plaza|Point|Ridge|Run|Pike|Heights|"
                 r"Crossing|Junction|Harbor|Harbour|Fields|Green|Meadows?|Light|Lights|Mission|Mountains?|"
                 r"Falls|Ville|Springs?|Stravenue|Track|Turnpike|Union|Valley|View|Villages?|Wells?|"
                 r"Extension|Expressway|Forge|Fort|Freeway|Glen|Haven|Island|Isle|Key|Knolls?|Lake|Landing|"
                 r"Manor|Mill|Motorway|Neck|Orchard|Oval|Pass|Path|Pines|Port|Prairie|Radial|Ramp|Ranch|"
                 r"Rapids|Rest|Route|Shoal|Shore|Skyway|Spur|Station|Summit|Throughway|Trace|Tunnel|Underpass|"
                 r"Vista|Bypass|Camp|Canyon|Cape|Causeway|Center|Centre|Cliff|Club|Common|Corner|Course|Cove|"
                 r"Creek|Crest|Dale|Dam|Divide|Estates?|Ferry|Field|Flat|Ford|Forest|Garden|Gateway|Harbors|"
                 r"Hollow|Inlet|Lodge|Mall|Mount|Overpass|Ports|River|Road|Shores|Squares|Streets|Terrace)")
_UNIT = (r"(?:,?[ \t]*(?:Apt|Apartment|Suite|Ste|Unit|Flat|Fl|Floor|Piso|Puerta|Appartamento|Piano|Interno|Etage|Bldg|"
         r"Studio|#)\.?[ \t]*[A-Za-z0-9-]{1,6})*")
_INSTITUTION_WORDS = (r"(?:Hospital|Medical\s+Cent(?:er|re)|Clinic|Health\s+System|Healthcare|Health\s+Cent(?:er|re)|"
                      r"Infirmary|Hospice|Institute|University|College|Klinikum|Krankenhaus|Klinik|Clinique|"
                      r"Ospedale|Policlinico|Imaging\s+Cent(?:er|re)|Radiology\s+Associates|Medical\s+Group|"
                      r"Cancer\s+Cent(?:er|re)|Children's|Sanatorium|Polyclinic|Surgery\s+Cent(?:er|re))")

_ALTERNATIVES: list[tuple[str, str]] = [
    ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"),
    ("url", r"(?i:\b(?:https?://|ftp://|www\.)[^\s<>\"']+)"),
    ("url", r"(?i:\b[a-z0-9-]+\.(?:com|org|net|edu|gov|info|biz|io|de|fr|es|it|uk|co\.uk|nl|eu)\b(?:/[^\s<>\"']*)?)"),
    ("ssn", r"\b\d{3}-\d{2}-\d{4}\b|(?i:\b(?:ssn|social\s+security(?:\s+(?:number|no))?)\b\.?\s*[:#]?\s*)\d[\d -]+\d"),
    ("age", r"(?i:\b(?:aged?:?\s*)?(?:9\d|1[01]\d)\s?-?\s?(?:years?|yrs?|y\.?\s?o\.?|y/o)(?:[\s-]+old)?\b)"
            r"|(?i:\b(?:aged?:?|age\s+of)\s*(?:9\d|1[01]\d)\b)|(?i:\bninety[- ]\w+[- ]years?)"),
    ("date", r"\b(?:\d{4}-\d{1,2}-\d{1,2}|\d{4}/\d{1,2}/\d{1,2}|\d{4}\.\d{1,2}\.\d{1,2})\b"
             r"|\b(?:\d{1,2}-\d{1,2}-|\d{1,2}/\d{1,2}/|\d{1,2}\.\d{1,2}\.)(?:\d{4}|\d{2})\b"),
    ("date", rf"(?i:\b\d{{1,2}}(?:st|nd|rd|th)?[-\s./]*(?:of\s+)?{_MONTH}\b\.?(?:[-\s.,/]*(?:\d{{4}}|'?\d{{2}}\b))?)"),
    ("date", rf"(?i:\b{_MONTH}\.?[-\s]+\d{{1,2}}(?:st|nd|rd|th)?\b(?:,?\s+\d{{4}})?)"),
    ("date", rf"(?i:\b{_MONTH}\.?,?[-\s]+(?:of\s+)?\d{{4}}\b)"),
    ("serial", r"(?i:\b(?:serial(?:\s+(?:number|no))?|s/n|sn|device\s+(?:id|serial)|lot|model\s+(?:no|number))\b\.?\s*[:#]?\s*)"
               r"[A-Za-z0-9][A-Za-z0-9/-]+"),
    ("id", r"(?i:\b(?:mrn|medical\s+record(?:\s+(?:number|no))?|record\s+(?:number|no)|acct|account(?:\s+(?:number|no))?|"
           r"accession(?:\s+(?:number|no))?|acc|chart(?:\s+(?:number|no))?|patient\s+id|pt\s+id|id|identifier|"
           r"case(?:\s+(?:number|no))|encounter|fin|visit(?:\s+(?:number|no))?|order(?:\s+(?:number|no))|"
           r"member\s+id|policy(?:\s+(?:number|no))?|claim|insurance\s+id|licen[cs]e(?:\s+(?:number|no))?|dea|npi|"
           r"health\s+plan(?:\s+(?:number|no))?|beneficiary)\b\.?\s*(?:#|no\.?|number)?\s*[:#=]?\s*)"
           r"[A-Za-z]{0,4}[-/]?\d[A-Za-z0-9/-]+"),
    ("phone", r"(?i:\b(?:tel|telephone|phone|ph|fax|pager|pgr|cell|mobile|beeper|call)\b\.?(?:\s*(?:no|number|#))?\.?\s*[:#]?\s*)"
              r"\+?[\d(][\d\s().-]{4,}\d(?:\s*(?:x|ext\.?)\s*\d+)?"),
    ("phone", r"(?:\+|\b00)\d{1,3}[\s.-]?(?:\(\d+\)[\s.-]?)?\d+(?:[\s.-]?\d{2,5})+(?:\s*(?:x|ext\.?)\s*\d+)?"),
    ("phone", r"(?:\(\d{2,5}\)\s?|\b\d{2,5}[\s.-])\d{2,8}(?:[\s.-]\d{2,8})*(?:\s*(?:x|ext\.?)\s*\d+)?\b"),
    ("id", r"(?:\b|_)[A-Za-z]{0,4}-?\d{6,}[A-Za-z]?(?:\b|_)|\b\d{9,}\b"),
    ("address", rf"\b\d+[A-Za-z]?,?[ \t]+(?:[NSEW]\.?[ \t]+)?(?:\p{{Lu}}[\p{{L}}'.-]*[ \t]+)+{_STREET_TYPES}s?\b\.?{_UNIT}"),
    ("address", r"\b(?:Flat|Apt|Apartment|Suite|Unit|Studio)\.?[ \t]+\d+[A-Za-z]?[ \t,]*\n?[ \t]*\p{Lu}[\p{L}'.-]*(?:[ \t]+\p{Lu}[\p{L}'.-]*)*"),
    ("address", r"\b(?:\p{Lu}[\p{L}-]*[ \t]+)?\p{Lu}[\p{L}-]*(?i:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|ufer|chaussee|steig|pfad|hof|berg|garten|markt)"
                r"[ \t]+\d+[a-z]?(?:[-/]\d+[a-z]?)?\b" + _UNIT),
    ("address", r"\b(?:rue|avenue|boulevard|chemin|allée|impasse|quai|place|route|cours)[ \t]+(?:(?:de la|de l'|du|des|de|d')[ \t]?)?\p{Lu}[\p{L}'’-]*(?:[ \t]\p{Lu}[\p{L}'’-]*)*"),
    ("address", r"\b\d+(?:[ \t]?(?:bis|ter))?,?[ \t]+(?i:rue|avenue|av\.|boulevard|bd|chemin|allée|place|impasse|quai|route|cours|"
                r"square|passage|faubourg)[ \t]+(?:[\p{L}'’-]+[ \t]?)+"),
    ("address", r"\b(?i:calle|c/|avenida|avda\.|paseo|camino|plaza|ronda|vía|via|viale|piazza|piazzale|corso|contrada|borgo|vicolo|"
                r"strada|largo|rotonda|carrera|callejón|pasaje|rambla|cañada|urbanización|glorieta|alameda|acceso|carretera|"
                r"traversa|lungomare|salita|stretto|canale|galleria|piazzetta|vicoletto|vial|ruta|ronda|camino|incrocio|c\.|"
                r"cuesta|pasadizo|travesía|senda|bajada|subida|vereda|polígono)[ \t]+(?:(?:de|del|la|las|los|di|della|dei|delle|degli|\p{Lu}[\p{L}'’.-]*),?[ \t]+)+"
                r"(?:n\.?[ \t]?)?\d+" + _UNIT),
    # a house number and two or three capitalised words that are not clinical ones (checked after)
    ("address_generic", r"\b\d+[ \t]+\p{Lu}\p{Ll}+[ \t]+\p{Lu}\p{Ll}+(?:[ \t]+\p{Lu}\p{Ll}+)?\b" + _UNIT),
    # "Santa Cruz de Tenerife, CA 78625", "Álava, IN 46202" (no \b: RE2's is ASCII-only)
    ("zip", r"\p{Lu}[\p{L}'’./-]*(?:[ \t]+(?:(?:de|del|la|las|los|di|du|sur|am|an|le|les|upon|on)[ \t]+)?\p{Lu}[\p{L}'’./-]*)*"
            r",[ \t]+[A-Z]{2}[ \t]+\d{5}(?:-\d{4})?\b"),
    # a postcode and the town after it ("08063 Wertingen", "B7E 9EP North Richardside")
    ("zip", r"(?:\b\d{5}(?:-\d{4})?\b|\b[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}\b)(?:[ \t]+\p{Lu}\p{Ll}+(?:[ \t-]\p{Lu}\p{Ll}+)*\b)?"),
    ("institution", rf"(?:\b(?:St\.?|Saint|Mount|Mt\.?)[ \t]+)?(?:\p{{Lu}}[\p{{L}}'’.&-]*[ \t]+(?:(?:of|and|&|de|del|la|di|van|der|von)[ \t]+)?)+{_INSTITUTION_WORDS}\b"
                    rf"(?:[ \t]+(?:of|de|di|du)[ \t]+(?:\p{{Lu}}[\p{{L}}'’.-]*[ \t]?)+)?"),
    ("institution", r"\b(?:University|Hospital|Hôpital|Klinikum|Ospedale|Hospital[ \t]+Universitario|Centre[ \t]+Hospitalier|"
                    r"Universitätsklinikum|Policlinico)[ \t]+(?:(?:of|de|di|du|des|del|della)[ \t]+)?(?:\p{Lu}[\p{L}'’.-]*[ \t]?)+"),
    ("name_title", rf"\b{_TITLE}\b\.?[ \t]*{_NAMES_1_4}"),
    ("name_degree", rf"{_NAMES_1_4},?[ \t]+(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PhD|Ph\.D\.|MBBS|FRCR|FRCP|DPM)\b"),
    # RE2's \b is ASCII-only: a non-ASCII initial ("É.") is found after the space before it
    ("name_initial", r"(?:\b[A-Z]\.|[ \t][^\x00-\x7F]\.)[ \t]?(?:\p{Lu}\.[ \t]?)*\p{Lu}[\p{Ll}'’]+(?:-\p{Lu}\p{Ll}+)?(?:[ \t]+\p{Lu}[\p{Ll}'’]+)?"),
    ("name_cue", rf"\b{_CUE}:?[ \t]+{_NAMES_1_4}"),
]
_TITLE_WORDS = frozenset("dr drs doctor mr mrs ms miss mx prof professor sister nurse herr frau mme mlle dott dra sra sr sig".split())
_DEGREE = linear(r",?[ \t]+(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PhD|Ph\.D\.|MBBS|FRCR|FRCP|DPM)\b")
_WORD_BEFORE = linear(r"(\p{Lu}[\p{L}'’-]+)[ \t]$")
_WORD_AFTER = linear(r"[ \t](\p{Lu}[\p{L}'’-]+)")
# One RE2 pattern per category (alternatives of a category joined), each run on its own: a single
# alternation of all of them defeats RE2's DFA (the name patterns' Unicode classes blow up its
# states) and is ~100x slower. Categories whose every form holds a digit are skipped on text
# without one (most questions and captions).
def _joined(cat: str) -> str:
    return "|".join(f"(?:{p})" for c, p in _ALTERNATIVES if c == cat)


_NO_DIGIT_NEEDED = {"email", "url", "address", "institution", "name_title", "name_degree", "name_initial", "name_cue"}
_ORDER = list(dict.fromkeys(c for c, _ in _ALTERNATIVES))
_EACH = [(cat, cat not in _NO_DIGIT_NEEDED, linear(_joined(cat), capture=False)) for cat in _ORDER]
_DIGIT = linear(r"\d")
CHUNK = 4096  # detect() reads longer text in chunks of this many characters
# Substrings at least one of which every match of a category contains ((case-sensitive, text)):
# `in` on a short string costs far less than a pattern pass.
_LITERAL_GATES: dict[str, list[tuple[bool, str]]] = {
    "email": [(True, "@")],
    "url": [(False, g) for g in ("://", "www.", ".com", ".org", ".net", ".edu", ".gov", ".info", ".biz", ".io",
                                 ".de", ".fr", ".es", ".it", ".uk", ".nl", ".eu")],
    "institution": [(False, g) for g in ("hospital", "medical", "clinic", "health", "infirmary", "hospice",
                                         "institute", "universit", "college", "klinik", "krankenhaus", "hôpital",
                                         "ospedale", "policlinico", "imaging", "radiology", "children's",
                                         "sanatorium", "polyclinic", "surgery", "cancer")],
    "name_title": [(False, g) for g in ("dr", "doctor", "mr", "ms", "miss", "mx", "prof", "sister", "nurse", "herr",
                                        "frau", "mme", "mlle", "dott", "sra", "sr", "sig")],
    "name_degree": [(True, g) for g in ("MD", "M.D.", "DO", "D.O.", "RN", "NP", "PA-C", "PhD", "Ph.D.", "MBBS",
                                        "FRCR", "FRCP", "DPM")],
}
# One literal alternation per gate, on text already cut to a chunk: `re` is bounded here, and a
# literal search is cheaper than either an RE2 call or a Python loop over the substrings.
_GATE_PATTERNS = {cat: bounded("|".join(re.escape(g) for _, g in gates), CHUNK + 256) for cat, gates in _LITERAL_GATES.items()}
_CASE_SENSITIVE_GATES = {cat for cat, gates in _LITERAL_GATES.items() if gates[0][0]}
# Cheap gate: every structural alternative needs a digit, '@', '/', '.', or an upper-case letter.
_GATE = linear(r"[\d@/]|\p{Lu}")
# Bare-name tokens: run on chunks of at most CHUNK characters (below), so `re` is bounded here.
_TOKENS = bounded(r"[^\W\d_](?:[^\W\d_]|['’])*(?:-[^\W\d_](?:[^\W\d_]|['’])*)*\.?", CHUNK + 256)
PATTERNS = {"gate": _GATE, "digit": _DIGIT, **{f"gate_{c}": p for c, p in _GATE_PATTERNS.items()}, "tokens": _TOKENS, "word_before": _WORD_BEFORE,
            "word_after": _WORD_AFTER, "degree": _DEGREE, **{f"category_{c}": p for c, _, p in _EACH}}


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


# Words that end a run of name tokens: months, labels, relations and cue words.
_NOT_NAMES = frozenset("""
january february march april may june july august september october november december jan feb mar apr jun jul
aug sep sept oct nov dec dob mrn ssn fax tel phone age sex male female wife husband son daughter mother father
pt patient attending physician radiologist resident fellow technologist contact name guardian by at on in
acct account accession serial home address dictated signed verified reviewed read called per
""".split())


# Surnames that are also clinical words: names when a title or context announces them.
_NAMEY_VOCAB = frozenset("white brown black gray grey green young long short hart bell hill wall small".split())


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
            if not (cat == "name_title" and kept and w not in _NOT_NAMES and (w in last or w in first)):
                break  # after a title a surname that is also a word ("Mrs. Felix Ring") is still a name
        if word.rstrip(".").lower() in EPONYMS and _eponym_use(text, t[1]):
            break
        kept.append(t)
    while kept and kept[-1][2].endswith(".") and len(kept[-1][2]) > 2 and kept[-1][1] == end and _sentence_end(text, kept[-1][1]):
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
    if rest.startswith(("'s", "’s", "'", "’")):
        return True
    nxt = rest.strip().split(" ", 1)[0].strip(".,;:").lower() if rest.strip() else ""
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

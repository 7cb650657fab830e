"""The scrubber's rules (unimedvl.data.deid): word lists, eponyms, and one RE2 pattern per PHI
category, with the literal gates that let a pass be skipped. Kept apart from the detection logic so
a reviewer can read the rules on their own."""

from __future__ import annotations

import functools
import re
from importlib import resources

from .patterns import bounded, linear

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
# The word boundary: "Street. Sternotomy" is not the unit "Ste" + "rnotom".
_UNIT = (r"(?:,?[ \t]*(?:(?:Apt|Apartment|Suite|Ste|Unit|Flat|Fl|Floor|Piso|Puerta|Appartamento|Piano|Interno|Etage|Bldg|"
         r"Studio)\b|#)\.?[ \t]*[A-Za-z0-9-]{1,6})*")
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

# Words that end a run of name tokens: months, labels, relations and cue words.
_NOT_NAMES = frozenset("""
january february march april may june july august september october november december jan feb mar apr jun jul
aug sep sept oct nov dec dob mrn ssn fax tel phone age sex male female wife husband son daughter mother father
pt patient attending physician radiologist resident fellow technologist contact name guardian by at on in
acct account accession serial home address dictated signed verified reviewed read called per
""".split())

# Surnames that are also clinical words: names when a title or context announces them.
_NAMEY_VOCAB = frozenset("white brown black gray grey green young long short hart bell hill wall small".split())

"""The PHI test corpus: seeded fake identifiers (faker, six locales) and hand-written hard forms,
planted in real report sentences from the packaged IU chest X-ray reports, plus clean sentences.

Templates are split once and for all: even-numbered ones are the development half, odd-numbered
ones the held-out half the reported figure is measured on. Report sentences come from the
even-indexed IU reports only; the scrubber's clinical vocabulary was built from the odd-indexed
ones, so a clean sentence here is not one whose every word the scrubber was shown.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT")
SEED = 20240901
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")


@dataclass
class Example:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # planted PHI: start, end, category
    template: int = -1
    heldout: bool = False


# --- PHI values ---------------------------------------------------------------------------------------


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1995, 2024), rng.randint(1, 12), rng.randint(1, 28)
    mon = MONTHS[m - 1]
    forms = [f"{d:02d}-{mon[:3]}-{y}", f"{mon} {y}", f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}",
             f"{mon} {d}, {y}", f"{d} {mon} {y}", f"{d}th of {mon} {y}", f"{mon[:3]} {d}", f"{m}/{d}/{y % 100:02d}",
             f"{d}.{m}.{y}", f"{mon[:3]}. {d}, {y}"]
    return rng.choice(forms)


def _age(rng: random.Random) -> str:
    a = rng.randint(90, 109)
    return rng.choice([f"{a}-year-old", f"{a} year old", f"aged {a}", f"{a} y/o", f"{a} yo", f"age {a}", f"{a} yrs old"])


def _name(fk, rng: random.Random) -> str:
    first, last, mid = fk.first_name(), fk.last_name(), fk.first_name()[0]
    forms = [f"{first} {last}", f"{last}, {first}", f"{first[0]}. {last}", f"Dr. {last}", f"DR. {last.upper()}",
             f"Dr.{last}", f"Dr. {first} {mid}. {last}", f"{first.upper()} {last.upper()}", f"{last.upper()}, {first.upper()}",
             f"{first} {mid}. {last}", f"Mr. {last}", f"Mrs. {first} {last}", f"{first} {last}, MD", f"Prof. {last}"]
    return rng.choice(forms)


def _phone(fk, rng: random.Random) -> str:
    n = rng.randint(200, 999), rng.randint(200, 999), rng.randint(1000, 9999)
    forms = [fk.phone_number(), fk.phone_number(), f"{n[1]}-{n[2]}", f"({n[0]}) {n[1]}-{n[2]}", f"+1 {n[0]} {n[1]} {n[2]}",
             f"{n[0]}.{n[1]}.{n[2]}", f"+44 20 {n[1]}4 {n[2]}", f"+49 30 {n[1]}{n[2]}"]
    return rng.choice(forms)


def _institution(fk, rng: random.Random) -> str:
    city, last = fk.city(), fk.last_name()
    forms = [f"{last} Memorial Hospital", f"St. {fk.first_name()} Hospital", f"University of {city} Medical Center",
             f"{city} General Hospital", f"Klinikum {city}", f"{city} Regional Medical Center", "Mayo Clinic",
             f"{last} Children's Hospital", f"{city} Imaging Center", f"Hospital {last}"]
    return rng.choice(forms)


def _address(fk, rng: random.Random) -> str:
    return fk.street_address().replace("\n", ", ")


def _ids(rng: random.Random) -> tuple[str, str]:
    k = rng.randrange(7)
    n = rng.randint(100000, 99999999)
    return [("id", f"MRN: {n}"), ("id", f"MRN {n:08d}"), ("id", f"medical record number {n}"), ("id", f"Acct #: {n}"),
            ("id", f"accession no. RAD-{rng.randint(2000, 2024)}-{n % 100000:05d}"), ("id", f"ACC{n}"),
            ("id", f"account number {n}")][k]


def _value(cat: str, fk, rng: random.Random) -> str:
    if cat == "name":
        return _name(fk, rng)
    if cat == "date":
        return _date(rng)
    if cat == "age":
        return _age(rng)
    if cat == "phone":
        return _phone(fk, rng)
    if cat == "fax":
        return "fax " + _phone(fk, rng)
    if cat == "email":
        return fk.email()
    if cat == "url":
        return fk.url().rstrip("/") if rng.random() < 0.5 else fk.url()
    if cat == "ssn":
        return rng.choice([f"{rng.randint(100, 899)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}", f"SSN {rng.randint(100000000, 899999999)}"])
    if cat == "id":
        return _ids(rng)[1]
    if cat == "serial":
        return rng.choice([f"serial number {rng.choice('ABCDXK')}{rng.randint(1000, 99999)}-{rng.randint(10, 99)}",
                           f"S/N: {rng.randint(10000000, 99999999)}", f"SN {rng.choice('QRT')}{rng.randint(100000, 999999)}"])
    if cat == "address":
        return _address(fk, rng)
    if cat == "zip":
        return rng.choice([fk.postcode(), f"{fk.city()}, {rng.choice(['IN', 'OH', 'CA', 'NY'])} {rng.randint(10000, 99999)}"])
    if cat == "institution":
        return _institution(fk, rng)
    raise KeyError(cat)


CATEGORY_OF_SLOT = {"fax": "phone"}

# {s} = a real report sentence; {cat} = a planted value of that category.
TEMPLATES = [
    "{s} Findings discussed with {name} on {date}.",
    "{s} Dictated by {name}.",
    "Patient {name}, {age}, referred for cough. {s}",
    "{s} Results were called to {name} at {phone}.",
    "Comparison: outside study from {institution} dated {date}. {s}",
    "{s} Contact {email} for the images.",
    "{s} Prior images available at {url}.",
    "SSN {ssn} on the requisition. {s}",
    "{s} {id}.",
    "{s} The patient lives at {address}.",
    "{s} Home address {address}, {zip}.",
    "{s} Portable unit {serial} used.",
    "{name} is a {age} woman with chest pain. {s}",
    "{s} Electronically signed by {name} on {date}.",
    "INDICATION: {age} male, {name}. {s}",
    "{s} Please call the reading room at {phone} or {fax}.",
    "{s} Transferred from {institution} on {date}.",
    "{s} Referring physician: {name}, {institution}.",
    "{s} Study performed {date}; {id}.",
    "Seen by {name} at {institution}. {s}",
    "{s} Report faxed to {fax}.",
    "{s} Follow-up with {name} in {date}.",
    "{s} Images sent to {email} and {url}.",
    "Patient's home: {address}, {zip}. {s}",
    "{s} Detector {serial}, {institution}.",
    "{s} Compared to the radiograph of {date} at {institution}.",
    "{s} Family member {name} ({phone}) informed.",
    "{id}. {s}",
    "{s} Wife {name} was present.",
    "{s} Age: {age}.",
    "{s} Pt {name}, DOB {date}, {id}.",
    "{s} Questions to {name} at {email}.",
    "{s} {ssn}.",
    "{s} Mailing address: {address}.",
    "{s} The {age} patient was seen on {date}.",
    "{s} Verified by {name}.",
    "{s} Outside report: {url}",
    "{s} Patient portal {url} has the prior.",
]

CLEAN = [
    "History of Hodgkin lymphoma, status post chemotherapy.",
    "Known Parkinson disease with kyphosis.",
    "Crohn's disease; no free air under the diaphragm.",
    "Bell's palsy on the left, unrelated to the chest findings.",
    "Wilms tumor resected in childhood; no pulmonary metastases.",
    "Patient on Coumadin and Lasix; no pleural effusion.",
    "Kerley B lines suggest interstitial edema.",
    "Swan-Ganz catheter tip in the right pulmonary artery.",
    "Barrett esophagus on prior endoscopy.",
    "Taking metformin, lisinopril and atorvastatin.",
    "Paget disease of the right humerus.",
    "The right hemidiaphragm is elevated; the costophrenic angles are sharp.",
    "Hilar and mediastinal lymph nodes are not enlarged.",
    "Degenerative changes of the thoracic spine at T8-T9 and L5-S1.",
    "Status post CABG with intact sternotomy wires.",
    "A 45-year-old man with cough for 2 weeks.",
    "Heart size is 14.5 cm, within normal limits.",
    "Follow-up in 6 months is recommended.",
    "Nodule measures 8 mm x 6 mm in the right upper lobe.",
    "Cushing syndrome on steroids; osteopenia.",
    "Sjogren syndrome with interstitial lung disease.",
    "Pancoast tumor is not excluded; CT recommended.",
    "Schmorl nodes in the lower thoracic spine.",
    "Eisenmenger physiology suspected on echocardiography.",
    "On Eliquis and Plavix after stent placement.",
    "Given Zosyn and Vancomycin for pneumonia.",
]


def report_sentences() -> list[str]:
    """Sentences of the even-indexed packaged IU reports (their 'XXXX' de-identification marks kept)."""
    from unimedvl.data.sources.packaged_reports import _read_members, locate_archive, parse_report

    archive = locate_archive()
    if archive is None:
        raise FileNotFoundError("the packaged IU report archive is not installed (see packaged_reports.HOW_TO_GET)")
    out: set[str] = set()
    for i, (_, blob) in enumerate(_read_members(archive.read())):
        if blob is None or i % 2:
            continue
        for key in ("FINDINGS", "IMPRESSION"):
            for sent in re.split(r"(?<=\.)\s+", parse_report(blob)["sections"].get(key) or ""):
                if 20 <= len(sent) <= 200:
                    out.add(sent.strip())
    return sorted(out)


def build(n_per_template: int = 40, n_clean: int = 600, seed: int = SEED) -> list[Example]:
    from faker import Faker

    rng = random.Random(seed)
    fakers = {}
    for loc in LOCALES:
        fk = Faker(loc)
        fk.seed_instance(seed + len(fakers))
        fakers[loc] = fk
    sents = report_sentences()
    examples: list[Example] = []
    for t_id, template in enumerate(TEMPLATES):
        for _ in range(n_per_template):
            fk = fakers[rng.choice(LOCALES)]
            examples.append(_fill(template, t_id, rng.choice(sents), fk, rng))
    clean = rng.sample(sents, min(n_clean, len(sents))) + CLEAN
    examples += [Example(text=s, template=-1, heldout=bool(i % 2)) for i, s in enumerate(clean)]
    return examples


def _fill(template: str, t_id: int, sentence: str, fk, rng: random.Random) -> Example:
    text, spans, pos = "", [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        text += template[pos:m.start()]
        slot = m.group(1)
        if slot == "s":
            text += sentence
        else:
            value = _value(slot, fk, rng)
            cat = CATEGORY_OF_SLOT.get(slot, slot)
            if slot == "fax":
                text += "fax "
                value = value.removeprefix("fax ")
            spans.append((len(text), len(text) + len(value), cat))
            text += value
        pos = m.end()
    text += template[pos:]
    return Example(text=text, spans=spans, template=t_id, heldout=bool(t_id % 2))


# --- scoring ------------------------------------------------------------------------------------------


def score(examples: list[Example], detect) -> dict:
    """Per-category span recall (a planted value counts only when every letter and digit of it is
    inside a detected span), span precision, and clean-token retention."""
    per: dict[str, list[int]] = {}
    tp_spans = fp_spans = 0
    kept = total_clean = 0
    misses: list[tuple[str, str, str]] = []
    false_pos: list[tuple[str, str]] = []
    for ex in examples:
        found = [(s.start, s.end) for s in detect(ex.text)]
        covered = set()
        for a, b in found:
            covered.update(range(a, b))
        for a, b, cat in ex.spans:
            hit = all(i in covered for i in range(a, b) if ex.text[i].isalnum())
            per.setdefault(cat, [0, 0])
            per[cat][0] += hit
            per[cat][1] += 1
            if not hit:
                misses.append((cat, ex.text[a:b], ex.text))
        planted = set()
        for a, b, _ in ex.spans:
            planted.update(range(a, b))
        for a, b in found:
            if any(i in planted for i in range(a, b)):
                tp_spans += 1
            else:
                fp_spans += 1
                false_pos.append((ex.text[a:b], ex.text))
        for m in re.finditer(r"\w+", ex.text):
            if not any(i in planted for i in range(m.start(), m.end())):
                total_clean += 1
                kept += not any(i in covered for i in range(m.start(), m.end()))
    recall = {cat: hit / n for cat, (hit, n) in sorted(per.items())}
    return {
        "recall": recall,
        "support": {cat: n for cat, (_, n) in sorted(per.items())},
        "min_recall": min(recall.values()) if recall else float("nan"),
        "precision": tp_spans / (tp_spans + fp_spans) if tp_spans + fp_spans else float("nan"),
        "retention": kept / total_clean if total_clean else float("nan"),
        "misses": misses,
        "false_positives": false_pos,
    }

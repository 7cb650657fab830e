"""Text de-identification: recall per category, precision and cost of each candidate scrubber on
the PHI corpus (tests/deid_corpus.py), and the linear-time check of every scrubber pattern.

Figures are measured on the held-out half of the templates (never tuned against). Candidates:
`unimedvl` (data.deid, the one ingest uses), the previous regex list (`legacy`, the patterns this
replaced), presidio-analyzer's pattern recognizers without NER (no spaCy model can be installed;
its URL recognizer fetches a suffix list at run time and is left out), `phonenumbers` (phones only)
and `pyap` (US/CA/GB street addresses only). A candidate that is not installed, or that cannot run
here (philter-lite needs NLTK data), is reported as unavailable, never given a number.

Per-category recall counts a planted value only when every letter and digit of it is inside a
detected span. Precision is over detected spans (one that touches no planted value is a false
positive); clean-token retention is the share of words outside planted values left untouched.

Last line: `deid recall: X precision: Y` (X = minimum per-category recall, goal >= 0.99; Y >= 0.95).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import deid_corpus  # noqa: E402

from unimedvl.data import deid  # noqa: E402


class _Span:
    def __init__(self, start: int, end: int, category: str = "?"):
        self.start, self.end, self.category = start, end, category


def _legacy():
    months = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
    pats = [
        re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
        re.compile(rf"\b(?:\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}|\d{{1,2}}[-/.]\d{{1,2}}[-/.]\d{{2,4}}"
                   rf"|\d{{1,2}}\s+{months}\s+\d{{2,4}}|{months}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})\b", re.I),
        re.compile(r"(?<!\w)(?:\+?\d{1,2}[\s.-])?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"),
        re.compile(r"\b(?:Dr|Doctor|Mr|Mrs|Ms|Prof)\.?\s+[A-Z][a-zA-Z'-]+(?:\s+[A-Z][a-zA-Z'-]+)?"),
        re.compile(r"(?<![A-Za-z0-9])(?:MRN|ID|Acc(?:ession)?|No|#)[:#.\s]*[A-Z]{0,3}\d{4,}(?!\d)"
                   r"|(?<!\d)(?<!\d\.)[A-Z]{0,4}\d{6,}(?!\d|\.\d)"),
    ]
    return lambda text: [_Span(m.start(), m.end()) for p in pats for m in p.finditer(text)]


def _presidio():
    from presidio_analyzer.predefined_recognizers import (
        DateRecognizer,
        EmailRecognizer,
        PhoneRecognizer,
        UkPostcodeRecognizer,
        UsSsnRecognizer,
    )

    recs = [(EmailRecognizer(), "EMAIL_ADDRESS"), (PhoneRecognizer(), "PHONE_NUMBER"), (DateRecognizer(), "DATE_TIME"),
            (UsSsnRecognizer(), "US_SSN"), (UkPostcodeRecognizer(), "UK_POSTCODE")]
    return lambda text: [_Span(r.start, r.end) for rec, ent in recs for r in rec.analyze(text, [ent], None)]


def _phonenumbers():
    import phonenumbers

    def detect(text):
        out = []
        for region in ("US", "GB", "DE", "FR", "ES", "IT"):
            out += [_Span(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, region)]
        return out
    return detect


def _pyap():
    import pyap

    def detect(text):
        out = []
        for country in ("US", "GB"):
            for a in pyap.parse(text, country=country):
                i = text.find(a.full_address)
                if i >= 0:
                    out.append(_Span(i, i + len(a.full_address)))
        return out
    return detect


def _philter():
    import nltk

    try:
        nltk.data.find("taggers/averaged_perceptron_tagger")
    except LookupError:
        raise RuntimeError("its part-of-speech filter needs NLTK's tagger data, which cannot be downloaded here") from None
    import philter_lite  # noqa: F401 - not installed: it pins nltk and its filters need that data
    raise RuntimeError("philter-lite is importable but was not evaluated")


CANDIDATES = {
    "unimedvl": (lambda: deid.detect, None),
    "legacy": (_legacy, None),
    "presidio-patterns": (_presidio, {"email", "phone", "date", "ssn", "zip"}),
    "phonenumbers": (_phonenumbers, {"phone"}),
    "pyap": (_pyap, {"address"}),
    "philter-lite": (_philter, None),
}


def cost_us_per_kb(detect, texts: list[str], repeats: int = 3) -> float:
    kb = sum(len(t.encode()) for t in texts) / 1024
    best = float("inf")
    for _ in range(repeats):
        deid._detect_short.cache_clear()
        deid._detect_cached.cache_clear()
        t0 = time.perf_counter()
        for t in texts:
            detect(t)
        best = min(best, time.perf_counter() - t0)
    return best * 1e6 / kb


HOSTILE = {
    "letters": lambda n: "a" * n,
    "at-signs": lambda n: ("a@" * n)[:n],
    "digit-dashes": lambda n: ("1-" * n)[:n],
    "initials": lambda n: ("A. " * n)[:n],
    "capitals": lambda n: ("Dr. " + "Aa " * n)[:n],
    "dots": lambda n: ("a." * n)[:n],
}


def _timed(fn, text: str, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - t0)
    return best


def worst_ratio(small: int = 64 << 10, big: int = 1 << 20) -> tuple[float, str]:
    """Worst 1 MB / 64 KB time over every scrubber pattern and the whole scrubber, on hostile input."""
    worst, where = 0.0, ""
    fns = {f"pattern {name}": p.search for name, p in deid.PATTERNS.items()}
    fns["scrub_text"] = lambda t: (deid._detect_short.cache_clear(), deid._detect_cached.cache_clear(), deid.scrub_text(t))
    for fname, fn in fns.items():
        for hname, make in HOSTILE.items():
            a, b = make(small), make(big)
            ta, tb = _timed(fn, a), _timed(fn, b)
            ratio = tb / max(ta, 1e-5)  # below 10 us the small input's time is timer noise
            if ratio > worst:
                worst, where = ratio, f"{fname} on {hname}"
    return worst, where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-template", type=int, default=40, help="examples per template (default 40)")
    ap.add_argument("--clean", type=int, default=600, help="clean report sentences (default 600)")
    args = ap.parse_args()
    examples = deid_corpus.build(n_per_template=args.per_template, n_clean=args.clean)
    held = [e for e in examples if e.heldout]
    texts = [e.text for e in held]
    kb = sum(len(t.encode()) for t in texts) / 1024
    print(f"corpus: {len(examples)} texts, held-out half {len(held)} texts ({kb:.0f} KB), "
          f"{sum(len(e.spans) for e in held)} planted values, locales {', '.join(deid_corpus.LOCALES)}")

    print(f"\n{'candidate':18s} {'min recall':>10s} {'precision':>9s} {'retention':>9s} {'us/KB':>9s}  covers")
    ours = None
    for name, (make, covers) in CANDIDATES.items():
        try:
            detect = make()
            detect("warm up: Dr. Smith 555-0199")
        except Exception as e:  # noqa: BLE001 - a candidate that cannot run here is reported as such
            print(f"{name:18s} {'unavailable':>10s}  ({type(e).__name__}: {str(e).splitlines()[0][:90]})")
            continue
        result = deid_corpus.score(held, detect)
        recall = {c: r for c, r in result["recall"].items() if covers is None or c in covers}
        low = min(recall.values())
        cost = cost_us_per_kb(detect, texts)
        print(f"{name:18s} {low:10.3f} {result['precision']:9.3f} {result['retention']:9.3f} {cost:9.0f}  "
              f"{'all' if covers is None else ', '.join(sorted(covers))}")
        if name == "unimedvl":
            ours = result

    print("\nunimedvl per category (held-out):")
    print(f"{'category':12s} {'recall':>7s} {'n':>5s}")
    for cat, r in ours["recall"].items():
        print(f"{cat:12s} {r:7.3f} {ours['support'][cat]:5d}")
    for cat, value, _ in ours["misses"][:8]:
        print(f"  missed {cat}: {value!r}")

    worst, where = worst_ratio()
    print(f"\nworst 1 MB / 64 KB time ratio over {len(deid.PATTERNS)} patterns and scrub_text: {worst:.1f} ({where}; "
          f"linear is ~16, goal <= 20)")
    print(f"clean-token retention: {ours['retention']:.4f}")
    print(f"deid recall: {ours['min_recall']:.3f} precision: {ours['precision']:.3f}")


if __name__ == "__main__":
    main()

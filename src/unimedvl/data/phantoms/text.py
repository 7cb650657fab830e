"""The template library: captions, questions, answers and radiology reports from the ground truth.

Every sentence type has several paraphrases (picked with the record's generator) so a model cannot
pass by memorising one string. Conventions the tests and evaluation rely on:

- a *positive* finding sentence names its finding (nodule, consolidation, effusion, pneumothorax,
  cardiomegaly / heart / cardiac, lesion) and never contains a negation cue (no, not, without,
  normal, sharp, clear, unremarkable);
- a *normal* statement names the finding it rules out and contains a negation cue;
- reports are `FINDINGS: ...` then `IMPRESSION: ...`, with one sentence per finding type: the
  positive sentence(s) for findings in the labels, a normal statement for every other type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .brain import CONTRAST_NAMES
from .chest import FINDING_TYPES as CHEST_TYPES
from .chest import LOBE_NAMES

Rng = np.random.Generator


def pick(rng: Rng, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def article(word: str) -> str:
    """'a' or 'an' for the word that follows (numbers as spoken: an 8, an 11, an 18, an 80)."""
    w = word.strip().lower()
    if w[:1].isdigit():
        digits = w.split()[0].split(".")[0]
        return "an" if digits.startswith("8") or digits in ("11", "18") else "a"
    return "an" if w[:1] in "aeiou" else "a"


def mm(x: float) -> str:
    return f"{round(float(x))}"


def side_adj(side: str) -> str:
    return side  # "right" / "left" (the patient's)


# --- finding phrases ------------------------------------------------------------------------------


def finding_name(f: dict[str, Any]) -> str:
    """Short name of a finding: 'nodule', 'pleural effusion', 'lesion', ..."""
    return {"effusion": "pleural effusion"}.get(f["type"], f["type"])


def finding_phrase(f: dict[str, Any], contrast: str | None = None) -> str:
    """Noun phrase for one finding, with its location and size ('a 14 mm nodule in the right upper lobe')."""
    t = f["type"]
    if t == "nodule":
        return f"{article(mm(f['size_mm']))} {mm(f['size_mm'])} mm nodule in the {LOBE_NAMES[f['lobe']]}"
    if t == "consolidation":
        return f"{f['extent']} consolidation in the {LOBE_NAMES[f['lobe']]}"
    if t == "effusion":
        return f"a {f['grade']} {f['side']} pleural effusion"
    if t == "pneumothorax":
        return f"a {f['size']} {f['side']} pneumothorax"
    if t == "cardiomegaly":
        return f"cardiomegaly (cardiothoracic ratio {f['ctr']:.2f})"
    if t == "lesion":
        enh = ""
        if contrast == "T1c":
            enh = ("ring-enhancing " if f["size_mm"] >= 18.0 else "enhancing ") if f["enhancing"] else "non-enhancing "
        size = mm(f["size_mm"])
        return f"{article(size)} {size} mm {enh}lesion in the {f['hemisphere']} {f['lobe']} lobe"
    raise ValueError(t)


def location(f: dict[str, Any]) -> str:
    if f["type"] in ("nodule", "consolidation"):
        return f"the {LOBE_NAMES[f['lobe']]}"
    if f["type"] == "lesion":
        return f"the {f['hemisphere']} {f['lobe']} lobe"
    if "side" in f:
        return f"the {f['side']} hemithorax"
    return "the mediastinum"


def join(items: list[str]) -> str:
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


CHEST_POSITIVE = {
    "nodule": [
        "{A} {size} mm nodule is seen in the {lobe}.",
        "There is {a} {size} mm pulmonary nodule in the {lobe}.",
        "{Lobe} nodule measuring {size} mm.",
        "A well-defined {size} mm nodular opacity projects over the {lobe}.",
    ],
    "consolidation": [
        "{Extent} airspace consolidation in the {lobe}.",
        "There is {extent} consolidation of the {lobe}.",
        "Airspace opacity in the {lobe}, in keeping with {extent} consolidation.",
    ],
    "effusion": [
        "{Grade} {side} pleural effusion.",
        "There is a {grade} {side}-sided pleural effusion blunting the {side} costophrenic angle.",
        "{Grade} {side} pleural effusion layering at the {side} lung base.",
    ],
    "pneumothorax": [
        "{Size} {side} pneumothorax with a visible pleural line, apical rim about {rim} mm.",
        "There is a {size} {side}-sided pneumothorax (apical rim {rim} mm).",
        "{Size} {side} apical pneumothorax measuring about {rim} mm at the apex.",
    ],
    "cardiomegaly": [
        "The heart is enlarged, with a cardiothoracic ratio of {ctr}.",
        "Cardiomegaly, cardiothoracic ratio about {ctr}.",
        "Enlarged cardiac silhouette (cardiothoracic ratio {ctr}).",
    ],
}
CHEST_NEGATIVE = {
    "nodule": ["No pulmonary nodule.", "No focal nodule or mass is seen.", "There is no pulmonary nodule."],
    "consolidation": ["No focal consolidation.", "There is no airspace consolidation.", "No consolidation is seen."],
    "effusion": [
        "No pleural effusion.",
        "There is no pleural effusion.",
        "The costophrenic angles are sharp, without pleural effusion.",
    ],
    "pneumothorax": ["No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen."],
    "cardiomegaly": [
        "The heart size is normal.",
        "Normal cardiac silhouette, cardiothoracic ratio {ctr}.",
        "The heart is not enlarged.",
    ],
}
CHEST_OTHER = [
    ["The trachea is central.", "The trachea is midline."],
    ["No acute osseous abnormality.", "The visualised bones are unremarkable."],
]
CHEST_IMPRESSION = {
    "nodule": ["{Size} mm {lobe} nodule.", "{Lobe} nodule ({size} mm)."],
    "consolidation": ["{Extent} {lobe} consolidation.", "Consolidation in the {lobe} ({extent})."],
    "effusion": ["{Grade} {side} pleural effusion.", "{Side} pleural effusion, {grade}."],
    "pneumothorax": ["{Size} {side} pneumothorax.", "{Side} pneumothorax, {size}."],
    "cardiomegaly": ["Cardiomegaly.", "Cardiomegaly (cardiothoracic ratio {ctr})."],
}
CHEST_IMPRESSION_NORMAL = [
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No acute cardiopulmonary process.",
]

BRAIN_POSITIVE = {
    "T1": [
        "{A} {size} mm lesion in the {hemisphere} {lobe} lobe, hypointense on this T1-weighted image.",
        "There is {a} {size} mm T1-hypointense lesion in the {hemisphere} {lobe} lobe.",
    ],
    "T2": [
        "{A} {size} mm lesion in the {hemisphere} {lobe} lobe, hyperintense on this T2-weighted image.",
        "There is {a} {size} mm T2-hyperintense lesion in the {hemisphere} {lobe} lobe.",
    ],
    "FLAIR": [
        "{A} {size} mm FLAIR-hyperintense lesion in the {hemisphere} {lobe} lobe.",
        "There is {a} {size} mm lesion in the {hemisphere} {lobe} lobe, bright on FLAIR.",
    ],
    "T1c": [
        "{A} {size} mm {enh} lesion in the {hemisphere} {lobe} lobe.",
        "There is {a} {size} mm {enh} lesion in the {hemisphere} {lobe} lobe on the post-contrast image.",
    ],
}
BRAIN_NEGATIVE = [
    "No focal parenchymal lesion.",
    "There is no focal brain lesion.",
    "No intracranial lesion is seen.",
]
BRAIN_OTHER = [
    ["The ventricles are normal in size and configuration.", "Normal ventricular size."],
    ["There is no midline shift.", "Midline structures are central."],
    ["Grey-white matter differentiation is preserved.", "The extra-axial spaces are unremarkable."],
]
BRAIN_IMPRESSION = ["{Size} mm {hemisphere} {lobe} lobe lesion{enh_short}.", "Lesion in the {hemisphere} {lobe} lobe ({size} mm){enh_short}."]
BRAIN_IMPRESSION_NORMAL = ["Normal MRI appearance of the brain on this slice.", "No intracranial abnormality on this slice."]


def _fields(f: dict[str, Any], labels: dict[str, Any]) -> dict[str, str]:
    d: dict[str, str] = {}
    if "lobe" in f and f["type"] != "lesion":
        d["lobe"] = LOBE_NAMES[f["lobe"]]
    if "side" in f:
        d["side"] = f["side"]
    if "size_mm" in f:
        d["size"] = mm(f["size_mm"])
    if f["type"] == "consolidation":
        d["extent"] = f["extent"]
    if f["type"] == "effusion":
        d["grade"] = f["grade"]
    if f["type"] == "pneumothorax":
        d["size"] = f["size"]
        d["rim"] = mm(f["rim_mm"])
    if f["type"] == "cardiomegaly":
        d["ctr"] = f"{f['ctr']:.2f}"
    if f["type"] == "lesion":
        d["hemisphere"] = f["hemisphere"]
        d["lobe"] = f["lobe"]
        ring = f["size_mm"] >= 18.0
        d["enh"] = ("ring-enhancing" if ring else "enhancing") if f["enhancing"] else "non-enhancing"
        d["enh_short"] = (", enhancing" if f["enhancing"] else ", non-enhancing") if labels.get("contrast") == "T1c" else ""
    if "size" in d:
        d["a"] = article(d["size"])
    d.update({k[:1].upper() + k[1:]: cap(v) for k, v in list(d.items())})
    return d


def fill(template: str, f: dict[str, Any], labels: dict[str, Any]) -> str:
    return template.format(**_fields(f, labels))


# --- reports --------------------------------------------------------------------------------------


def report(labels: dict[str, Any], rng: Rng) -> tuple[str, str]:
    """(findings text, impression text) for one image's labels."""
    if labels["family"] == "chest":
        return _chest_report(labels, rng)
    return _brain_report(labels, rng)


def report_text(labels: dict[str, Any], rng: Rng) -> str:
    findings, impression = report(labels, rng)
    return f"FINDINGS: {findings}\n\nIMPRESSION: {impression}"


def _chest_report(labels: dict[str, Any], rng: Rng) -> tuple[str, str]:
    fs = labels["findings"]
    normal_ctr = {"ctr": f"{labels['anatomy']['heart']['ctr']:.2f}"}
    sentences = []
    for t in ("nodule", "consolidation", "effusion", "pneumothorax", "cardiomegaly"):
        present = [f for f in fs if f["type"] == t]
        if present:
            sentences += [fill(pick(rng, CHEST_POSITIVE[t]), f, labels) for f in present]
        else:
            sentences.append(pick(rng, CHEST_NEGATIVE[t]).format(**normal_ctr))
    sentences += [pick(rng, opts) for opts in CHEST_OTHER]
    if fs:
        items = [fill(pick(rng, CHEST_IMPRESSION[f["type"]]), f, labels) for f in fs]
        impression = " ".join(f"{i + 1}. {s}" for i, s in enumerate(items)) if len(items) > 1 else items[0]
    else:
        impression = pick(rng, CHEST_IMPRESSION_NORMAL)
    return " ".join(sentences), impression


def _brain_report(labels: dict[str, Any], rng: Rng) -> tuple[str, str]:
    fs = labels["findings"]
    c = labels["contrast"]
    sentences = [f"Axial {CONTRAST_NAMES[c]} image."]
    if fs:
        sentences += [fill(pick(rng, BRAIN_POSITIVE[c]), f, labels) for f in fs]
    else:
        sentences.append(pick(rng, BRAIN_NEGATIVE))
    sentences += [pick(rng, opts) for opts in BRAIN_OTHER]
    if fs:
        items = [fill(pick(rng, BRAIN_IMPRESSION), f, labels) for f in fs]
        impression = " ".join(f"{i + 1}. {s}" for i, s in enumerate(items)) if len(items) > 1 else items[0]
    else:
        impression = pick(rng, BRAIN_IMPRESSION_NORMAL)
    return " ".join(sentences), impression


# --- captions and prompts -------------------------------------------------------------------------


def modality_phrase(labels: dict[str, Any], rng: Rng | None = None) -> str:
    if labels["family"] == "chest":
        opts = ["frontal chest radiograph", "PA chest X-ray", "chest radiograph (PA view)"]
    else:
        name = CONTRAST_NAMES[labels["contrast"]]
        opts = [f"axial {name} brain MRI", f"{name} MRI of the brain (axial)", f"axial {name} MR image of the head"]
    return opts[0] if rng is None else pick(rng, opts)


def caption(labels: dict[str, Any], rng: Rng) -> str:
    fs = labels["findings"]
    what = modality_phrase(labels, rng)
    contrast = labels.get("contrast")
    if fs:
        body = join([finding_phrase(f, contrast) for f in fs])
        tpl = pick(rng, ["{What} showing {body}.", "{What} with {body}.", "{What}: {body}."])
    else:
        body = "no abnormality" if labels["family"] == "chest" else "no focal lesion"
        tpl = pick(rng, ["{What} with {body}.", "{What} showing {body}.", "Normal {what}."])
    return tpl.format(What=cap(what), what=what, body=body)


def t2i_prompt(labels: dict[str, Any], rng: Rng) -> str:
    fs = labels["findings"]
    what = modality_phrase(labels, rng)
    contrast = labels.get("contrast")
    body = join([finding_phrase(f, contrast) for f in fs]) if fs else (
        "no abnormality" if labels["family"] == "chest" else "no focal lesion")
    tpl = pick(rng, [
        "Generate {a} {what} with {body}.",
        "Create {a} {what} showing {body}.",
        "Synthesise {a} {what}: {body}.",
        "Draw {a} {what} of a patient with {body}.",
    ])
    return tpl.format(a=article(what), what=what, body=body)


def t2i_answer(labels: dict[str, Any], rng: Rng) -> str:
    return pick(rng, ["Here is the generated {what}.", "Generated {what}.", "The requested {what} is shown."]).format(
        what=modality_phrase(labels))


# --- questions ------------------------------------------------------------------------------------

PRESENCE_Q = {
    "nodule": ["Is there a pulmonary nodule?", "Does this radiograph show a lung nodule?", "Is a nodule visible in the lungs?"],
    "consolidation": ["Is there consolidation?", "Does this radiograph show airspace consolidation?",
                      "Is any lobe consolidated?"],
    "effusion": ["Is there a pleural effusion?", "Does this radiograph show pleural fluid?", "Is a pleural effusion present?"],
    "pneumothorax": ["Is there a pneumothorax?", "Does this radiograph show a pneumothorax?", "Is a pneumothorax present?"],
    "cardiomegaly": ["Is the heart enlarged?", "Is there cardiomegaly?", "Does the cardiac silhouette look enlarged?"],
    "lesion": ["Is there a focal brain lesion?", "Does this MRI show a lesion?", "Is a parenchymal lesion visible?"],
}
SIDE_Q = ["Is the {name} on the {side} side?", "Is the {name} {side}-sided?", "Does the {name} involve the {side} side?"]
LOBE_Q = ["Is the {name} in the {place}?", "Is the {name} located in the {place}?"]
CONTRAST_Q = ["Is this a {contrast} image?", "Was this image acquired as {contrast}?", "Is this sequence {contrast}?"]
ENHANCE_Q = ["Does the lesion enhance after contrast?", "Is the lesion enhancing?", "Does the lesion show contrast enhancement?"]

WHERE_Q = ["Where is the {name}?", "In which location is the {name}?", "Where is the {name} located?"]
SIZE_Q = ["How large is the {name}?", "What is the size of the {name}?", "How big is the {name}?"]
SIDE_OPEN_Q = ["Which side is the {name} on?", "On which side is the {name}?", "Is the {name} on the left or the right?"]
GRADE_Q = ["How large is the pleural effusion?", "What is the grade of the pleural effusion?", "Is the effusion small, moderate or large?"]
PTX_SIZE_Q = ["How large is the pneumothorax?", "Is the pneumothorax small or large?", "What is the size of the pneumothorax?"]
CTR_Q = ["What is the cardiothoracic ratio?", "Estimate the cardiothoracic ratio.", "What is the CTR on this radiograph?"]
EXTENT_Q = ["What is the extent of the consolidation?", "How extensive is the consolidation?"]
ABN_Q = ["What abnormality is shown?", "What are the findings in this image?", "Describe any abnormality in this image."]
CONTRAST_OPEN_Q = ["Which MRI contrast is this?", "What sequence is this image?", "Which MR weighting is shown?"]
HEMI_Q = ["Which hemisphere contains the lesion?", "In which hemisphere is the lesion?", "Is the lesion in the left or right hemisphere?"]
VIEW_Q = ["What is the projection of this radiograph?", "Which view is this chest radiograph?"]


def yes_no(answer: bool, rng: Rng) -> str:
    return pick(rng, ["Yes.", "Yes."]) if answer else pick(rng, ["No.", "No."])


def closed_question(labels: dict[str, Any], rng: Rng) -> tuple[str, str, dict[str, Any]]:
    """(question, answer, task labels) of a yes/no question with a balanced answer."""
    fs = labels["findings"]
    chest = labels["family"] == "chest"
    kinds = ["presence"]
    lateral = [f for f in fs if "side" in f]
    if lateral:
        kinds.append("side")
    if any(f["type"] in ("nodule", "consolidation", "lesion") for f in fs):
        kinds.append("lobe")
    if not chest:
        kinds.append("contrast")
        if labels["contrast"] == "T1c" and fs:
            kinds.append("enhancement")
    kind = pick(rng, kinds)
    if kind == "presence":
        types = list(CHEST_TYPES) if chest else ["lesion"]
        present = sorted({f["type"] for f in fs})
        if present and (rng.random() < 0.5 or len(present) == len(types)):
            t = pick(rng, present)
        else:
            absent = [t for t in types if t not in present] or types
            t = pick(rng, absent)
        ans = any(f["type"] == t for f in fs)
        return pick(rng, PRESENCE_Q[t]), yes_no(ans, rng), {"question": "presence", "finding": t, "answer": "yes" if ans else "no"}
    if kind == "side":
        f = lateral[int(rng.integers(len(lateral)))]
        side = pick(rng, ["left", "right"])
        ans = any(g["type"] == f["type"] and g["side"] == side for g in fs)
        q = pick(rng, SIDE_Q).format(name=finding_name(f), side=side)
        return q, yes_no(ans, rng), {"question": "side", "finding": f["type"], "side": side, "answer": "yes" if ans else "no"}
    if kind == "lobe":
        cands = [f for f in fs if f["type"] in ("nodule", "consolidation", "lesion")]
        f = cands[int(rng.integers(len(cands)))]
        if f["type"] == "lesion":
            from .brain import LOBES as BL

            lobe = f["lobe"] if rng.random() < 0.5 else pick(rng, list(BL))
            hemi = f["hemisphere"] if rng.random() < 0.5 else pick(rng, ["left", "right"])
            place = f"{hemi} {lobe} lobe"
            ans = any(g["lobe"] == lobe and g["hemisphere"] == hemi for g in fs)
            extra = {"lobe": lobe, "hemisphere": hemi}
        else:
            lobe = f["lobe"] if rng.random() < 0.5 else pick(rng, list(LOBE_NAMES))
            place = LOBE_NAMES[lobe]
            ans = any(g["type"] == f["type"] and g["lobe"] == lobe for g in fs)
            extra = {"lobe": lobe}
        q = pick(rng, LOBE_Q).format(name=finding_name(f), place=place)
        return q, yes_no(ans, rng), {"question": "lobe", "finding": f["type"], **extra, "answer": "yes" if ans else "no"}
    if kind == "contrast":
        c = labels["contrast"] if rng.random() < 0.5 else pick(rng, list(CONTRAST_NAMES))
        ans = c == labels["contrast"]
        q = pick(rng, CONTRAST_Q).format(contrast=CONTRAST_NAMES[c])
        return q, yes_no(ans, rng), {"question": "contrast", "contrast": c, "answer": "yes" if ans else "no"}
    ans = any(f["enhancing"] for f in fs)
    return pick(rng, ENHANCE_Q), yes_no(ans, rng), {"question": "enhancement", "finding": "lesion", "answer": "yes" if ans else "no"}


def _sides(items: list[dict[str, Any]]) -> str:
    sides = sorted({f["side"] for f in items})
    return "Both sides." if len(sides) == 2 else f"{cap(sides[0])}."


def open_question(labels: dict[str, Any], rng: Rng) -> tuple[str, str, dict[str, Any]]:
    """(question, answer, task labels) of a free-text question answerable from the labels."""
    fs = labels["findings"]
    contrast = labels.get("contrast")
    opts: list[tuple[str, Any]] = [("abnormality", None)]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for f in fs:
        by_type.setdefault(f["type"], []).append(f)
    for t, items in by_type.items():
        if t in ("nodule", "consolidation", "lesion"):
            opts.append(("where", t))
        if t in ("nodule", "lesion"):
            opts.append(("size", t))
        if t in ("effusion", "pneumothorax"):
            opts.append(("side", t))
        if t == "effusion":
            opts.append(("grade", t))
        if t == "pneumothorax":
            opts.append(("ptx_size", t))
        if t == "consolidation":
            opts.append(("extent", t))
        if t == "lesion":
            opts.append(("hemisphere", t))
    if labels["family"] == "chest":
        opts += [("ctr", "cardiomegaly"), ("view", None)]
    else:
        opts.append(("contrast", None))
    kind, t = opts[int(rng.integers(len(opts)))]
    items = by_type.get(t or "", [])
    name = finding_name(items[0]) if items else ""
    task: dict[str, Any] = {"question": kind, "finding": t}
    if kind == "abnormality":
        q = pick(rng, ABN_Q)
        if fs:
            a = cap(join([finding_phrase(f, contrast) for f in fs])) + "."
        else:
            a = "No abnormality; this is a normal chest radiograph." if labels["family"] == "chest" else "No focal lesion is seen."
        task["findings"] = [f["type"] for f in fs]
    elif kind == "where":
        q = pick(rng, WHERE_Q).format(name=name)
        a = cap(join([f"in {location(f)}" for f in items])) + "."
        task["locations"] = [f.get("lobe") if t != "lesion" else [f["hemisphere"], f["lobe"]] for f in items]
    elif kind == "size":
        q = pick(rng, SIZE_Q).format(name=name)
        a = cap(join([f"about {mm(f['size_mm'])} mm" + (f" ({location(f)})" if len(items) > 1 else "") for f in items])) + "."
        task["size_mm"] = [f["size_mm"] for f in items]
    elif kind == "side":
        q = pick(rng, SIDE_OPEN_Q).format(name=name)
        a = _sides(items)
        task["side"] = sorted({f["side"] for f in items})
    elif kind == "grade":
        q = pick(rng, GRADE_Q)
        a = cap(items[0]["grade"]) + "."
        task["grade"] = items[0]["grade"]
    elif kind == "ptx_size":
        q = pick(rng, PTX_SIZE_Q)
        a = f"{cap(items[0]['size'])}, with an apical rim of about {mm(items[0]['rim_mm'])} mm."
        task["size"] = items[0]["size"]
        task["rim_mm"] = items[0]["rim_mm"]
    elif kind == "extent":
        q = pick(rng, EXTENT_Q)
        a = f"{cap(items[0]['extent'])}, in the {LOBE_NAMES[items[0]['lobe']]}."
        task["extent"] = items[0]["extent"]
    elif kind == "hemisphere":
        q = pick(rng, HEMI_Q)
        hemis = sorted({f["hemisphere"] for f in items})
        a = "Both hemispheres." if len(hemis) == 2 else f"The {hemis[0]} hemisphere."
        task["hemisphere"] = hemis
    elif kind == "ctr":
        from .chest import heart_ctr

        ctr = heart_ctr(labels)
        q = pick(rng, CTR_Q)
        a = f"About {ctr:.2f}" + (", consistent with cardiomegaly." if by_type.get("cardiomegaly") else ", within normal limits.")
        task["ctr"] = round(ctr, 3)
    elif kind == "view":
        q = pick(rng, VIEW_Q)
        a = "Posteroanterior (PA) frontal projection."
        task["view"] = "PA"
    else:  # contrast
        q = pick(rng, CONTRAST_OPEN_Q)
        a = f"{CONTRAST_NAMES[labels['contrast']]}."
        a = cap(a)
        task["contrast"] = labels["contrast"]
    task["answer"] = a
    return q, a, task


# --- interleaved ----------------------------------------------------------------------------------

REMOVE_Q = [
    "Remove the {what} from this {modality}.",
    "Show this patient's {modality} without the {what}.",
    "What would this image look like without the {what}? Generate it.",
    "Generate a counterfactual image of the same patient with the {what} removed.",
]


def explanation(f: dict[str, Any], labels: dict[str, Any]) -> str:
    t = f["type"]
    if t == "nodule":
        return f"The {mm(f['size_mm'])} mm rounded opacity in the {LOBE_NAMES[f['lobe']]} is gone and that lung is aerated like its surroundings."
    if t == "consolidation":
        return f"The airspace opacity in the {LOBE_NAMES[f['lobe']]} has cleared, so the lung markings there are visible again."
    if t == "effusion":
        return f"The {f['side']} costophrenic angle is sharp again and the {f['side']} lung base is aerated."
    if t == "pneumothorax":
        return f"The {f['side']} lung re-expands to the chest wall: the pleural line disappears and the lung markings reach the periphery."
    if t == "cardiomegaly":
        return (f"The cardiac silhouette shrinks to a normal cardiothoracic ratio of "
                f"{labels['anatomy']['heart']['ctr']:.2f} (from {f['ctr']:.2f}).")
    if t == "lesion":
        return f"The {mm(f['size_mm'])} mm lesion in the {f['hemisphere']} {f['lobe']} lobe is replaced by normal-appearing white matter."
    raise ValueError(t)


def counterfactual_turns(labels: dict[str, Any], f: dict[str, Any], rng: Rng) -> tuple[str, str]:
    modality = "radiograph" if labels["family"] == "chest" else "MRI"
    what = finding_phrase(f, labels.get("contrast"))
    what = what.removeprefix("a ").removeprefix("an ")
    q = pick(rng, REMOVE_Q).format(what=what, modality=modality)
    a = pick(rng, [
        "This is the same patient's {modality} without the {what}. {why} Everything else is unchanged.",
        "Counterfactual {modality} of the same patient with the {what} removed. {why}",
    ]).format(modality=modality, what=what, why=explanation(f, labels))
    return q, a


def grade_value(f: dict[str, Any]) -> str:
    t = f["type"]
    if t == "effusion":
        return f"{f['grade']} ({f['height_fraction']:.0%} of the lung height)"
    if t == "pneumothorax":
        return f"{f['size']} (apical rim {mm(f['rim_mm'])} mm)"
    if t == "cardiomegaly":
        return f"a cardiothoracic ratio of {f['ctr']:.2f}"
    if t in ("nodule", "lesion"):
        return f"{mm(f['size_mm'])} mm"
    if t == "consolidation":
        return f"{f['extent']} ({mm(f['area_mm2'])} mm2)"
    raise ValueError(t)


EDIT_Q = {
    "up": [
        "Show how the {name} in this {modality} would look if it progressed.",
        "Generate a follow-up image of the same patient in which the {name} has worsened.",
        "Edit this image so that the {name} is one grade larger.",
    ],
    "down": [
        "Show how the {name} in this {modality} would look if it regressed.",
        "Generate a follow-up image of the same patient in which the {name} has improved.",
        "Edit this image so that the {name} is one grade smaller.",
    ],
}


def edit_turns(labels: dict[str, Any], before: dict[str, Any], after: dict[str, Any], direction: str,
               rng: Rng) -> tuple[str, str]:
    modality = "radiograph" if labels["family"] == "chest" else "MRI"
    name = finding_name(before)
    q = pick(rng, EDIT_Q[direction]).format(name=name, modality=modality)
    verb = "increased" if direction == "up" else "decreased"
    a = pick(rng, [
        "Follow-up image of the same patient: the {name} has {verb} from {a} to {b}; everything else is unchanged.",
        "Here the {name} has {verb} from {a} to {b} in {where}.",
    ]).format(name=name, verb=verb, a=grade_value(before), b=grade_value(after), where=location(before))
    return q, a


def super_resolution_turns(labels: dict[str, Any], factor: int, rng: Rng) -> tuple[str, str]:
    modality = "radiograph" if labels["family"] == "chest" else "MRI"
    size = labels["size"]
    q = pick(rng, [
        "Upscale this low-resolution {modality} by {f}x.",
        "Increase the resolution of this {modality} {f}-fold.",
        "Reconstruct the full-resolution {modality} from this {f}x downsampled image.",
    ]).format(modality=modality, f=factor)
    a = f"Here is the {size}x{size} image at {factor}x the input resolution ({labels['spacing_mm']:.2f} mm per pixel)."
    return q, a


def cross_modal_turns(labels: dict[str, Any], target: str, rng: Rng) -> tuple[str, str]:
    src = CONTRAST_NAMES[labels["contrast"]]
    tgt = CONTRAST_NAMES[target]
    q = pick(rng, [
        "Translate this {src} brain MRI into a {tgt} image of the same slice.",
        "Synthesise the {tgt} image of this slice from the {src} image.",
        "Generate the {tgt} contrast of the same anatomy.",
    ]).format(src=src, tgt=tgt)
    fs = labels["findings"]
    if fs:
        sig = "bright" if target in ("T2", "FLAIR") else "dark"
        tail = f" The {'lesions appear' if len(fs) > 1 else 'lesion appears'} {sig} on the {tgt} image."
    else:
        tail = ""
    return q, f"Here is the {tgt} image of the same slice.{tail}"


def reconstruction_turns(labels: dict[str, Any], deg: dict[str, Any], rng: Rng) -> tuple[str, str]:
    if deg["kind"] == "kspace_undersample":
        q = pick(rng, [
            "Reconstruct a fully sampled image from this {r}x undersampled, zero-filled MRI.",
            "Remove the aliasing from this accelerated ({r}x) MR acquisition.",
        ]).format(r=deg["acceleration"])
        a = f"Reconstructed {CONTRAST_NAMES[labels['contrast']]} image without undersampling artefacts."
    else:
        q = pick(rng, [
            "Denoise this low-dose chest radiograph.",
            "Reconstruct the full-dose image from this noisy low-dose radiograph.",
        ])
        a = "Reconstructed full-dose chest radiograph."
    return q, a


def text_only_turns(labels: dict[str, Any], rng: Rng) -> tuple[str, str, dict[str, Any]]:
    findings, _ = report(labels, rng)
    q, a, task = open_question(labels, rng) if rng.random() < 0.5 else closed_question(labels, rng)
    what = "chest radiograph" if labels["family"] == "chest" else "brain MRI"
    prompt = pick(rng, [
        'A {what} report reads: "{findings}" {q}',
        "Report of a {what}:\n{findings}\nQuestion: {q}",
    ]).format(what=what, findings=findings, q=q)
    return prompt, a, task


def report_structure_turns(labels: dict[str, Any], rng: Rng) -> tuple[str, str]:
    findings, impression = report(labels, rng)
    q = pick(rng, [
        "Write the IMPRESSION for these findings:\nFINDINGS: {f}",
        "Summarise the following findings as an impression.\nFINDINGS: {f}",
    ]).format(f=findings)
    return q, f"IMPRESSION: {impression}"


REPORT_Q = {
    "chest": [
        "Write a radiology report for this chest radiograph.",
        "Describe the findings of this chest X-ray in a structured report.",
        "Please provide the FINDINGS and IMPRESSION for this radiograph.",
    ],
    "brain": [
        "Write a radiology report for this brain MRI slice.",
        "Describe the findings of this MR image in a structured report.",
        "Please provide the FINDINGS and IMPRESSION for this MRI.",
    ],
}
CAPTION_Q = ["Describe this image.", "Write a caption for this image.", "What does this image show?", "Caption this medical image."]

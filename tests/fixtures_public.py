"""Tiny copies of the public datasets' real layouts, with planted bad items, for adapter tests.

Each `build_*` writes one dataset under `root` and returns what ingesting it must give:
`seen` (input items), `by_task`, `by_split`, `reasons` (quarantine reason -> count) and extras.
Images are small seeded noise so every build is byte-identical.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage


# --- files -----------------------------------------------------------------------------------------


def image_bytes(seed: int, size: tuple[int, int] = (24, 32), *, rgb: bool = False, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (*size, 3) if rgb else size
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def write_image(path: Path, seed: int, **kw: Any) -> Path:
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    return write(path, image_bytes(seed, fmt=fmt, **kw))


def truncated_jpeg_bytes(seed: int = 99) -> bytes:
    data = image_bytes(seed, (64, 64), rgb=True, fmt="JPEG")
    return data[: len(data) // 2]


def write_truncated_jpeg(path: Path) -> Path:
    return write(path, truncated_jpeg_bytes())


def write_zero_byte(path: Path) -> Path:
    return write(path, b"")


def write_text_as_image(path: Path) -> Path:
    return write(path, "this is a text file, not a PNG\n")


def outside_image(tmp: Path, name: str = "outside.png") -> Path:
    """An image outside every input folder (target of escapes and symlinks)."""
    return write_image(tmp / "outside" / name, 12345)


def expect(seen: int, by_task: dict[str, int], by_split: dict[str, int], reasons: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {"seen": seen, "by_task": by_task, "by_split": by_split, "reasons": Counter(reasons), **extra}


# --- SLAKE -----------------------------------------------------------------------------------------


def _slake_q(qid: int, img: str, question: str, answer: str, lang: str, answer_type: str, modality: str) -> dict:
    return {"img_id": int(img.split("/")[0].removeprefix("xmlab")), "img_name": img, "question": question,
            "answer": answer, "q_lang": lang, "location": "Lung", "modality": modality,
            "answer_type": answer_type, "content_type": "Organ", "base_type": "vqa", "triple": ["vhead", "_", "_"],
            "qid": qid}


def build_slake(root: Path, tmp: Path | None = None) -> dict[str, Any]:
    for i in (0, 1, 2, 6):
        write_image(root / f"imgs/xmlab{i}/source.jpg", i, rgb=True)
    write_truncated_jpeg(root / "imgs/xmlab3/source.jpg")
    write_zero_byte(root / "imgs/xmlab4/source.jpg")
    write_text_as_image(root / "imgs/xmlab5/source.png")
    train = [
        _slake_q(1, "xmlab0/source.jpg", "Does the picture contain lung?", "Yes", "en", "CLOSED", "X-Ray"),
        _slake_q(2, "xmlab0/source.jpg", "图中主要器官是什么？", "肺", "zh", "OPEN", "X-Ray"),
        _slake_q(3, "xmlab1/source.jpg", "Which organ is abnormal?", "Liver", "en", "OPEN", "CT"),
        _slake_q(4, "xmlab3/source.jpg", "What is shown?", "Brain", "en", "OPEN", "MRI"),  # truncated
        {k: v for k, v in _slake_q(5, "xmlab1/source.jpg", "x", "y", "en", "OPEN", "CT").items() if k != "question"},
    ]
    validation = [
        _slake_q(6, "xmlab2/source.jpg", "What modality is used?", "MRI", "en", "OPEN", "MRI"),
        _slake_q(7, "xmlab2/source.jpg", "这张图片是核磁共振吗？", "是", "zh", "CLOSED", "MRI"),
        _slake_q(8, "xmlab4/source.jpg", "Is this normal?", "No", "en", "CLOSED", "CT"),  # zero bytes
    ]
    test = [
        _slake_q(9, "xmlab5/source.png", "Is this normal?", "No", "en", "CLOSED", "CT"),  # text file
        _slake_q(10, "xmlab6/source.jpg", "Is there a nodule?", "No", "en", "CLOSED", "CT"),
    ]
    for name, rows in (("train.json", train), ("validation.json", validation), ("test.json", test)):
        write(root / name, json.dumps(rows, ensure_ascii=False, indent=1))
    return expect(10, {"vqa_closed": 3, "vqa_open": 3}, {"train": 3, "val": 2, "test": 1},
                  {"truncated_image": 1, "missing_field": 1, "empty_file": 1, "not_an_image": 1},
                  by_lang={"en": 4, "zh": 2}, by_modality={"xray": 2, "ct": 2, "mri": 2})


# --- VQA-RAD ---------------------------------------------------------------------------------------


def build_vqa_rad(root: Path, tmp: Path | None = None) -> dict[str, Any]:
    folder = root / "VQA_RAD Image Folder"
    for i, name in enumerate(("synpic100.jpg", "synpic200.jpg", "synpic300.jpg")):
        write_image(folder / name, 100 + i)

    def q(qid: int, image: str, question: str, answer: Any, answer_type: str, phrase: str) -> dict:
        return {"qid": qid, "phrase_type": phrase, "qid_linked_id": f"{qid:04d}", "image_case_url": "https://example",
                "image_name": image, "image_organ": "HEAD", "evaluation": "evaluated", "question": question,
                "question_rephrase": "NULL", "question_relation": "NULL", "question_frame": "NULL",
                "question_type": "PRES", "answer": answer, "answer_type": answer_type}

    rows = [
        q(1, "synpic100.jpg", "Is this an MRI?", "Yes", "CLOSED", "freeform"),
        q(2, "synpic100.jpg", "Where is the lesion?", "left frontal lobe", "OPEN", "para"),
        q(3, "synpic200.jpg", "What imaging modality is this?", "CT", "OPEN", "test_freeform"),
        q(4, "synpic200.jpg", "Is there a fracture?", "no", "CLOSED", "test_para"),
        q(5, "synpic300.jpg", "How many lesions are there?", 2, "OPEN", "freeform"),
        q(6, "synpic400.jpg", "Is this normal?", "yes", "CLOSED", "freeform"),  # image missing
        q(7, "synpic300.jpg", "Is the heart enlarged?", "", "CLOSED", "freeform"),  # empty answer
        q(8, "/etc/hostname", "Is this normal?", "yes", "CLOSED", "freeform"),  # absolute path
    ]
    write(root / "VQA_RAD Dataset Public.json", json.dumps(rows, indent=1))
    return expect(8, {"vqa_closed": 2, "vqa_open": 3}, {"test": 2},
                  {"missing_file": 1, "missing_field": 1, "path_escape": 1},
                  by_modality={"mri": 2, "ct": 2, "other": 1})


# --- PathVQA ---------------------------------------------------------------------------------------


def build_path_vqa(root: Path, tmp: Path | None = None) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    img = {k: image_bytes(200 + i, rgb=True, fmt="PNG") for i, k in enumerate("ABCD")}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), ("question", pa.string()), ("answer", pa.string())])

    def table(rows: list[tuple[bytes, str | None, str]]) -> pa.Table:
        return pa.table({
            "image": [{"bytes": b, "path": None} for b, _, _ in rows],
            "question": [q for _, q, _ in rows],
            "answer": [a for _, _, a in rows],
        }, schema=schema)

    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table([
        (img["A"], "Is this stained with H&E?", "yes"),
        (img["A"], "Which organ is this?", "liver"),
        (img["B"], "What is shown?", "necrosis"),
        (b"this is not an image at all", "Is this normal?", "yes"),  # not an image
        (img["B"], None, "no"),  # missing question
    ]), root / "data/train-00000-of-00001.parquet")
    pq.write_table(table([
        (img["C"], "Is there inflammation?", "no"),
        (truncated_jpeg_bytes(), "Is this benign?", "yes"),  # truncated
    ]), root / "data/validation-00000-of-00001.parquet")
    pq.write_table(table([(img["D"], "What is present?", "fibrosis")]), root / "data/test-00000-of-00001.parquet")
    return expect(8, {"vqa_closed": 2, "vqa_open": 3}, {"train": 3, "val": 1, "test": 1},
                  {"not_an_image": 1, "missing_field": 1, "truncated_image": 1})


# --- PMC-VQA ---------------------------------------------------------------------------------------


def build_pmc_vqa(root: Path, tmp: Path | None = None) -> dict[str, Any]:
    write_image(root / "images/PMC111_F1.jpg", 301, rgb=True)
    write_image(root / "images/PMC111_F2.jpg", 302, rgb=True)
    write_image(root / "images/PMC222_F1.png", 303)
    write_image(root / "PMC333_F1.jpg", 304, rgb=True)  # at the top level, not in images/
    header = "Figure_path,Question,Answer,Choice A,Choice B,Choice C,Choice D,Answer_label\n"
    train = (
        header
        + "PMC111_F1.jpg,Which imaging modality was used?,CT scan,A:MRI,B:CT scan,C:X-ray,D:Ultrasound,B\n"
        + 'PMC111_F2.jpg,"What does the arrow show, on the left?",A mass,A: A mass,B: A cyst,C: Normal,D: Fluid,A\n'
        + "PMC333_F1.jpg,What is seen?,Fluid,A:Gas,B:Bone,C:Fluid,D:Fat,C\n"
    ).encode()
    train += "PMC111_F1.jpg,Qu'est-ce que c'est?,Caf\u00e9,A:Caf\u00e9,B:Th\u00e9,C:Eau,D:Lait,A\n".encode("latin-1")
    train += b"PMC111_F1.jpg,Too few columns,A\n"
    train += b"/abs/PMC444_F1.jpg,Absolute?,x,A:x,B:y,C:z,D:w,A\n"
    train += b"PMC111_F2.jpg,No answer label?,,A:x,B:y,C:z,D:w,\n"
    write(root / "train.csv", train)
    write(root / "test.csv", header
          + "PMC222_F1.png,Is this a chest radiograph?,Yes,A:Yes,B:No,,,A\n"
          + "PMC999_F1.jpg,Missing figure?,x,A:x,B:y,C:z,D:w,A\n")
    return expect(9, {"vqa_closed": 4}, {"train": 3, "test": 1},
                  {"invalid_encoding": 1, "malformed_csv": 1, "path_escape": 1, "missing_field": 1, "missing_file": 1})


# --- IU X-ray --------------------------------------------------------------------------------------


def build_iu_xray(root: Path, tmp: Path | None = None) -> dict[str, Any]:
    views = {"CXR1_IM-0001": 2, "CXR2_IM-0002": 1, "CXR3_IM-0003": 2, "CXR4_IM-0004": 1, "CXR6_IM-0006": 1}
    for n, (study, k) in enumerate(views.items()):
        for v in range(k):
            write_image(root / f"images/{study}/{v}.png", 400 + 10 * n + v)

    def entry(study: str, report: str, k: int, split: str) -> dict:
        return {"id": study, "report": report, "image_path": [f"{study}/{v}.png" for v in range(k)], "split": split}

    doc = {
        "train": [entry("CXR1_IM-0001", "the heart is normal in size. the lungs are clear.", 2, "train"),
                  entry("CXR2_IM-0002", "no acute cardiopulmonary abnormality.", 1, "train"),
                  entry("CXR5_IM-0005", "images are missing for this one.", 1, "train")],
        "val": [entry("CXR3_IM-0003", "mild cardiomegaly. no effusion.", 2, "val")],
        "test": [entry("CXR4_IM-0004", "left lower lobe opacity xxxx pneumonia.", 1, "test"),
                 entry("CXR6_IM-0006", "   ", 1, "test")],
    }
    write(root / "annotation.json", json.dumps(doc, indent=1))
    return expect(6, {"report": 4}, {"train": 2, "val": 1, "test": 1}, {"missing_file": 1, "missing_field": 1},
                  images_per_record=[1, 1, 2, 2])


# --- MIMIC-CXR -------------------------------------------------------------------------------------

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough and fever.

 COMPARISON:  ___

 FINDINGS:
 The lungs are clear without focal consolidation.  No pleural effusion or
 pneumothorax is seen.  The cardiac silhouette is normal.

 IMPRESSION:
 No acute cardiopulmonary process.
"""


def build_mimic_cxr(root: Path, tmp: Path | None = None) -> dict[str, Any]:
    f = root / "files/p10"
    write(f / "p10000001/s50000001.txt", MIMIC_REPORT)
    write_image(f / "p10000001/s50000001/d1-lat.jpg", 501)
    write_image(f / "p10000001/s50000001/d2-pa.jpg", 502)
    write_image(f / "p10000001/s50000001/d3-ap.jpg", 503)
    write(f / "p10000001/s50000002.txt", MIMIC_REPORT.replace("No acute", "Stable, no acute"))  # no images
    write(f / "p10000002/s50000003.txt", "Chest radiograph: no change from prior.\n")
    write_image(f / "p10000002/s50000003/d4.jpg", 504)
    write(f / "p10000003/s50000004.txt", "FINDINGS: Caf\u00e9-au-lait.\n".encode("latin-1"))  # not UTF-8
    write_zero_byte(f / "p10000003/s50000005.txt")
    write(f / "p10000004/s50000006.txt", MIMIC_REPORT)
    write_truncated_jpeg(f / "p10000004/s50000006/d5.jpg")
    # Subjects with two text-only studies each and no split-CSV row: split by subject.
    for s in range(12):
        for k in range(2):
            write(f / f"p100001{s:02d}/s6{s:02d}{k:05d}.txt", f"IMPRESSION: Finding {s}-{k}, unchanged.\n")
    write(root / "mimic-cxr-2.0.0-metadata.csv",
          "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
          "d1-lat,10000001,50000001,CHEST (PA AND LAT),LATERAL,3056,2544\n"
          "d2-pa,10000001,50000001,CHEST (PA AND LAT),PA,3056,2544\n"
          "d3-ap,10000001,50000001,CHEST (PORTABLE AP),AP,3056,2544\n")
    write(root / "mimic-cxr-2.0.0-split.csv",
          "dicom_id,study_id,subject_id,split\n"
          "d1-lat,50000001,10000001,train\nd2-pa,50000001,10000001,train\nd3-ap,50000001,10000001,train\n"
          "x,50000002,10000001,train\nd4,50000003,10000002,validate\nd5,50000006,10000004,test\n")
    return expect(30, {"report": 2, "text_only": 25}, {}, {"invalid_encoding": 1, "empty_file": 1, "truncated_image": 1},
                  known_splits={"10000001/50000001": "train", "10000001/50000002": "train", "10000002/50000003": "val"})


# --- ROCO ------------------------------------------------------------------------------------------


def build_roco(root: Path, tmp: Path) -> dict[str, Any]:
    train = root / "train/radiology"
    write_image(train / "images/PMC100_fig1.jpg", 601, rgb=True)
    write_image(train / "images/PMC200_fig2.jpg", 602)
    (train / "images").mkdir(parents=True, exist_ok=True)
    os.symlink(outside_image(tmp, "roco_target.jpg"), train / "images/ROCO_00005.jpg")
    write(train / "licences.txt", "ROCO_ID,PMC_ID,CC\nROCO_00001,PMC100_fig1.jpg,CC BY\n")
    write(train / "dlinks.txt", "ROCO_00002\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/aa/bb/"
          "PMC200.tar.gz -P /path/to/Dir\tfig2.jpg\n")
    write(train / "captions.txt",
          "ROCO_00001\t CT scan of the chest showing a nodule in the right upper lobe.\n"
          "ROCO_00002\t Axial MRI of the brain with a ring-enhancing lesion.\n"
          "ROCO_00003 a line without a tab\n"
          "ROCO_00004\t   \n"
          "ROCO_00005\t Chest radiograph (symlink pointing outside the input).\n".encode()
          + "ROCO_00006\t Caf\u00e9 image\n".encode("latin-1"))  # not UTF-8
    val = root / "validation/radiology"
    write_image(val / "images/ROCO_00007.jpg", 607)
    write(val / "captions.txt", "ROCO_00007\t Ultrasound of the liver showing a hypoechoic lesion.\n")
    test = root / "test/non-radiology"
    write_image(test / "images/ROCO_00008.png", 608, rgb=True)
    write(test / "captions.txt", "ROCO_00008\t Clinical photograph of the CT room.\n")
    return expect(8, {"caption": 4}, {"train": 2, "val": 1, "test": 1},
                  {"malformed_csv": 1, "missing_field": 1, "path_escape": 1, "invalid_encoding": 1},
                  by_modality={"ct": 1, "mri": 1, "ultrasound": 1, "other": 1})


def build_roco_flat(root: Path, tmp: Path | None = None) -> dict[str, Any]:
    write_image(root / "images/ROCO_00001.jpg", 651)
    write_image(root / "images/ROCO_00002.png", 652)
    write(root / "captions.txt", "ROCO_00001\tChest X-ray, PA view.\nROCO_00002\tAn unlabelled figure.\n")
    return expect(2, {"caption": 2}, {}, {})


# --- image folder ----------------------------------------------------------------------------------


def build_imagefolder(root: Path, tmp: Path) -> dict[str, Any]:
    for i, name in enumerate(("a.png", "b.png", "c.png", "d.png")):
        write_image(root / name, 700 + i)
    outside = outside_image(tmp, "imagefolder_target.png")
    os.symlink(outside, root / "link.png")
    write_image(root.parent / "escape.png", 799)  # what ../escape.png would reach
    rows = [
        "image,text,task,question,split,modality,patient",
        "a.png,A chest radiograph.,caption,,train,xray,P1",
        "a.png,yes,vqa_closed,Is there an effusion?,train,X-Ray,P1",
        "b.png,An axial CT slice of the abdomen.,t2i,,,ct,P2",
        "c.png,Normal brain MRI.,report,,,MR,P3",
        "d.png,x,vqa_open,,,,P4",  # missing question
        "a.png,x,caption,,bogus,,P5",  # bad split
        "a.png,x,caption,,,spaceship,P6",  # bad modality
        "a.png,x,segmentation,,,,P7",  # bad task
        "../escape.png,x,caption,,,,P8",
        f"{outside},x,caption,,,,P9",  # absolute
        "link.png,x,caption,,,,P10",  # symlink leaving the folder
    ]
    rows += [f"{'abcd'[s % 4]}.png,Caption {s}-{k}.,caption,,,,Q{s}" for s in range(6) for k in range(2)]
    write(root / "metadata.csv", "\n".join(rows) + "\n")
    return expect(23, {"caption": 13, "vqa_closed": 1, "t2i": 1, "report": 1}, {},
                  {"missing_field": 1, "invalid_value": 3, "path_escape": 3})


def build_imagefolder_latin1(root: Path, tmp: Path | None = None) -> dict[str, Any]:
    write_image(root / "a.png", 750)
    text = "image,text\na.png,Radiographie du thorax\na.png,Épanchement pleural\na.png,Opacité basale\n"
    write(root / "data.csv", text.encode("latin-1"))
    return expect(3, {"caption": 1}, {}, {"invalid_encoding": 2})


# --- UniMedVL JSONL --------------------------------------------------------------------------------


def build_unimedvl_jsonl(root: Path, tmp: Path) -> dict[str, Any]:
    write_image(root / "imgs/x.png", 801)
    write_image(root / "imgs/y.png", 802)
    outside = outside_image(tmp, "jsonl_target.png")

    def rec(**kw: Any) -> str:
        base = {"main_task_type": "understanding", "sub_task_type": "vqa_open", "modality": "ct",
                "dataset": "demo_set", "input_img": [{"path": "imgs/x.png", "height": 24, "width": 32}],
                "output_img": [], "message": [{"from": "human", "value": "<image>\nWhat organ is shown?"},
                                              {"from": "gpt", "value": "Liver"}]}
        base.update(kw)
        return json.dumps({k: v for k, v in base.items() if v is not ...}, ensure_ascii=False)

    lines = [
        rec(id="r1", split="train"),
        rec(id="r2", main_task_type="generation", sub_task_type="t2i", modality="X-Ray", split="validation",
            input_img=[], output_img=[{"path": "imgs/y.png", "height": 24, "width": 32}],
            message=[{"from": "human", "value": "Generate a chest X-ray with a left effusion."},
                     {"from": "gpt", "value": "This is the resulting image."}]),
        rec(id="r3", main_task_type="text_only", sub_task_type="text_only", modality="none", input_img=[],
            message=[{"from": "human", "value": "Summarise: no acute findings."}, {"from": "gpt", "value": "Normal."}]),
        '{"main_task_type": "understanding",',  # malformed JSON
        rec(id="r5", message=...),  # missing message
        rec(id="r6", modality="spaceship"),
        rec(id="r7", input_img=[{"path": str(outside)}]),  # absolute path
        "[1, 2]",  # not an object
        rec(id="r9", message=[{"from": "human", "value": "What organ?"}, {"from": "gpt", "value": "Liver"}]),
        rec(id="r10", main_task_type="generation"),
    ]
    write(root / "a.jsonl", "\n".join(lines) + "\n")
    write(root / "more/b.jsonl", rec(id="r4", sub_task_type="caption", split="test", lang="en",
                                     input_img=[{"path": "imgs/y.png", "height": 24, "width": 32}],
                                     message=[{"from": "human", "value": "<image>\nDescribe the image."},
                                              {"from": "gpt", "value": "An axial CT of the abdomen."}]) + "\n")
    return expect(11, {"vqa_open": 1, "t2i": 1, "text_only": 1, "caption": 1}, {},
                  {"malformed_json": 2, "missing_field": 1, "invalid_value": 3, "path_escape": 1})


# --- OmniMedVQA (QA_information/<access>/<dataset>.json + Images/) ----------------------------------

BENCH_SIZE = (40, 48)  # QC's min_side is 32: the benchmark fixtures also pass QC


def _omni_q(qid: str, image: str, question: str, answer: str, options: list[str], **extra: Any) -> dict:
    item = {"dataset": qid.rsplit("_", 1)[0], "question_id": qid, "question_type": "Disease Diagnosis",
            "question": question, "gt_answer": answer, "image_path": image,
            "modality_type": "Fundus Photography"}
    item.update({f"option_{k}": v for k, v in zip("ABCD", options)})
    item.update(extra)
    return item


def build_omnimedvqa(root: Path, tmp: Path) -> dict[str, Any]:
    """The release's layout; `letters` maps each accepted question_id to its correct letter."""
    for i, name in enumerate(("Im001_ACRIMA.png", "Im002_ACRIMA.png")):
        write_image(root / "Images/ACRIMA" / name, 700 + i, size=BENCH_SIZE)
    write_image(root / "Images/Chest CT Scan/ct_001.png", 710, size=BENCH_SIZE)
    write_image(root / "Images/AIDA/slide_01.png", 711, size=BENCH_SIZE, rgb=True)  # placed by the user
    write_truncated_jpeg(root / "Images/ACRIMA/broken.jpg")
    os.symlink(outside_image(tmp, "omni_out.png"), root / "Images/ACRIMA/link.png")
    a1, a2 = "Images/ACRIMA/Im001_ACRIMA.png", "Images/ACRIMA/Im002_ACRIMA.png"
    acrima = [
        _omni_q("ACRIMA_0000", a1, "What imaging technique was employed to obtain this picture?", "Fundus imaging",
                ["PET scan", "CT scan", "Blood test", "Fundus imaging"], question_type="Modality Recognition"),
        _omni_q("ACRIMA_0001", a1, "Is there glaucoma in this image?", "No", ["No", "Yes"]),
        _omni_q("ACRIMA_0002", a2, "Written by Dr. Quentin R. Marsh: what is the diagnosis?", "Glaucoma.",
                ["Normal", "Cataract", "glaucoma"]),
        _omni_q("ACRIMA_0003", a2, "Which disease?", "Retinoblastoma", ["Normal", "Glaucoma"]),  # no such option
        _omni_q("ACRIMA_0004", a2, "", "Normal", ["Normal", "Glaucoma"]),  # empty question
        _omni_q("ACRIMA_0000", a2, "A second item with a used id?", "Normal", ["Normal", "Glaucoma"]),
        _omni_q("ACRIMA_0005", "Images/../../outside/omni_out.png", "Escape?", "Normal", ["Normal", "Glaucoma"]),
        _omni_q("ACRIMA_0006", "/etc/hostname", "Absolute?", "Normal", ["Normal", "Glaucoma"]),
        _omni_q("ACRIMA_0007", "Images/ACRIMA/link.png", "Symlink out?", "Normal", ["Normal", "Glaucoma"]),
        _omni_q("ACRIMA_0008", "Images/ACRIMA/Im404_ACRIMA.png", "Missing image?", "Normal", ["Normal", "Glaucoma"]),
        _omni_q("ACRIMA_0009", "Images/ACRIMA/broken.jpg", "Corrupt image?", "Normal", ["Normal", "Glaucoma"]),
        "not an object",
        _omni_q("ACRIMA_0010", a1, "One option only?", "Normal", ["Normal"]),
    ]
    write(root / "QA_information/Open-access/ACRIMA.json", json.dumps(acrima, indent=1))
    ct = [_omni_q("Chest CT Scan_0000", "Images/Chest CT Scan/ct_001.png", "Which organ is shown?", "Lung",
                  ["Liver", "Lung", "Kidney", "Brain"], question_type="Anatomy Identification")]
    ct[0]["modality"] = ct[0].pop("modality_type").replace("Fundus Photography", "CT(Computed Tomography)")
    write(root / "QA_information/Open-access/Chest CT Scan.json", json.dumps(ct))
    aida = [_omni_q("AIDA_0000", "Images/AIDA/slide_01.png", "Which stain?", "H&E", ["IHC", "H&E", "PAS"],
                    modality_type="Microscopy Images"),
            _omni_q("AIDA_0001", "Images/AIDA/slide_02.png", "Which stain?", "IHC", ["IHC", "H&E", "PAS"],
                    modality_type="Microscopy Images")]  # restricted access: the image is not shipped
    write(root / "QA_information/Restricted-access/AIDA.json", json.dumps(aida))
    letters = {"ACRIMA_0000": "D", "ACRIMA_0001": "A", "ACRIMA_0002": "C", "Chest CT Scan_0000": "B", "AIDA_0000": "B"}
    return expect(16, {"vqa_closed": 5}, {"test": 5},
                  {"invalid_value": 1, "missing_field": 2, "duplicate_id": 1, "path_escape": 3, "missing_file": 2,
                   "truncated_image": 1, "malformed_json": 1},
                  letters=letters, modalities={"ACRIMA_0000": "fundus", "Chest CT Scan_0000": "ct",
                                               "AIDA_0000": "histology"})


# --- GMAI-MMBench (VLMEvalKit's TSV, base64 images) --------------------------------------------------

GMAI_COLUMNS = ["index", "question", "A", "B", "C", "D", "E", "answer", "image", "category", "l2-category",
                "modality", "clinical VQA task", "department", "perceptual granularity", "split"]


def b64_image(seed: int, **kw: Any) -> str:
    import base64

    return base64.b64encode(image_bytes(seed, BENCH_SIZE, **kw)).decode()


def huge_png_b64() -> str:
    """A 1-bit PNG of 8100 x 8100 pixels (over the 64 Mpx cap) in a few KB of base64."""
    import base64

    buf = io.BytesIO()
    PILImage.new("1", (8100, 8100)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def gmai_row(index: Any, question: str, options: list[str], answer: str, image: str, split: str | None = "VAL",
             **extra: str) -> dict[str, str]:
    row = {"index": str(index), "question": question, "answer": answer, "image": image,
           "category": "Disease Diagnosis", "l2-category": "", "modality": "CT",
           "clinical VQA task": "Disease Diagnosis", "department": "Pulmonary Medicine",
           "perceptual granularity": "Image Level", "split": split or ""}
    row.update({k: v for k, v in zip("ABCDE", [*options, "", "", "", "", ""])})
    row.update(extra)
    return row


def tsv(rows: list[dict[str, str]], columns: list[str] = GMAI_COLUMNS) -> bytes:
    lines = ["\t".join(columns)] + ["\t".join(r.get(c, "") for c in columns) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def build_gmai_mmbench(root: Path, tmp: Path) -> dict[str, Any]:
    """VLMEvalKit's GMAI-MMBench_VAL.tsv and one TEST part; `letters` maps split/index -> letter."""
    import base64

    write_image(root / "imgs/meta_only.png", 820, size=BENCH_SIZE)
    opts5 = ["Pneumonia", "Normal", "Nodule", "Effusion", "Fibrosis"]
    val = [
        gmai_row(1, "What abnormality is seen in this CT?", opts5, "B", b64_image(801)),
        gmai_row(2, "Which finding is shown?", opts5[:4], "D", "1"),  # image shared with row 1 by index
        gmai_row(3, "Which finding, again?", opts5[:3], "A", "14"),  # refers to a later row (its image_path)
        gmai_row(4, "Bad base64?", opts5[:2], "A", "!" * 80),
        gmai_row(5, "Seen by Dr. Quentin R. Marsh: which lobe?", ["Upper", "Middle", "Lower"], "c",
                 b64_image(805, rgb=True), modality="X-ray"),
        gmai_row(6, "Answer beyond the choices?", opts5[:3], "E", b64_image(806)),
        gmai_row(1, "A second row with index 1?", opts5[:2], "A", b64_image(807)),
        gmai_row(8, "", opts5[:2], "A", b64_image(808)),  # empty question
        gmai_row(10, "Not an image?", opts5[:2], "A", base64.b64encode(b"just some text, not a PNG " * 4).decode()),
        gmai_row(11, "Too many pixels?", opts5[:2], "A", huge_png_b64()),
        gmai_row(13, "Escaping image_path?", opts5[:2], "A", "", image_path="../outside/x.png"),
        gmai_row(14, "Meta-only row?", opts5[:2], "B", "", image_path="imgs/meta_only.png", modality="Dermoscopy"),
    ]
    data = tsv(val, GMAI_COLUMNS + ["image_path"])
    data += b"9\ttoo few fields\n"
    data += "12\tCaf\u00e9?\tA\tB\t\t\t\tA\t\t\t\t\t\t\t\t\tVAL\t\n".encode("latin-1")
    write(root / "GMAI-MMBench_VAL.tsv", data)
    test_cols = [c for c in GMAI_COLUMNS if c != "split"]
    write(root / "GMAI_mm_bench_TEST_part_1.tsv", tsv([
        gmai_row(1, "Which department?", opts5[:2], "A", b64_image(830), split=None),
        gmai_row(2, "Refers to no row?", opts5[:2], "A", "999", split=None),
    ], test_cols))
    letters = {"val/1": "B", "val/2": "D", "val/3": "A", "val/5": "C", "val/14": "B", "test/1": "A"}
    return expect(16, {"vqa_closed": 6}, {"val": 5, "test": 1},
                  {"invalid_base64": 1, "invalid_value": 1, "duplicate_id": 1, "missing_field": 2, "not_an_image": 1,
                   "image_too_large": 1, "path_escape": 1, "malformed_csv": 1, "invalid_encoding": 1},
                  letters=letters, modalities={"val/1": "ct", "val/5": "xray", "val/14": "dermatology"})


BUILDERS = {
    "slake": build_slake,
    "vqa_rad": build_vqa_rad,
    "path_vqa": build_path_vqa,
    "pmc_vqa": build_pmc_vqa,
    "iu_xray": build_iu_xray,
    "mimic_cxr": build_mimic_cxr,
    "roco": build_roco,
    "imagefolder": build_imagefolder,
    "unimedvl_jsonl": build_unimedvl_jsonl,
    "omnimedvqa": build_omnimedvqa,
    "gmai_mmbench": build_gmai_mmbench,
}


def build_all(tmp: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every dataset under tmp/<name>; returns name -> (input folder, expectations)."""
    out = {}
    for name, builder in BUILDERS.items():
        root = tmp / name
        root.mkdir(parents=True)
        out[name] = (root, builder(root, tmp))
    return out

"""Builders for the training tests: a small shard folder with every task category, a tokenizer and a
tiny model folder (what the autoencoder stage would write), all in a few seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unimedvl.data.images import encode_png
from unimedvl.data.schema import SUB_TO_MAIN, Record, Turn
from unimedvl.data.shards import DatasetWriter

TASK_TEXT = {
    "text_only": ("Write a chest radiograph report.", "FINDINGS: normal heart size. IMPRESSION: normal."),
    "report_structure": ("FINDINGS: clear lungs.\nWrite the impression.", "No acute disease."),
    "vqa_open": ("<image>\nWhich imaging modality is this?", "MRI"),
    "vqa_closed": ("<image>\nIs this an axial slice?", "Yes."),
    "caption": ("<image>\nDescribe this image.", "Axial MRI of the brain."),
    "t2i": ("Generate an axial brain MRI image.", "Here is the generated image."),
    "edit": ("<image>\nAdd a lesion in the left hemisphere.", "Here is the edited image."),
}


def _image(seed: int, size: int = 64, blob: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.normal(0, 3, 2)
    arr = 200 * np.exp(-(((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * (size / 4) ** 2)))
    if blob:
        arr += 55 * (((yy - size / 3) ** 2 + (xx - size / 3) ** 2) < (size / 10) ** 2)
    return np.clip(arr + rng.integers(0, 10, (size, size)), 0, 255).astype(np.uint8)


def make_dataset(out: Path, per_task: int = 12, tasks: tuple[str, ...] | None = None, splits=("train", "val")) -> Path:
    """Records of every task (or of `tasks`) in the given splits, 64 px images."""
    w = DatasetWriter(Path(out), step="qc")
    n = 0
    for split in splits:
        for task in tasks or tuple(TASK_TEXT):
            q, a = TASK_TEXT[task]
            for i in range(per_task):
                n += 1
                inputs = [encode_png(_image(n))] if "<image>" in q else []
                outputs = [encode_png(_image(n, blob=task == "edit"))] if task in ("t2i", "edit") else []
                rec = Record(
                    id=f"r{n}", dataset="test", modality="mri" if inputs or outputs else "none",
                    main_task_type=SUB_TO_MAIN[task], sub_task_type=task, split=split, lang="en",
                    license="CC0", source_uri="test://", patient_key=f"p{n % 7}",
                    message=[Turn("human", q + (f" case {i}" if "<image>" not in q else "")), Turn("gpt", a)],
                    input_img=inputs, output_img=outputs,
                )
                w.add("test", rec)
    w.close()
    return Path(out)


def make_tokenizer(data: Path, out: Path, vocab: int = 320):
    from unimedvl.model.tokenizer import train_tokenizer
    from unimedvl.train.data import all_texts

    return train_tokenizer(all_texts(data), vocab, Path(out) / "tokenizer.json")


def make_model_folder(data: Path, out: Path, seed: int = 0) -> Path:
    """What the autoencoder stage writes, without fitting: tokenizer + tiny model (random AE)."""
    from dataclasses import replace

    import torch

    from unimedvl.model.checkpoint import save_model
    from unimedvl.model.config import PRESETS
    from unimedvl.model.unimedvl import build_model

    out = Path(out)
    tok = make_tokenizer(data, out)
    torch.manual_seed(seed)
    cfg = PRESETS["tiny"]
    cfg = cfg.replace(llm=replace(cfg.llm, vocab_size=tok.vocab_size))
    model = build_model(cfg, special=tok.special)
    save_model(model, out, lineage={"extra": {"stage": "autoencoder"}}, tokenizer=tok)
    return out

"""BAGEL's sequence layout, per task type, against hand-written expected layouts: which blocks in which
order, the rotary position of every token, each block's attention mode and which tokens carry CE.
Training (`record_to_sample`) and inference (`chat_layout`) must produce the same layout."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from unimedvl.model.config import PRESETS
from unimedvl.model.layout import ImageInput, chat_layout
from unimedvl.model.unimedvl import DEFAULT_SPECIAL, Dropped, LatentImage, Text, VitImage, drop_conditions, pack
from unimedvl.train.curriculum import get_curriculum
from unimedvl.train.data import record_to_sample

CFG = PRESETS["tiny"]
SP = DEFAULT_SPECIAL
IMG = torch.zeros(3, 32, 32)  # ViT: 4x4 patches = 16 tokens; latent: 2x2 = 4 tokens
VIT_N, LAT_N = 16 + 2, 4 + 2


class CharTokenizer:
    special = SP

    def encode(self, s: str) -> list[int]:
        return [100 + ord(c) % 200 for c in s]


TOK = CharTokenizer()
U = len("user\n") + 1  # <bos>user\n
A = len("\nassistant\n") + 2  # <eos>\n<bos>assistant\n


def runs(segments):
    """The packed sample as [(kind, n_tokens, first position, last position, mode)] per split."""
    b = pack([segments], CFG, SP)
    out, start = [], 0
    splits = b.layout.split.tolist()
    vit = set(b.vit_index.tolist()) if b.vit_index is not None else set()
    lat = set(b.latent_index.tolist()) if b.latent_index is not None else set()
    while start < b.length:
        end = start
        while end < b.length and splits[end] == splits[start]:
            end += 1
        inner = set(range(start, end))
        kind = "vit" if inner & vit else "latent" if inner & lat else "text"
        mode = "noise" if bool(b.layout.noise[start]) else "full" if bool(b.layout.full[start]) else "causal"
        pos = b.position_ids[start:end].tolist()
        if kind != "text":
            assert len(set(pos)) == 1, "an image block shares one position"
        else:
            assert pos == list(range(pos[0], pos[0] + len(pos))), "text positions are consecutive"
        out.append((kind, end - start, pos[0], pos[-1], mode))
        start = end
    return out, b


def test_understanding_vqa():
    segs = chat_layout(TOK, [ImageInput(vit=IMG), "Where?"], target="left")
    got, b = runs(segs)
    q, ans = len("Where?"), len("left") + 1
    assert got == [
        ("text", U, 0, U - 1, "causal"),
        ("vit", VIT_N, U, U, "full"),
        ("text", q, U + 1, U + q, "causal"),
        ("text", A, U + q + 1, U + q + A, "causal"),
        ("text", ans, U + q + A + 1, U + q + A + ans, "causal"),
    ]
    assert b.ce_labels.tolist() == [*TOK.encode("left"), SP.eos]
    assert b.ce_index.tolist()[0] == b.length - ans - 1  # the first answer token from the assistant prefix


def test_text_only():
    got, _ = runs(chat_layout(TOK, ["hi"], target="yo"))
    assert got == [("text", U, 0, U - 1, "causal"), ("text", 2, U, U + 1, "causal"),
                   ("text", A, U + 2, U + 1 + A, "causal"), ("text", 3, U + 2 + A, U + 4 + A, "causal")]


def test_an_answer_given_as_token_ids_is_one_target_as_the_string_is():
    as_ids = chat_layout(TOK, ["hi"], target=TOK.encode("yo"))
    assert as_ids == chat_layout(TOK, ["hi"], target="yo")
    assert as_ids[-1] == Text([*TOK.encode("yo"), SP.eos], supervised=True)


def test_text_to_image():
    got, b = runs(chat_layout(TOK, ["a scan"], target=IMG))
    n = len("a scan")
    assert got == [("text", U, 0, U - 1, "causal"), ("text", n, U, U + n - 1, "causal"),
                   ("text", A, U + n, U + n + A - 1, "causal"), ("latent", LAT_N, U + n + A, U + n + A, "noise")]
    assert b.next_positions == [U + n + A]  # no advance after a noised block


def test_edit_puts_the_clean_latent_before_the_vit_block():
    got, _ = runs(chat_layout(TOK, [ImageInput(vit=IMG, latent=IMG), "add"], target=IMG))
    assert got == [
        ("text", U, 0, U - 1, "causal"),
        ("latent", LAT_N, U, U, "full"),        # the image being edited, clean, first
        ("vit", VIT_N, U + 1, U + 1, "full"),   # then its ViT view
        ("text", 3, U + 2, U + 4, "causal"),
        ("text", A, U + 5, U + 4 + A, "causal"),
        ("latent", LAT_N, U + 5 + A, U + 5 + A, "noise"),
    ]


def test_interleaved_multi_step_positions_do_not_advance_after_a_noised_block():
    segs = chat_layout(TOK, [ImageInput(vit=IMG), "then"], target=[IMG, "ok", IMG])
    got, b = runs(segs)
    p = U + 1 + 4 + A  # after template, vit, "then", assistant prefix
    assert got[-3:] == [("latent", LAT_N, p, p, "noise"), ("text", 3, p, p + 2, "causal"),
                        ("latent", LAT_N, p + 3, p + 3, "noise")]
    # "ok" right after a noised block: its first token is not predicted from the noisy end marker.
    assert b.ce_labels.tolist() == [TOK.encode("ok")[1], SP.eos]


def test_dropped_conditions_keep_their_slot_and_dropped_text_vanishes():
    segs = chat_layout(TOK, [ImageInput(vit=IMG, latent=IMG), "add"], target=IMG)
    every = CFG.replace(text_cond_dropout=1.0, vit_cond_dropout=1.0, vae_cond_dropout=1.0)
    dropped = drop_conditions(segs, every, random.Random(0))
    assert [type(s).__name__ for s in dropped] == ["Text", "Dropped", "Dropped", "Text", "LatentImage"]
    got, _ = runs(dropped)
    assert got == [("text", U, 0, U - 1, "causal"), ("text", A, U + 2, U + 1 + A, "causal"),
                   ("latent", LAT_N, U + 2 + A, U + 2 + A, "noise")]
    assert isinstance(dropped[1], Dropped)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("task", ["vqa_open", "edit", "t2i"])
def test_training_records_use_the_inference_layout(task):
    spec = get_curriculum("tiny")["stage2"]
    png = _png(np.full((32, 32), 128, np.uint8))
    human = "<image>\nWhat is it?" if task != "t2i" else "A chest X-ray"
    row = {"id": "r", "sub_task_type": task, "message": [{"from": "human", "value": human},
                                                         {"from": "gpt", "value": "A lung."}],
           "input_img": [{"bytes": png}] if task != "t2i" else [], "output_img": [{"bytes": png}] if task != "vqa_open" else []}
    sample = record_to_sample(row, TOK, spec, CFG)
    from unimedvl.train.data import image_tensor

    vit = image_tensor(png, spec.vit_resolution)
    lat = image_tensor(png, spec.vae_resolution)
    user = [] if task == "t2i" else [ImageInput(vit=vit, latent=lat if task == "edit" else None)]
    user += [human.split("<image>")[-1]]
    target = "A lung." if task == "vqa_open" else image_tensor(png, spec.vae_resolution)
    want = chat_layout(TOK, user, target, max_text_tokens=spec.max_text_tokens)
    assert runs(sample.segments)[0] == runs(want)[0]
    kinds = [type(s).__name__ for s in sample.segments]
    if task == "edit":
        assert kinds.index("LatentImage") < kinds.index("VitImage")
    assert all(isinstance(s, Text | VitImage | LatentImage) for s in sample.segments)

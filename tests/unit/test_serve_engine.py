"""The serving engine without a server: prompt layout = training layout, text scrubbed at the door,
gradient x input heatmaps, report splitting, request parsing."""

from __future__ import annotations

import pytest
import torch

from tests.serve_helpers import make_tiny_model, png_bytes
from unimedvl.config import ServeConfig
from unimedvl.model.unimedvl import Text, VitImage
from unimedvl.serve.engine import Engine, split_report
from unimedvl.serve.explain import explain_answer, heatmap, patch_scores
from unimedvl.serve.schemas import ServeError, finish, parse_v1


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(1)
    return Engine(make_tiny_model(tmp_path_factory.mktemp("m") / "model"), ServeConfig(max_question_tokens=40))


def test_vqa_context_is_the_training_layout(engine):
    from unimedvl.train.curriculum import StageSpec
    from unimedvl.train.data import record_to_sample

    img = png_bytes(size=(64, 64))
    question = "Is there a pleural effusion?"
    row = {"id": "r", "sub_task_type": "vqa_closed", "input_img": [{"bytes": img}], "output_img": [],
           "message": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": "yes"}]}
    spec = StageSpec(name="stage3", lr=1e-3, steps=1, mixture={"i2t": 1.0}, vit_resolution=64)
    want = record_to_sample(row, engine.tok, spec, engine.model.cfg).segments[:-1]  # without the answer
    got = engine._context(engine.prepare(finish({"task": "vqa", "image": img, "question": question}, 0, engine.cfg)))
    assert [type(s) for s in got] == [type(s) for s in want]
    flat = lambda segs: [i for s in segs if isinstance(s, Text) for i in s.ids]  # noqa: E731
    assert flat(got) == flat(want)
    gv, wv = (next(s for s in segs if isinstance(s, VitImage)).image for segs in (got, want))
    assert torch.equal(gv, wv)


def test_question_is_scrubbed_before_the_model_sees_it(engine):
    inst = finish({"task": "vqa", "image": png_bytes(), "question": "Mrs Zebrafinch, MRN 12345678, seen 2021-03-04: nodule?"},
                  0, engine.cfg)
    seen = engine.tok.decode(engine.prepare(inst).text_ids)
    assert "12345678" not in seen and "2021-03-04" not in seen and "Zebrafinch" not in seen and "nodule?" in seen
    assert "[" not in seen  # values dropped, not replaced by placeholders


def test_question_token_limit_names_field_and_instance(engine):
    with pytest.raises(ServeError) as e:
        engine.prepare(finish({"task": "explain", "image": png_bytes(), "question": "lung " * 80}, 3, engine.cfg))
    assert e.value.status_code == 422 and e.value.field == "question" and e.value.instance == 3


def test_gradient_x_input_is_zero_where_the_input_is_zero(engine):
    image = torch.rand(3, 64, 64) * 2 - 1
    image[:, :, :32] = 0.0  # left half: no input, so no attribution whatever the gradient
    ctx = [Text([engine.tok.special.bos]), VitImage(image), Text(engine.tok.encode("Where is the lesion?"))]
    scores = patch_scores(engine.model, ctx, engine.tok.encode("left"))
    assert scores.shape == (8, 8)
    assert torch.all(scores[:, :4] == 0) and torch.all(scores[:, 4:] > 0)
    heat = heatmap(engine.model, ctx, engine.tok.encode("left"), (100, 120))
    assert heat.shape == (100, 120) and heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    assert heat[:, :40].max() < heat[:, 70:].mean()
    # Model weights get no gradient from explaining.
    assert all(p.grad is None for p in engine.model.parameters())


def test_split_report():
    assert split_report("FINDINGS: Clear lungs. IMPRESSION: Normal.") == {"findings": "Clear lungs.", "impression": "Normal."}
    assert split_report("no headings") == {"findings": "", "impression": ""}


def test_v1_parsing_rejects_the_whole_request_naming_the_instance():
    cfg = ServeConfig()
    good = {"task": "generate", "prompt": "chest"}
    assert [i.task for i in parse_v1({"instances": [good, good]}, cfg)] == ["generate", "generate"]
    with pytest.raises(ServeError) as e:
        parse_v1({"instances": [good, {"task": "generate", "prompt": "chest", "guidance": 99.0}]}, cfg)
    assert (e.value.status_code, e.value.field, e.value.instance) == (422, "guidance", 1)
    with pytest.raises(ServeError) as e:
        parse_v1({"instances": [{"task": "generate", "prompt": "   "}]}, cfg)
    assert (e.value.status_code, e.value.field) == (422, "prompt")


def test_library_explain_is_what_the_server_returns(engine):
    """Evaluation's pointing game calls `explain_answer`; it must match the `explain` task."""
    import numpy as np

    inst = finish({"task": "explain", "image": png_bytes(size=(64, 64), seed=4), "question": "Is there a nodule?",
                   "max_new_tokens": 4}, 0, engine.cfg)
    prepared = engine.prepare(inst)
    served = engine.run([prepared])[0]
    answer_ids = engine.model.generate_texts([engine._context(prepared)], max_new_tokens=4)[0]
    lib = explain_answer(engine.model, engine.tok, prepared.image, "Is there a nodule?", answer_ids, (64, 64))
    assert np.allclose(lib, served["heatmap"], atol=1e-6) and lib.max() == pytest.approx(1.0)

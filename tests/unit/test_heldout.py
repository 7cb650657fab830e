"""The fixed held-out set: chosen once from val across families and sources, refused for other data,
and measured identically by consecutive stages (stage2's start is stage1's end, to the digit)."""

from __future__ import annotations

import json

import pytest

from tests.train_helpers import TASK_TEXT, _image, make_dataset, make_model_folder
from unimedvl.config import Params
from unimedvl.data.images import encode_png
from unimedvl.data.schema import SUB_TO_MAIN, Record, Turn
from unimedvl.data.shards import DatasetWriter
from unimedvl.train.heldout import HELDOUT_FILE, run_heldout, select_heldout
from unimedvl.train.stages import StageError, run_stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _two_sources(out, n_a=5, n_b=2):
    w = DatasetWriter(out, step="qc")
    k = 0
    for ds, n in (("alpha", n_a), ("beta", n_b)):
        for task in ("vqa_open", "text_only"):
            for i in range(n):
                k += 1
                q, a = TASK_TEXT[task]
                rec = Record(id=f"{ds}{task}{i}", dataset=ds, modality="mri" if "<image>" in q else "none",
                             main_task_type=SUB_TO_MAIN[task], sub_task_type=task, split="val", lang="en",
                             license="CC0", source_uri="test://", patient_key=f"p{k}",
                             message=[Turn("human", q), Turn("gpt", f"{a} {i}")],
                             input_img=[encode_png(_image(k))] if "<image>" in q else [], output_img=[])
                w.add(ds, rec)
    w.close()
    return out


def test_selection_round_robins_sources_and_flags_short_families(tmp_path):
    data = _two_sources(tmp_path / "qc")
    s = select_heldout(data, tmp_path / "h", per_family=4)
    i2t = s["families"]["i2t"]
    assert i2t["n"] == 4 and i2t["by_source"] == {"alpha": 2, "beta": 2} and i2t["flag"] is None
    assert s["families"]["t2i"] == {"n": 0, "available": 0, "by_source": {}, "flag": "absent from the val split",
                                    "answer_chars": 0}
    big = select_heldout(data, tmp_path / "h2", per_family=64)
    assert big["families"]["i2t"]["n"] == 7 and big["families"]["i2t"]["flag"] == "only 7 in the val split (< 64)"
    again = select_heldout(data, tmp_path / "h3", per_family=4)
    assert (tmp_path / "h" / HELDOUT_FILE).read_text() == (tmp_path / "h3" / HELDOUT_FILE).read_text() and again == s


def test_stages_measure_the_same_set_on_the_weights_the_next_one_starts_from(tmp_path):
    data = make_dataset(tmp_path / "qc", per_task=4)
    ae = make_model_folder(data, tmp_path / "models" / "autoencoder")
    params = Params(train={"backend": "local", "grid_steps": 2, "checkpoint_every": 100},
                    stage1={"steps": 3, "max_tokens": 400}, stage2={"steps": 2, "max_tokens": 400},
                    heldout={"per_family": 3}, tracking={"enabled": False})
    held = tmp_path / "heldout"
    summary = run_heldout(data, held, params)
    assert summary["n"] == 12 and json.loads((tmp_path / "heldout.metrics.json").read_text())["n"] == 12
    s1 = run_stage("stage1", data, tmp_path / "models" / "stage1", params, prev_dir=ae, progress=False,
                   checkpoint_dir=tmp_path / "ck1", heldout_dir=held)
    s2 = run_stage("stage2", data, tmp_path / "models" / "stage2", params, progress=False,
                   checkpoint_dir=tmp_path / "ck2", heldout_dir=held)
    assert s1["heldout_end"]["weights"] == "ema" and s1["next_stage_starts_from"] == "ema"
    assert s2["heldout_start"]["families"] == s1["heldout_end"]["families"]  # same weights, samples, noise
    fam = s1["heldout_end"]["families"]
    assert set(fam) == {"text_only", "t2i", "i2t", "interleaved"} and fam["i2t"]["ce"] > 0 and fam["t2i"]["mse"] > 0
    d = s1["heldout_delta"]["ce_ema"]
    assert d["ci_low"] <= d["value"] <= d["ci_high"] and d["n_boot"] == 1000
    assert s1["heldout_end_raw"]["weights"] == "raw" and s1["heldout_set"]["n"] == 12
    # A set chosen from other data is refused.
    other = make_dataset(tmp_path / "other", per_task=2)
    with pytest.raises(StageError, match="another version"):
        run_stage("stage1", other, tmp_path / "models" / "x", params, prev_dir=ae, progress=False,
                  checkpoint_dir=tmp_path / "ck3", heldout_dir=held)
    with pytest.raises(StageError, match="holds no heldout.json"):
        run_stage("stage1", data, tmp_path / "models" / "x", params, prev_dir=ae, progress=False,
                  checkpoint_dir=tmp_path / "ck4", heldout_dir=tmp_path / "nothing")

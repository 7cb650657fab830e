"""The ViT warm-up (train/vit_warmup.py): its targets, and that it gives a random ViT finding features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimedvl.config import VitWarmupConfig
from unimedvl.evaluate.schema import FINDINGS
from unimedvl.train.vit_warmup import finding_targets, warm_up_vit


def test_targets_come_from_the_first_input_images_ground_truth():
    labels = {"input": [{"findings": [{"type": "effusion"}, {"type": "nodule"}, {"type": "nodule"}]},
                        {"findings": [{"type": "lesion"}]}]}
    y = finding_targets(labels)
    assert y == [float(f in ("effusion", "nodule")) for f in FINDINGS]
    assert finding_targets({"input": [{"findings": []}]}) == [0.0] * len(FINDINGS)
    # real records carry no ground truth: left out, not counted as finding-free
    assert finding_targets(None) is None
    assert finding_targets({"input": []}) is None
    assert finding_targets({"input": [{"anatomy": {}}]}) is None


@pytest.fixture(scope="module")
def phantoms():
    from unimedvl.evaluate.judge import phantom_set

    imgs, labels, _ = phantom_set(700, seed=4242, image_size=64, min_visible_px=3.0)
    x = torch.from_numpy(imgs).float().div(127.5).sub(1)[:, None].expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(labels)


def test_warm_up_gives_the_random_vit_finding_features(phantoms, one_torch_thread):
    from unimedvl.model.config import get_preset
    from unimedvl.model.unimedvl import build_model

    torch.manual_seed(0)
    vit = build_model(get_preset("tiny")).vit_model  # the pipeline's initialisation, not torch's default
    vit.requires_grad_(False)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    x, y = phantoms
    out = warm_up_vit(vit, x, y, VitWarmupConfig(steps=250, lr=2e-3, batch_size=11), seed=0)
    assert out["steps"] == 250 and out["heldout_images"] == 70
    auroc = out["heldout_auroc"]
    # the heart's size is the easiest finding to see; the mean over findings must be far above chance
    assert auroc["cardiomegaly"] >= 0.9, auroc
    assert np.mean([v for v in auroc.values() if v is not None]) >= 0.7, auroc
    assert out["loss_end"] < out["loss_start"]
    assert any(not torch.equal(before[k], v) for k, v in vit.state_dict().items())
    # the stage's freezing is left as it was
    assert not any(p.requires_grad for p in vit.parameters())


def test_no_steps_or_too_few_images_leave_the_vit_untouched(phantoms):
    from unimedvl.model.config import get_preset
    from unimedvl.model.vision import VisionModel

    vit = VisionModel(get_preset("tiny").vit)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    x, y = phantoms
    assert "no steps" in warm_up_vit(vit, x, y, VitWarmupConfig(steps=0), seed=0)["skipped"]
    assert "< 20" in warm_up_vit(vit, x[:5], y[:5], VitWarmupConfig(steps=10), seed=0)["skipped"]
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())

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


def test_lse_pooling_counts_a_finding_in_one_patch_that_the_mean_dilutes():
    from unimedvl.config import VitWarmupConfig
    from unimedvl.train import vit_warmup

    feats = torch.zeros(2, 64, 4)
    feats[0, 17, 0] = 8.0  # one patch of image 0 shows the finding
    head = torch.nn.Linear(4, 1, bias=False).requires_grad_(False)
    head.weight.data = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    orig = vit_warmup._patch_features
    vit_warmup._patch_features = lambda vit, images, p, s: feats
    try:
        class _Cfg:  # the ViT's patch geometry, all image_logits reads from the model
            vision_model = type("V", (), {"cfg": type("C", (), {"patch_size": 8, "patches_per_side": 8})})()
        lse = vit_warmup.image_logits(_Cfg(), head, torch.zeros(2, 3, 64, 64), VitWarmupConfig(pooling="lse", lse_sharpness=4))
        mean = vit_warmup.image_logits(_Cfg(), head, torch.zeros(2, 3, 64, 64), VitWarmupConfig(pooling="mean"))
    finally:
        vit_warmup._patch_features = orig
    assert float(mean[0, 0]) == pytest.approx(8 / 64)  # the mean of 64 patches: diluted
    # (1/r) log mean exp(r s): log(63 + e^32) / 4 - log(64) / 4, close to the patch's 8 minus log(64)/4
    assert float(lse[0, 0]) == pytest.approx((np.logaddexp(np.log(63), 32) - np.log(64)) / 4, rel=1e-5)
    assert float(lse[0, 0]) > 6.9 and float(lse[1, 0]) == pytest.approx(0.0, abs=1e-6)


def test_abnormal_only_auroc_sees_through_a_score_that_only_tells_abnormal_from_normal():
    from unimedvl.train.vit_warmup import _auroc_per_finding

    rng = np.random.default_rng(0)
    y = np.zeros((400, len(FINDINGS)))
    for i in range(200):  # half the images carry one random finding, half none
        y[i, rng.integers(len(FINDINGS))] = 1
    abnormal = np.repeat(y.sum(1, keepdims=True), len(FINDINGS), axis=1)  # the same "abnormal" score for all
    specific = y + rng.normal(0, 0.1, y.shape)
    all_imgs, only = _auroc_per_finding(y, abnormal), _auroc_per_finding(y, abnormal, abnormal_only=True)
    # over all images it looks like a detector of every finding (positives 1; negatives 0 when normal,
    # 1 when they have another finding: 0.77 here)
    assert min(all_imgs.values()) > 0.75
    # among the abnormal images of its family it tells nothing; the brain's lone finding has no such test
    assert only["lesion"] is None
    assert max(v for v in only.values() if v is not None) == pytest.approx(0.5)
    specific_only = _auroc_per_finding(y, specific, abnormal_only=True)
    assert min(v for v in specific_only.values() if v is not None) > 0.95
    # a score that only tells brain from chest passes the lesion over all images, and is not credited
    # for the chest findings among abnormal chest images
    brain = np.repeat(y[:, [FINDINGS.index("lesion")]], len(FINDINGS), axis=1)
    assert _auroc_per_finding(y, brain)["lesion"] == pytest.approx(1.0)
    assert _auroc_per_finding(y, brain, abnormal_only=True)["nodule"] == pytest.approx(0.5)


def _presence_folder(out, n_per_answer=16, other=4, real=2):
    """Phantom-style presence questions whose answer the image's brightness fixes, `other` phantom
    questions of another kind and `real` records without ground truth (these two are no presence question)."""
    from unimedvl.data.images import encode_png
    from unimedvl.data.schema import SUB_TO_MAIN, Record, Turn
    from unimedvl.data.shards import DatasetWriter

    w = DatasetWriter(out, step="qc")
    k = 0
    for present in (True, False) * n_per_answer + (None,) * other:
        k += 1
        level = 200 if present else 30
        img = np.clip(level + np.random.default_rng(k).integers(0, 20, (64, 64)), 0, 255).astype(np.uint8)
        task = {"question": "presence", "finding": "effusion", "answer": "yes" if present else "no"} if present is not None \
            else {"question": "side", "finding": "effusion", "answer": "yes"}
        w.add("phantom", Record(
            id=f"q{k}", dataset="phantom", modality="xray", main_task_type=SUB_TO_MAIN["vqa_closed"],
            sub_task_type="vqa_closed", split="train", lang="en", license="CC0", source_uri="phantom://",
            patient_key=f"p{k}", message=[Turn("human", "<image>\nIs there a pleural effusion?"),
                                          Turn("gpt", "Yes." if present in (True, None) else "No.")],
            input_img=[encode_png(img)], labels={"generator": "unimedvl.phantoms", "task": task}))
    for j in range(real):
        w.add("test", Record(
            id=f"real{j}", dataset="test", modality="xray", main_task_type=SUB_TO_MAIN["vqa_closed"],
            sub_task_type="vqa_closed", split="train", lang="en", license="CC0", source_uri="test://",
            patient_key=f"r{j}", message=[Turn("human", "<image>\nIs there a pleural effusion?"), Turn("gpt", "No.")],
            input_img=[encode_png(np.full((64, 64), 90, dtype=np.uint8))]))
    w.close()
    return out


def _model_for(data, folder):
    """A small untrained model folder built on `data`: its model (EMA weights), tokenizer and the stage-1
    spec the warm-ups train with."""
    from unimedvl.config import Params
    from unimedvl.model.checkpoint import load_model
    from unimedvl.model.tokenizer import load_tokenizer
    from unimedvl.train.stages import stage_spec
    from train_helpers import make_model_folder

    folder = make_model_folder(data, folder)
    return load_model(folder, "ema")[0], load_tokenizer(folder), stage_spec(Params(), "stage1")


def test_question_warmup_trains_the_backbone_on_presence_questions_only(tmp_path, one_torch_thread):
    from unimedvl.config import QuestionWarmupConfig
    from unimedvl.model.sampling import prefill
    from unimedvl.train.data import ShardStore, record_to_sample
    from unimedvl.train.vit_warmup import is_presence_question, warm_up_questions

    data = _presence_folder(tmp_path / "qc")
    model, tok, spec = _model_for(data, tmp_path / "model")
    rows = [ShardStore(data).row(r) for r in ShardStore(data).by_category["i2t"]]
    assert sum(map(is_presence_question, rows)) == 32 and len(rows) == 38
    before = {k: v.clone() for k, v in model.state_dict().items()}
    yes, no = tok.encode("Yes")[0], tok.encode("No")[0]

    def margins():
        ctx = [record_to_sample(r, tok, spec, model.cfg).segments[:-1] for r in rows if is_presence_question(r)]
        with torch.no_grad():
            _, last = prefill(model.eval(), ctx)
            logits = model.language_model.lm_head(torch.stack(last)).float()
        return (logits[:, yes] - logits[:, no]).numpy()

    truth = np.array([r["message"][-1]["value"] == "Yes." for r in rows if is_presence_question(r)])
    model.vit_model.requires_grad_(False)  # as a caller may hand it over: partly frozen
    grads_before = [p.requires_grad for p in model.parameters()]
    out = warm_up_questions(model, tok, data, spec, QuestionWarmupConfig(steps=40, lr=2e-3), seed=0)
    assert out["steps"] == 40 and out["questions"] == 32 and out["ce_end"] < out["ce_start"]
    # 4 other phantom questions: one copy of each presence one; the 2 real records are left out
    assert out["presence_share"] == round(32 / 36, 3)
    m = margins()
    assert m[truth].min() > m[~truth].max()  # the image's brightness now decides every answer
    after = model.state_dict()
    changed = {k.split(".")[0] for k in after if not torch.equal(before[k], after[k])}
    assert "language_model" in changed and "connector" in changed
    assert not changed & {"vit_model", "autoencoder", "vit_pos_embed", "latent_pos_embed"}
    # the freezing the caller had is back (the stage-1 freezing applied only inside the warm-up)
    assert [p.requires_grad for p in model.parameters()] == grads_before
    skipped = warm_up_questions(model, tok, data, spec, QuestionWarmupConfig(steps=0), seed=0)
    assert skipped["steps"] == 0 and "no steps" in skipped["skipped"]


def test_shard_store_resample_oversamples_drops_and_keeps_to_the_categories(tmp_path):
    from unimedvl.train.data import ShardStore
    from unimedvl.train.vit_warmup import is_presence_question

    data = _presence_folder(tmp_path / "qc", n_per_answer=3, other=2, real=0)
    store = ShardStore(data)
    assert store.counts()["i2t"] == 8
    counts = store.resample(lambda ref: 3 if is_presence_question(store.row(ref)) else 0, categories=("i2t",))
    assert counts["i2t"] == 18 and sum(counts.values()) == 18
    rows = [store.row(r) for r in store.by_category["i2t"]]
    assert all(map(is_presence_question, rows)) and len({r["id"] for r in rows}) == 6
    from train_helpers import make_dataset

    mixed = ShardStore(make_dataset(tmp_path / "mixed", per_task=2, splits=("train",)))
    assert mixed.counts()["text_only"] > 0
    after = mixed.resample(lambda ref: 1, categories=("i2t",))
    assert after["text_only"] == 0 and after["i2t"] == 6  # vqa_open, vqa_closed, caption: 2 each


def _stripes(vertical: bool, k: int = 0) -> np.ndarray:
    """Vertical or horizontal 8 px stripes (a random autoencoder's group norms erase a constant image)."""
    bars = (np.arange(64) // 8 % 2 * 200 + 30)[None, :].repeat(64, 0)
    img = bars if vertical else bars.T
    return np.clip(img + np.random.default_rng(k).integers(0, 20, (64, 64)), 0, 255).astype(np.uint8)


def _t2i_folder(out, n_per_prompt=12, real=3):
    """Phantom-style text-to-image records whose prompt says "vertical" or "horizontal" stripes and
    whose image is that, and `real` t2i records without ground truth (left out of the warm-up)."""
    from unimedvl.data.images import encode_png
    from unimedvl.data.schema import SUB_TO_MAIN, Record, Turn
    from unimedvl.data.shards import DatasetWriter

    w = DatasetWriter(out, step="qc")
    for k, vertical in enumerate((True, False) * n_per_prompt):
        img = _stripes(vertical, k)
        w.add("phantom", Record(
            id=f"g{k}", dataset="phantom", modality="xray", main_task_type=SUB_TO_MAIN["t2i"], sub_task_type="t2i",
            split="train", lang="en", license="CC0", source_uri="phantom://", patient_key=f"p{k}",
            message=[Turn("human", f"Generate an image of {'vertical' if vertical else 'horizontal'} stripes."),
                     Turn("gpt", "Here is the generated frontal chest radiograph.")],
            output_img=[encode_png(img)], labels={"generator": "unimedvl.phantoms"}))
    for j in range(real):
        w.add("test", Record(
            id=f"real{j}", dataset="test", modality="xray", main_task_type=SUB_TO_MAIN["t2i"], sub_task_type="t2i",
            split="train", lang="en", license="CC0", source_uri="test://", patient_key=f"r{j}",
            message=[Turn("human", "Generate a frontal chest radiograph."), Turn("gpt", "Here it is.")],
            output_img=[encode_png(np.full((64, 64), 90, dtype=np.uint8))]))
    w.close()
    return out


def test_generation_warmup_learns_what_the_prompt_asks_for_on_phantom_t2i_only(tmp_path, one_torch_thread):
    from unimedvl.config import GenerationWarmupConfig
    from unimedvl.evaluate.sampling import context
    from unimedvl.train.data import ShardStore
    from unimedvl.train.vit_warmup import is_generation_expert, is_phantom_t2i, warm_up_generation

    data = _t2i_folder(tmp_path / "qc")
    model, tok, spec = _model_for(data, tmp_path / "model")
    store = ShardStore(data)
    rows = [store.row(r) for r in store.by_category["t2i"]]
    assert sum(map(is_phantom_t2i, rows)) == 24 and len(rows) == 27
    prompts = [r for r in rows if is_phantom_t2i(r)][:2]  # one vertical, one horizontal
    with torch.no_grad():  # the two targets' latents (the random autoencoder's decoder blurs them alike)
        targets = [model.autoencoder.encode(torch.from_numpy(_stripes(v)).float().div(127.5).sub(1).expand(1, 3, 64, 64))[0]
                   for v in (True, False)]

    def distances():
        """Each sampled latent's mean squared distance to the vertical and to the horizontal target [8, 2];
        the first four sampled for the vertical prompt, the last four for the horizontal one."""
        ctx = [context(r, tok, spec, model.cfg) for r in prompts for _ in range(4)]
        with torch.no_grad():
            z = torch.stack(model.eval().generate_images(ctx, num_steps=8, seeds=list(range(8)), return_latent=True))
        return torch.stack([((z - t) ** 2).mean(dim=(1, 2, 3)) for t in targets], dim=1)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.vit_model.requires_grad_(False)
    grads_before = [p.requires_grad for p in model.parameters()]
    untrained = distances()
    out = warm_up_generation(model, tok, data, spec, GenerationWarmupConfig(steps=60, lr=2e-3), seed=0)
    assert out["steps"] == 60 and out["records"] == 24 and out["mse_end"] < out["mse_start"]
    d = distances()
    # the prompt now picks which image is drawn: every sample is nearer the target its prompt asked for
    assert (d[:4, 0] < d[:4, 1]).all() and (d[4:, 1] < d[4:, 0]).all(), (d, untrained)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    # only the generation expert learnt: the understanding weights (which read prompts and answer
    # questions), the ViT and the autoencoder are as they were
    assert changed and all(map(is_generation_expert, changed)), sorted(k for k in changed if not is_generation_expert(k))
    assert any("_moe_gen" in k for k in changed) and "llm2vae.weight" in changed
    assert [p.requires_grad for p in model.parameters()] == grads_before
    skipped = warm_up_generation(model, tok, data, spec, GenerationWarmupConfig(steps=0), seed=0)
    assert skipped["steps"] == 0 and "no steps" in skipped["skipped"]

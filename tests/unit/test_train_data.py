"""Training data and the step: mixture sampling, token-budget packing, curriculum, frozen modules."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from tests.train_helpers import make_dataset, make_model_folder, make_tokenizer
from unimedvl.train.curriculum import PAPER, TINY, apply_freezing, normalise
from unimedvl.train.data import MixtureLoader, ShardStore, record_to_sample


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "qc", per_task=10)


@pytest.fixture(scope="module")
def tok(data, tmp_path_factory):
    return make_tokenizer(data, tmp_path_factory.mktemp("tok"))


def test_paper_preset_matches_table_12_and_normalises():
    s1, s2, s3 = (PAPER[s] for s in ("stage1", "stage2", "stage3"))
    assert (s1.lr, s2.lr, s3.lr) == (5e-5, 2.5e-5, 1e-5)
    assert (s1.steps, s2.steps, s3.steps) == (85_000, 120_000, 70_000)
    assert "vit" not in s1.frozen and "vit" in s2.frozen and "vit" in s3.frozen
    assert all("autoencoder" in s.frozen for s in (s1, s2, s3))
    p = s1.probabilities()  # 5 / 25 / 75 / 0 sums to 105
    assert math.isclose(sum(p.values()), 1.0) and math.isclose(p["i2t"], 75 / 105) and "interleaved" not in p
    assert normalise({"t2i": 45, "i2t": 40, "interleaved": 10}, available={"t2i", "i2t"}) == {"t2i": 45 / 85, "i2t": 40 / 85}
    assert TINY["stage3"].mixture == s3.mixture
    with pytest.raises(ValueError, match="selects no task"):
        normalise({"interleaved": 1}, available={"t2i"})


def test_mixture_sampling_matches_percentages(data, tok):
    """Chi-square goodness of fit of 4,000 category draws against the normalised stage-3 mixture."""
    spec = TINY["stage3"]
    loader = MixtureLoader(ShardStore(data), tok, spec, _cfg(tok))
    counts = dict.fromkeys(loader.probs, 0)
    n = 0
    for step in range(200):
        for k, (cat, _) in enumerate(loader.draws(step)):
            counts[cat] += 1
            n += 1
            if k == 19:
                break
    expected = {c: p * n for c, p in loader.probs.items()}
    chi2 = sum((counts[c] - expected[c]) ** 2 / expected[c] for c in counts)
    # 3 degrees of freedom: the 99.9th percentile is 16.27.
    assert chi2 < 16.27, (counts, expected)
    assert math.isclose(loader.probs["interleaved"], 25 / 100)


def test_packing_respects_budget_and_is_deterministic(data, tok):
    spec = TINY["stage3"].override(max_tokens=300)
    loader = MixtureLoader(ShardStore(data), tok, spec, _cfg(tok), seed=3)
    no_drop = spec.override(text_cond_dropout=0.0, vit_cond_dropout=0.0, vae_cond_dropout=0.0)
    exact = MixtureLoader(ShardStore(data), tok, no_drop, _cfg(tok), seed=3)
    for step in range(15):
        b = loader.batch(step)
        samples = loader.samples(step)
        # The packed sequence holds every position the model sees, one per sample token.
        assert 0 < b.tokens <= 300 and sum(b.packed.sample_lens) == b.packed.position_ids.numel() == b.tokens
        # Condition dropout can only shorten a sample, so the packed length stays within budget;
        # without dropout it is exactly the budget's count (count_tokens agrees with pack's layout).
        assert b.tokens <= sum(s.tokens for s in samples) <= 300
        assert exact.batch(step).tokens == sum(s.tokens for s in exact.samples(step))
        # Greedy filling: the packer stops only at the first draw that would overflow the budget.
        fitting = [t for t in (record_to_sample(loader.store.row(ref), tok, spec, _cfg(tok)).tokens
                               for _, ref in itertools.islice(loader.draws(step), len(samples) + 40)) if t <= 300]
        assert fitting[: len(samples)] == [s.tokens for s in samples]
        assert sum(fitting[: len(samples)]) + fitting[len(samples)] > 300
    again = MixtureLoader(ShardStore(data), tok, spec, _cfg(tok), seed=3).batch(7)
    first = loader.batch(7)
    assert torch.equal(first.packed.text_ids, again.packed.text_ids)
    assert first.categories == again.categories
    # Two workers draw different batches from disjoint rows.
    r0 = MixtureLoader(ShardStore(data), tok, spec, _cfg(tok), seed=3, rank=0, world_size=2)
    r1 = MixtureLoader(ShardStore(data), tok, spec, _cfg(tok), seed=3, rank=1, world_size=2)
    assert not set(r0.rows["t2i"]) & set(r1.rows["t2i"])


def test_stream_gives_the_same_batches_in_turn_and_prefetched(data, tok, monkeypatch):
    """The prefetch thread (used on accelerators) changes when batches are built, not what they are;
    its errors reach the consumer, and leaving the stream early stops it."""
    spec = TINY["stage2"].override(max_tokens=300)
    loader = MixtureLoader(ShardStore(data), tok, spec, _cfg(tok), seed=5)
    in_turn = list(loader.stream(3, 9))
    ahead = list(loader.stream(3, 9, prefetch=2))
    assert [b.step for b in ahead] == [b.step for b in in_turn] == list(range(3, 9))
    for a, b in zip(ahead, in_turn, strict=True):
        assert torch.equal(a.packed.text_ids, b.packed.text_ids) and a.categories == b.categories
    first = next(loader.stream(0, 50, prefetch=3))
    assert first.step == 0
    real_batch = loader.batch
    # Built lazily in turn by default, and at most `prefetch` (+ one waiting to be queued) ahead with the
    # thread: a stream of the whole stage never holds more than a few batches in memory.
    built = []
    monkeypatch.setattr(loader, "batch", lambda step: built.append(step) or real_batch(step))
    lazy = loader.stream(0, 50)
    next(lazy)
    time.sleep(0.3)  # time for a wrongly started producer to run ahead
    assert built == [0]
    lazy.close()
    built.clear()
    ahead = loader.stream(0, 50, prefetch=2)
    next(ahead)
    time.sleep(0.3)
    assert 2 <= len(built) <= 4, built
    ahead.close()

    def failing(step):
        if step == 4:
            raise ValueError("shard 2 is unreadable")
        return real_batch(step)

    monkeypatch.setattr(loader, "batch", failing)
    got = []
    with pytest.raises(ValueError, match="shard 2 is unreadable"):
        for b in loader.stream(0, 10, prefetch=2):
            got.append(b.step)
    assert got == [0, 1, 2, 3]


def test_prefetch_only_where_a_core_is_spare_or_the_step_runs_on_an_accelerator(monkeypatch):
    from unimedvl.train.data import prefetch_depth

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert prefetch_depth(torch.device("cpu"), 1) == 0  # the demo: one worker with both cores
    assert prefetch_depth(torch.device("cuda", 0), 1) == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert prefetch_depth(torch.device("cpu"), 1) == 2
    assert prefetch_depth(torch.device("cpu"), 2) == 0


def test_frozen_modules_do_not_change(data, tmp_path):
    from unimedvl.model.checkpoint import load_model
    from unimedvl.model.tokenizer import load_tokenizer
    from unimedvl.train.loop import (
        EMA,
        TrainModule,
        make_optimizer,
        make_scheduler,
        step_generator,
        train_step,
    )

    folder = make_model_folder(data, tmp_path / "ae")
    model, _ = load_model(folder)
    tok = load_tokenizer(folder)
    spec = TINY["stage2"].override(max_tokens=400, lr=1e-2)  # ViT and autoencoder frozen
    trainable = apply_freezing(model, spec.frozen)
    assert not any(n.startswith(("vit_model.", "autoencoder.")) for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loader = MixtureLoader(ShardStore(data), tok, spec, model.cfg)
    opt, ema = make_optimizer(model, spec), EMA(model, 0.99)
    sched = make_scheduler(opt, spec, 3)
    for step in range(3):
        train_step(TrainModule(model), loader.batch(step).packed, opt, sched, generator=step_generator(0, 2, step, 0),
                   ema=ema, ema_model=model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith(("vit_model.", "autoencoder.", "vit_pos_embed.", "latent_pos_embed.")) for n in changed)
    assert any(n.startswith("language_model.") for n in changed)
    assert any(n.startswith("connector.") for n in changed)  # trainable in stage 2


def test_lr_schedule_warmup_cosine_and_constant():
    from unimedvl.train.loop import lr_factor

    spec = TINY["stage1"].override(warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert lr_factor(0, spec) == pytest.approx(0.1) and lr_factor(9, spec) == pytest.approx(1.0)
    assert lr_factor(10, spec) == pytest.approx(1.0) and lr_factor(110, spec) == pytest.approx(0.1)
    assert lr_factor(60, spec) == pytest.approx(0.55)
    assert lr_factor(100, spec.override(schedule="constant")) == 1.0


def _cfg(tok):
    from dataclasses import replace

    from unimedvl.model.config import PRESETS

    cfg = PRESETS["tiny"]
    return cfg.replace(llm=replace(cfg.llm, vocab_size=tok.vocab_size))


def test_all_images_lists_every_input_and_output_image_of_the_split(data):
    from unimedvl.data.shards import read_table
    from unimedvl.train.data import all_images

    rows = read_table(data).to_pylist()
    want = {"train": [], "val": []}
    for r in rows:
        want[r["split"]] += [i["bytes"] for i in (r["input_img"] or []) + (r["output_img"] or [])]
    got = all_images(data, "train")
    assert sorted(got) == sorted(want["train"]) and any(r["output_img"] for r in rows if r["split"] == "train")
    assert sorted(all_images(data, "val")) == sorted(want["val"])
    few = all_images(data, "train", limit=5, seed=1)
    assert len(few) == 5 and set(few) <= set(want["train"]) and few == all_images(data, "train", limit=5, seed=1)
    assert few != all_images(data, "train", limit=5, seed=2)


def test_all_texts_stops_after_limit_records(data):
    from unimedvl.train.data import all_texts

    everything = list(all_texts(data))
    assert len(list(all_texts(data, limit=3))) == 6 < len(everything)  # 3 records x (question, answer)
    assert list(all_texts(data, limit=3)) == everything[:6] and all("<image>" not in t for t in everything)

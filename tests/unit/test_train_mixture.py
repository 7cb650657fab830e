"""The mixture sampler's row draws: every row of a category is reachable, and ranks draw their own streams.

A category's rows are drawn uniformly, so a sampler that can never pick the last row, or that hands
every rank the same random stream (the same data on every GPU), changes what the model sees without
changing any loss curve.
"""

from __future__ import annotations

import itertools

import pytest

from tests.train_helpers import make_dataset, make_tokenizer
from unimedvl.model.config import PRESETS
from unimedvl.train.curriculum import TINY
from unimedvl.train.data import MixtureLoader, ShardStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("mix") / "qc", per_task=6, tasks=("t2i", "text_only"), splits=("train",))
    return ShardStore(data)


@pytest.fixture(scope="module")
def tok(store, tmp_path_factory):
    return make_tokenizer(store.data_dir, tmp_path_factory.mktemp("tok"))


def _loader(store, tok, **kw):
    from dataclasses import replace

    cfg = PRESETS["tiny"]
    cfg = cfg.replace(llm=replace(cfg.llm, vocab_size=tok.vocab_size))
    return MixtureLoader(store, tok, TINY["stage3"], cfg, **kw)


def _draws(loader, steps=60, per_step=20):
    return [d for step in range(steps) for d in itertools.islice(loader.draws(step), per_step)]


def test_every_row_of_every_category_is_drawn(store, tok):
    loader = _loader(store, tok)
    drawn = _draws(loader)
    for cat, rows in loader.rows.items():
        seen = {ref for c, ref in drawn if c == cat}
        # 6 rows, hundreds of draws each: a row never drawn is a sampler that cannot reach it.
        assert seen == set(rows), (cat, len(seen), len(rows))


def test_ranks_draw_their_own_rows_and_streams(store, tok):
    ranks = [_loader(store, tok, rank=r, world_size=2) for r in (0, 1)]
    draws = [_draws(loader) for loader in ranks]
    for cat in ranks[0].rows:
        rows0, rows1 = set(ranks[0].rows[cat]), set(ranks[1].rows[cat])
        assert rows0 and rows1 and not rows0 & rows1  # disjoint shares of the data
        assert rows0 | rows1 == set(store.by_category[cat])  # together, all of it
        for r, loader in enumerate(ranks):
            assert {ref for c, ref in draws[r] if c == cat} == set(loader.rows[cat])
    # Category choices come from each rank's own random stream, not one stream copied to every rank.
    cats0, cats1 = ([c for c, _ in d] for d in draws)
    assert cats0 != cats1
    # and the stream is a pure function of (seed, stage, step, rank): a restarted rank redraws it exactly
    assert _draws(_loader(store, tok, rank=1, world_size=2)) == draws[1]

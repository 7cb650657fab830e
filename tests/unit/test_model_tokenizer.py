"""The byte-level BPE tokenizer: trained deterministically on corpus text, or loaded from a file."""

from __future__ import annotations

import itertools

from unimedvl.model.config import PRESETS
from unimedvl.model.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from unimedvl.model.unimedvl import DEFAULT_SPECIAL

CORPUS = [
    "Frontal chest radiograph. The heart size is normal. No focal consolidation, effusion or pneumothorax.",
    "Axial T2-weighted brain MRI shows a hyperintense lesion in the left frontal lobe.",
    "Is there a pleural effusion? Yes, a small right-sided pleural effusion.",
    "Lateral view: degenerative changes of the thoracic spine. Lungs are clear.",
] * 20


def test_training_is_deterministic_and_round_trips(tmp_path):
    a = train_tokenizer(CORPUS, 400, tmp_path / "a" / "tokenizer.json")
    train_tokenizer(CORPUS, 400, tmp_path / "b" / "tokenizer.json")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    text = "Small right pleural effusion — ñ, 肺, and unseen bytes \x07."
    assert a.decode(a.encode(text)) == text  # byte-level: nothing is out of vocabulary
    assert len(a.encode(CORPUS[0])) < len(CORPUS[0]) / 2  # merges learnt from the corpus
    assert a.vocab_size <= 400


def test_special_tokens_are_single_ids_matching_the_model_defaults(tmp_path):
    tok = train_tokenizer(CORPUS, 300, tmp_path / "tokenizer.json")
    assert tok.special == DEFAULT_SPECIAL
    for t in SPECIAL_TOKENS:
        assert len(tok.encode(t)) == 1
    turn = tok.turn("assistant", "No effusion.")
    assert turn[0] == tok.special.bos and tok.special.eos in turn
    assert tok.decode(turn) == "assistant\nNo effusion.\n"
    assert load_tokenizer(tmp_path).encode("effusion") == tok.encode("effusion")


def test_a_qwen_sized_vocabulary_loads(tmp_path):
    """A tokenizer.json with the released 152,064 entries (synthetic here: no hub access) loads via the
    path option and fits the paper preset's embedding table."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    target = PRESETS["paper"].llm.vocab_size
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for n in (1, 2, 3):
        for combo in itertools.product(alphabet, repeat=n):
            if len(vocab) == target - len(SPECIAL_TOKENS):
                break
            vocab["".join(combo)] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.vocab_size == target == 152_064
    assert loaded.special.eos == target - len(SPECIAL_TOKENS) + 2
    assert loaded.decode(loaded.encode("effusion")) == "effusion"

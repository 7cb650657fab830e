"""The text tokenizer: a byte-level BPE trained on the corpus text, or an existing `tokenizer.json`
(the released Qwen2.5 vocabulary loads the same way).

Special tokens use the Qwen2.5 names, so a model trained here and the released model agree on what
marks a turn (`<|im_start|>` role ... `<|im_end|>`) and an image block (`<|vision_start|>` ...
`<|vision_end|>`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = (
    "<|endoftext|>",  # padding / document end
    "<|im_start|>",  # opens a turn; the role name follows as text ("user", "assistant")
    "<|im_end|>",  # closes a turn: the end-of-sequence a generated answer stops on
    "<|vision_start|>",  # opens an image block (ViT or latent tokens)
    "<|vision_end|>",  # closes an image block
    "<|image_pad|>",  # where a prompt's `<image>` placeholder stood
)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the tokens the model itself inserts or stops on."""

    pad: int
    bos: int
    eos: int
    start_of_image: int
    end_of_image: int


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the special ids the model needs."""

    def __init__(self, tok) -> None:
        self.tok = tok
        ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
        missing = [t for t, i in zip(SPECIAL_TOKENS, ids, strict=True) if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self.special = SpecialTokens(pad=ids[0], bos=ids[1], eos=ids[2], start_of_image=ids[3], end_of_image=ids[4])

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def turn(self, role: str, text: str) -> list[int]:
        """One chat turn in the Qwen2.5 format: <|im_start|>role\\ntext<|im_end|>\\n."""
        return [self.special.bos, *self.encode(f"{role}\n{text}"), self.special.eos, *self.encode("\n")]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path))
        return path


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: str | Path) -> TextTokenizer:
    """Train a byte-level BPE on `texts` and save it to `out` (a `tokenizer.json` file).

    Deterministic: the same texts in the same order give a byte-identical file.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 bytes from the start, so no input is ever out of vocabulary.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    result = TextTokenizer(tok)
    result.save(out)
    return result


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load a `tokenizer.json` (ours or the released Qwen2.5 one); a folder means its tokenizer.json."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}")
    return TextTokenizer(Tokenizer.from_file(str(path)))

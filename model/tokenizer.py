"""One tokenizer interface for LLaMA 1/2 (sentencepiece) and Llama 3 / 3.1 (Meta's tiktoken file).

`Tokenizer(path)` looks at the file and returns the matching implementation (a subclass of
Tokenizer, so `isinstance` and type hints keep working): this file's SentencePieceTokenizer, or
model/tiktoken_tokenizer.py's TiktokenTokenizer. Both offer:

    encode(text, bos=False, eos=False) -> list[int]   # text is always text: never a control token
    decode(ids) -> str
    bos_id, eos_id, pad_id, vocab_size, path
    stop_ids     the ids that end a model's turn (generation stops at any of them)
    special_ids  name -> id of the control tokens a chat template may write ({} for sentencepiece)

Padding policy (docs/DESIGN.md): padding goes on the right and its labels are IGNORE_INDEX, so
under the causal mask a pad token never influences a real token and never enters the loss: the id
that fills a pad slot cannot change the loss. `pad_id` is the model's own pad id when it has one:
Llama 3's `<|finetune_right_pad_id|>` (128004), which Meta reserved for exactly this; LLaMA 1/2 have
none, so it is their EOS id. Stanford Alpaca's alternative (append a `[PAD]` row, vocab 32001) is
`Transformer.resize_token_embeddings`; padding is loss-neutral under both
(tests/test_model_padding.py).
"""

from __future__ import annotations

import os
import re

import sentencepiece as spm

# A tiktoken BPE file is text, one "<base64 token> <rank>" pair a line; a sentencepiece model is a
# binary protobuf, so the first line tells them apart without parsing either.
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} \d+\r?\n")


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used, as one printable line naming the file (CLIs exit 2)."""


# A model may carry a few more embedding rows than its tokenizer has ids (Alpaca's `[PAD]`, padding
# to a multiple of 64); more than Llama 3's 256 reserved specials means a wrong pairing.
MAX_EXTRA_ROWS = 256


def vocab_mismatch(path, n_ids: int, n_rows: int) -> str | None:
    """The one-line complaint when a tokenizer with `n_ids` ids does not fit `n_rows` embedding rows."""
    if n_ids > n_rows or n_rows - n_ids > MAX_EXTRA_ROWS:
        return (f"{path}: tokenizer has {n_ids} pieces but tensor 'tok_embeddings.weight' has "
                f"{n_rows} rows (vocab_size): tokenizer and model do not match")
    return None


def tokenizer_format(path: str | os.PathLike) -> str:
    """"tiktoken" or "sentencepiece" by the file's first line; raises TokenizerError for a missing file."""
    path = str(path)
    if not os.path.isfile(path):
        raise TokenizerError(f"{path}: tokenizer model not found")
    with open(path, "rb") as f:
        head = f.readline(512)
    return "tiktoken" if _TIKTOKEN_LINE.fullmatch(head) else "sentencepiece"


class Tokenizer:
    """Opens either format; see the module docstring for the interface."""

    path: str

    def __new__(cls, path: str | os.PathLike | None = None):  # None: unpickling a subclass
        if cls is Tokenizer:
            if tokenizer_format(path) == "tiktoken":
                from model.tiktoken_tokenizer import TiktokenTokenizer  # tiktoken only when needed

                cls = TiktokenTokenizer
            else:
                cls = SentencePieceTokenizer
        return super().__new__(cls)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.eos_id,)

    @property
    def special_ids(self) -> dict[str, int]:
        return {}


class SentencePieceTokenizer(Tokenizer):
    """LLaMA 1/2 (and the tiny default's own model): BOS=1, EOS=2, no pad id."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise TokenizerError(f"{self.path}: tokenizer model not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.path)
        except (RuntimeError, OSError):  # sentencepiece's own message is a multi-line C++ dump
            raise TokenizerError(f"{self.path}: neither a sentencepiece model nor a tiktoken BPE file") from None

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        pad = self.sp.pad_id()
        return pad if pad >= 0 else self.eos_id

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        # sentencepiece never parses "<s>" in text as a control piece: user text stays text
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

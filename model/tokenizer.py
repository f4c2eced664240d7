"""A thin sentencepiece wrapper with LLaMA's conventions (BOS=1, EOS=2, no pad id).

Padding policy (docs/DESIGN.md): LLaMA's model has no pad piece. `pad_id` is the model's own pad
id when it has one, else the EOS id. Padding goes on the right and its labels are IGNORE_INDEX,
so under the causal mask a pad token never influences a real token and never enters the loss:
the id that fills a pad slot cannot change the loss. Stanford Alpaca's alternative (append a
`[PAD]` row, vocab 32001) is `Transformer.resize_token_embeddings`; padding is loss-neutral under
both (tests/test_model_padding.py).
"""

from __future__ import annotations

import os

import sentencepiece as spm


class Tokenizer:
    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: tokenizer model not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.path)
        except (RuntimeError, OSError):
            raise ValueError(f"{self.path}: not a sentencepiece model") from None

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
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

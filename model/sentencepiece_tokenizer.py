"""LLaMA 1/2 (and the tiny default's own model): a sentencepiece model file."""

from __future__ import annotations

import os

import sentencepiece as spm

from model.tokenizer_base import Tokenizer, TokenizerError


class SentencePieceTokenizer(Tokenizer):
    """BOS=1, EOS=2, no pad id (pad_id falls back to EOS; see model/tokenizer.py)."""

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

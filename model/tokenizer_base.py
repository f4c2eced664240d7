"""What every tokenizer offers, and the one error a tokenizer file raises.

A module of its own so both implementations (model/sentencepiece_tokenizer.py,
model/tiktoken_tokenizer.py) can derive from it while model/tokenizer.py, which picks between
them, imports both: no module imports the one that imports it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used, as one printable line naming the file (CLIs exit 2)."""


class Tokenizer(ABC):
    """The interface model/tokenizer.py documents; `load_tokenizer(path)` returns one."""

    path: str

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def bos_id(self) -> int: ...

    @property
    @abstractmethod
    def eos_id(self) -> int: ...

    @property
    @abstractmethod
    def pad_id(self) -> int: ...

    @abstractmethod
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def id_to_piece(self, i: int) -> str: ...

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.eos_id,)

    @property
    def special_ids(self) -> dict[str, int]:
        return {}

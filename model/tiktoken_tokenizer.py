"""Llama 3 / 3.1: Meta's tiktoken BPE file with Meta's split pattern and special-token layout.

The file holds only the byte-level BPE ranks (128,000 for Llama 3). Meta's tokenizer adds 256
special tokens after them, in a fixed order, and splits text with a GPT-4-style regex before BPE;
both are part of the model's contract, so they are written out here, not read from anywhere.
The ranks load from the local path with tiktoken's own reader (no network): the file's sha256 is
passed as the expected hash so tiktoken's path-keyed cache can never serve another file's ranks.
"""

from __future__ import annotations

import hashlib
import os
import re

from model.tokenizer_base import Tokenizer, TokenizerError

# Meta's pre-tokenizer split (llama_models/llama3/tokenizer.py): contractions, letters with one
# leading non-letter, numbers of up to 3 digits, punctuation runs, newlines, other whitespace.
PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")

NUM_RESERVED_SPECIAL_TOKENS = 256
# Their order fixes their ids: base vocabulary size + index (BOS = 128000, <|eot_id|> = 128009).
NAMED_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message: the model called a tool and expects its result
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
]
SPECIAL_TOKENS = NAMED_SPECIAL_TOKENS + [
    f"<|reserved_special_token_{i}|>" for i in range(2, 2 + NUM_RESERVED_SPECIAL_TOKENS - len(NAMED_SPECIAL_TOKENS))
]

# Meta's limits: tiktoken's BPE is quadratic in the length of one pre-token, so a long run with no
# whitespace (or of whitespace) is cut every 25,000 characters, and text is encoded 400,000
# characters at a time. The same cuts as Meta's make the same ids on such inputs.
MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000
_RUN = re.compile(r"\s+|\S+")


def _chunks(text: str):
    """`text` cut at every MAX_ENCODE_CHARS, and inside any whitespace / non-whitespace run longer
    than MAX_RUN_CHARS at every MAX_RUN_CHARS characters from the run's start."""
    for start in range(0, len(text), MAX_ENCODE_CHARS):
        block = text[start:start + MAX_ENCODE_CHARS]
        cut = 0
        for run in _RUN.finditer(block):
            for at in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS):
                yield block[cut:at]
                cut = at
        yield block[cut:]


class TiktokenTokenizer(Tokenizer):
    """Meta's Llama 3 tokenizer: BOS 128000, EOS 128001, `<|eot_id|>` 128009, vocabulary 128,256."""

    def __init__(self, path: str | os.PathLike):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        self.path = str(path)
        try:
            with open(self.path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            ranks = load_tiktoken_bpe(self.path, expected_hash=digest)
        except OSError as e:
            raise TokenizerError(f"{self.path}: cannot read tokenizer: {e.strerror or e}") from None
        except Exception as e:  # a malformed line: base64 or int() parse errors
            raise TokenizerError(f"{self.path}: not a valid tiktoken BPE file "
                                 f"({type(e).__name__})") from None
        n = len(ranks)
        if sorted(ranks.values()) != list(range(n)):
            raise TokenizerError(f"{self.path}: tiktoken ranks are not 0..{n - 1} without gaps")
        self.num_base_tokens = n
        self.mergeable_ranks = ranks  # token bytes -> rank; tools/hf_tokenizer.py builds tokenizer.json from it
        self._special = {tok: n + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.model = tiktoken.Encoding(name=os.path.basename(self.path), pat_str=PAT_STR,
                                       mergeable_ranks=ranks, special_tokens=self._special)

    @property
    def vocab_size(self) -> int:
        return self.num_base_tokens + len(SPECIAL_TOKENS)

    @property
    def bos_id(self) -> int:
        return self._special["<|begin_of_text|>"]

    @property
    def eos_id(self) -> int:
        return self._special["<|end_of_text|>"]

    @property
    def pad_id(self) -> int:
        return self._special["<|finetune_right_pad_id|>"]

    @property
    def stop_ids(self) -> tuple[int, ...]:
        # a base model ends text with EOS; an instruct model ends its turn with eot (or eom to call a tool)
        return tuple(self._special[t] for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"))

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids: list[int] = [self.bos_id] if bos else []
        for chunk in _chunks(text):
            # disallowed_special=() : "<|eot_id|>" typed by a user is encoded as the text it is
            ids += self.model.encode(chunk, allowed_special=set(), disallowed_special=())
        return ids + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int]) -> str:
        return self.model.decode([int(i) for i in ids])  # invalid UTF-8 becomes U+FFFD, as Meta's

    def id_to_piece(self, i: int) -> str:
        return self.model.decode_single_token_bytes(int(i)).decode("utf-8", errors="replace")

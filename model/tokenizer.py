"""One tokenizer interface for LLaMA 1/2 (sentencepiece) and Llama 3 / 3.1 (Meta's tiktoken file).

`load_tokenizer(path)` looks at the file and returns the matching implementation:
model/sentencepiece_tokenizer.py's SentencePieceTokenizer or model/tiktoken_tokenizer.py's
TiktokenTokenizer, both subclasses of model/tokenizer_base.py's Tokenizer. Both offer:

    encode(text, bos=False, eos=False) -> list[int]   # text is always text: never a control token
    decode(ids) -> str
    bos_id, eos_id, pad_id, vocab_size, path
    stop_ids     the ids that end a model's turn (generation stops at any of them)
    special_ids  name -> id of the control tokens a chat template may write ({} for sentencepiece)

Both pickle by value (the processor or the BPE ranks travel, not the path), so a copy in another
process encodes the same even if the file has since changed.

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

from model.sentencepiece_tokenizer import SentencePieceTokenizer
from model.tiktoken_tokenizer import TiktokenTokenizer
from model.tokenizer_base import Tokenizer, TokenizerError

# A tiktoken BPE file is text, one "<base64 token> <rank>" pair a line; a sentencepiece model is a
# binary protobuf, so the first line tells them apart without parsing either.
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} \d+\r?\n")


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


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer in `path`, sentencepiece or tiktoken by the file's format; TokenizerError
    (one line naming the file) when it is missing or neither."""
    if tokenizer_format(path) == "tiktoken":
        return TiktokenTokenizer(path)
    return SentencePieceTokenizer(path)

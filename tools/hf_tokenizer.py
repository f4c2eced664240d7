"""The tokenizer files `convert to-hf` writes, so transformers' AutoTokenizer gives the project's ids.

- sentencepiece (LLaMA 1/2, the tiny default): the model file itself (what llama.cpp's converter
  reads), a tokenizer_config.json naming LlamaTokenizer (tools/convert_hf.hf_tokenizer_config),
  and a tokenizer.json built from the model's pieces and scores. Without the tokenizer.json,
  transformers derives its own merges from the model file, and they split runs of spaces
  differently from sentencepiece ("desert.  On": sentencepiece "▁▁" "On", transformers "▁" "▁On").
- Meta's tiktoken file (Llama 3 / 3.1): transformers has no reader for it, so a `tokenizer.json`
  (the `tokenizers` library's format) is built from the ranks: byte-level BPE whose vocabulary is
  the ranks (bytes spelled with GPT-2's byte-to-character table), whose merges are every split of
  every token into two tokens, ordered by the merged token's rank (so BPE merges, lowest first,
  the same pairs tiktoken merges), Meta's split regex before it, and the 256 special tokens as
  added tokens. Written by hand from the format, with no tokenizers/transformers import at run time.
- generation_config.json with all of the tokenizer's stop ids (HF's generate stops at any of them).
"""

from __future__ import annotations

import json
from pathlib import Path

from model.sentencepiece_tokenizer import SentencePieceTokenizer
from model.tokenizer import Tokenizer
from tools.convert_hf import hf_tokenizer_config


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte to a printable character, so byte-level tokens are JSON-safe
    strings. Printable Latin-1 bytes stand for themselves; the other 68 take code points 256 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def bpe_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """The ranks as a byte-level BPE vocabulary, and the merges that reproduce tiktoken's encoding.

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank. A
    BPE model merges the pair listed first in `merges`. Listing, for every token, each way to
    split it into two tokens, in order of the token's rank, makes the two rules pick the same pair.
    """
    table = bytes_to_unicode()
    spell = {tok: "".join(table[b] for b in tok) for tok in ranks}
    vocab = {spell[tok]: rank for tok, rank in ranks.items()}
    merges: list[tuple[int, int, int, str]] = []
    for tok, rank in ranks.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], f"{spell[left]} {spell[right]}"))
    merges.sort()
    return vocab, [m[3] for m in merges]


def sentencepiece_tokenizer_json(tokenizer) -> dict | None:
    """tokenizer.json for a sentencepiece BPE model with identity normalisation (LLaMA 1/2, the
    tiny default): its normal pieces as the BPE vocabulary, merges ordered by the merged piece's
    score (sentencepiece merges the highest-scoring pair first), byte fallback, the word-boundary
    "▁" prefixed once. None for a model this cannot reproduce (another normaliser, unigram)."""
    from sentencepiece import sentencepiece_model_pb2 as pb  # noqa: PLC0415

    proto = pb.ModelProto()
    proto.ParseFromString(Path(tokenizer.path).read_bytes())
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    if (trainer.model_type != pb.TrainerSpec.BPE or norm.name != "identity" or norm.remove_extra_whitespaces
            or not norm.add_dummy_prefix or trainer.treat_whitespace_as_suffix):
        return None
    kind = pb.ModelProto.SentencePiece
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces) if p.type == kind.NORMAL}
    merges = []
    for piece, order in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                merges.append((order, normal[left][1], normal[right][1], [left, right]))
    merges.sort()
    added = [{"id": i, "content": p.piece, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": p.type == kind.USER_DEFINED, "special": p.type != kind.USER_DEFINED}
             for i, p in enumerate(proto.pieces) if p.type in (kind.CONTROL, kind.UNKNOWN, kind.USER_DEFINED)]
    bos = tokenizer.id_to_piece(tokenizer.bos_id)
    unk = next((p.piece for p in proto.pieces if p.type == kind.UNKNOWN), None)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
        "post_processor": _bos_template(bos, tokenizer.bos_id),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": trainer.byte_fallback,
                  "ignore_merges": False, "vocab": vocab, "merges": [m[3] for m in merges]},
    }


def _bos_template(bos: str, bos_id: int) -> dict:
    """Post-processor that prepends BOS, as the project's encode_prompt does."""
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


def llama3_tokenizer_json(tokenizer) -> dict:
    """tokenizer.json for a TiktokenTokenizer: Meta's split, byte-level BPE, BOS prepended."""
    from model.tiktoken_tokenizer import PAT_STR  # noqa: PLC0415 (tiktoken only when needed)

    vocab, merges = bpe_vocab_and_merges(tokenizer.mergeable_ranks)
    specials = tokenizer.special_ids
    bos = "<|begin_of_text|>"
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for tok, i in specials.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PAT_STR}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": _bos_template(bos, specials[bos]),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  # a pre-token that is itself a token is taken whole, as tiktoken does
                  "ignore_merges": True, "vocab": vocab, "merges": merges},
    }


# The project's llama3_chat template (data/prompts.py) as a Jinja chat template, so
# `apply_chat_template(messages, add_generation_prompt=True)` builds the prompt training used.
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def llama3_tokenizer_config(max_seq_len: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "pad_token": "<|finetune_right_pad_id|>",  # the padding policy (model/tokenizer.py)
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,  # else decode() rewrites " ," as ","
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": max_seq_len,
        "chat_template": LLAMA3_CHAT_TEMPLATE,
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_hf_tokenizer(tokenizer: Tokenizer, out_dir: Path, max_seq_len: int) -> None:
    """Write the tokenizer files of an HF model directory into `out_dir` (a temporary directory
    that the caller renames into place, so the files appear together with the weights)."""
    out_dir = Path(out_dir)
    (out_dir / "tokenizer.model").write_bytes(Path(tokenizer.path).read_bytes())
    if isinstance(tokenizer, SentencePieceTokenizer):
        tok_json = sentencepiece_tokenizer_json(tokenizer)
        tok_config = hf_tokenizer_config(tokenizer.sp, max_seq_len)
    else:
        tok_json = llama3_tokenizer_json(tokenizer)
        tok_config = llama3_tokenizer_config(max_seq_len)
    if tok_json is not None:
        (out_dir / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
    _write_json(out_dir / "tokenizer_config.json", tok_config)
    stops = list(tokenizer.stop_ids)
    _write_json(out_dir / "generation_config.json", {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": stops[0] if len(stops) == 1 else stops,
    })

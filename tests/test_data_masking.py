"""Prompt templates and label masking, against hand-computed expectations.

A character tokenizer (one id per character, its code point) and a tiny template make every
expected id list writable by hand: "I:ab R:" is [73, 58, 97, 98, 32, 82, 58].
"""

from pathlib import Path

import pytest

from data.alpaca import IGNORE_INDEX, tokenize_example
from data.prompts import TEMPLATES, format_prompt

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LLAMA_TOK = SHARED / "llama2_tokenizer.model"
M = IGNORE_INDEX
BOS, EOS = 1, 2
TINY = {"prompt_input": "I:{instruction} X:{input} R:", "prompt_no_input": "I:{instruction} R:"}


class CharTokenizer:
    """One id per character (its code point); BOS=1, EOS=2, pad=0. `path` is any file (the
    cache hashes it)."""

    bos_id, eos_id, pad_id, vocab_size = BOS, EOS, 0, 1 << 17

    def __init__(self, path=__file__):
        self.path = str(path)

    def encode(self, text, bos=False, eos=False):
        return [BOS] * bos + [ord(c) for c in text] + [EOS] * eos

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i > 2)


def test_alpaca_template_is_stanfords_verbatim():
    # Written out from tatsu-lab/stanford_alpaca train.py PROMPT_DICT.
    assert TEMPLATES["alpaca"]["prompt_no_input"] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
    assert TEMPLATES["alpaca"]["prompt_input"] == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
        "{instruction}\n\n### Input:\n{input}\n\n### Response:")


def test_format_prompt_picks_the_variant_by_input():
    rec = {"instruction": "Add 2 and 3.", "output": "5"}
    no_input = ("Below is an instruction that describes a task. Write a response that appropriately "
                "completes the request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:")
    assert format_prompt(rec, "alpaca") == no_input
    assert format_prompt({**rec, "input": ""}, "alpaca") == no_input  # empty input = no input
    with_input = format_prompt({**rec, "input": "x={a}"}, "alpaca")
    assert with_input.endswith("### Instruction:\nAdd 2 and 3.\n\n### Input:\nx={a}\n\n### Response:")


def test_korean_template_has_both_variants_and_ends_at_the_response_header():
    rec = {"instruction": "더하기", "input": "2, 3", "output": "5"}
    assert format_prompt(rec, "korean").endswith("### 명령어:\n더하기\n\n### 입력:\n2, 3\n\n### 응답:")
    assert format_prompt({"instruction": "인사", "output": "안녕"}, "korean").endswith("### 명령어:\n인사\n\n### 응답:")


def test_prompt_tokens_are_masked_without_input():
    tok = CharTokenizer()
    got = tokenize_example(tok, {"instruction": "ab", "output": "cd"}, TINY, max_len=64)
    # seq = BOS "I:ab R:" "cd" EOS; tokens = seq[:-1]; labels = seq[1:], 7 prompt targets masked
    assert got == ([BOS, 73, 58, 97, 98, 32, 82, 58, 99, 100],
                   [M, M, M, M, M, M, M, 99, 100, EOS])


def test_prompt_tokens_are_masked_with_input():
    tok = CharTokenizer()
    got = tokenize_example(tok, {"instruction": "a", "input": "b", "output": "c"}, TINY, max_len=64)
    # "I:a X:b R:" is 10 characters
    assert got == ([BOS, 73, 58, 97, 32, 88, 58, 98, 32, 82, 58, 99],
                   [M, M, M, M, M, M, M, M, M, M, 99, EOS])


def test_truncation_cuts_the_whole_sequence_and_loses_the_eos():
    tok = CharTokenizer()
    got = tokenize_example(tok, {"instruction": "ab", "output": "cdef"}, TINY, max_len=10)
    # full seq has 13 ids; the first 10 are BOS, 7 prompt ids, "c", "d"
    assert got == ([BOS, 73, 58, 97, 98, 32, 82, 58, 99],
                   [M, M, M, M, M, M, M, 99, 100])


def test_prompt_reaching_max_len_is_dropped_and_one_short_keeps_one_target():
    tok = CharTokenizer()
    rec = {"instruction": "ab", "output": "cd"}  # BOS + prompt = 8 ids
    assert tokenize_example(tok, rec, TINY, max_len=8) is None
    assert tokenize_example(tok, rec, TINY, max_len=5) is None
    assert tokenize_example(tok, rec, TINY, max_len=9) == ([BOS, 73, 58, 97, 98, 32, 82, 58],
                                                           [M, M, M, M, M, M, M, 99])


@pytest.mark.skipif(not LLAMA_TOK.is_file(), reason="shared llama2 tokenizer absent")
def test_llama_prompt_and_response_are_encoded_separately():
    import sentencepiece as spm

    from model.tokenizer import load_tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(LLAMA_TOK))
    rec = {"instruction": "Name a color.", "output": "Blue."}
    prompt = ("Below is an instruction that describes a task. Write a response that appropriately "
              "completes the request.\n\n### Instruction:\nName a color.\n\n### Response:")
    tokens, labels = tokenize_example(load_tokenizer(LLAMA_TOK), rec, "alpaca", max_len=512)
    p, o = sp.encode(prompt), sp.encode("Blue.")
    assert tokens == [1] + p + o
    assert labels == [M] * len(p) + o + [2]
    assert sp.decode([t for t in labels if t != M]) == "Blue."  # EOS decodes to nothing

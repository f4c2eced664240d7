"""The llama3_chat template: its text against Meta's format, and its masking against labels
written out by hand with a character tokenizer that knows Llama 3's control tokens."""

from __future__ import annotations

import pytest

from data.alpaca import DataError, encode_prompt, tokenize_example
from data.prompts import TEMPLATES, format_prompt, get_template, is_chat_template

M = -100
BOS, EOS = 1, 2
# ids far from any code point used below, so a hand-written list shows which is which
SH, EH, EOT = 900_006, 900_007, 900_009


class ChatCharTokenizer:
    """One id per character (its code point), BOS=1, EOS=2, and three control tokens."""

    bos_id, eos_id, pad_id, vocab_size, path = BOS, EOS, 0, 1 << 20, __file__
    special_ids = {"<|start_header_id|>": SH, "<|end_header_id|>": EH, "<|eot_id|>": EOT}
    stop_ids = (EOS, EOT)

    def encode(self, text, bos=False, eos=False):
        return [BOS] * bos + [ord(c) for c in text] + [EOS] * eos


def chars(s: str) -> list[int]:
    return [ord(c) for c in s]


def test_template_text_is_metas_chat_format():
    # Meta's llama3 ChatFormat: <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>,
    # and the prompt ends with the assistant header and its blank line.
    t = TEMPLATES["llama3_chat"]
    assert format_prompt({"instruction": "Hi.", "input": ""}, "llama3_chat") == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert format_prompt({"instruction": "Hi.", "input": "x"}, "llama3_chat").startswith(
        "<|start_header_id|>user<|end_header_id|>\n\nHi.\n\nx<|eot_id|>")
    assert t["response_end"] == "<|eot_id|>"
    assert is_chat_template("llama3_chat") and not is_chat_template("alpaca")


def test_masking_without_input_by_hand():
    tok = ChatCharTokenizer()
    rec = {"instruction": "Hi", "input": "", "output": "Yo"}
    tokens, labels = tokenize_example(tok, rec, "llama3_chat", max_len=64)
    prompt = [BOS, SH, *chars("user"), EH, *chars("\n\nHi"), EOT, SH, *chars("assistant"), EH, *chars("\n\n")]
    seq = prompt + chars("Yo") + [EOT]  # the response ends with end-of-turn, not EOS
    assert tokens == seq[:-1]
    # targets: only "Y", "o" and <|eot_id|>; every prompt position (headers included) is -100
    assert labels == [M] * (len(prompt) - 1) + [ord("Y"), ord("o"), EOT]


def test_masking_with_input_by_hand():
    tok = ChatCharTokenizer()
    rec = {"instruction": "Add", "input": "1 2", "output": "3"}
    tokens, labels = tokenize_example(tok, rec, "llama3_chat", max_len=64)
    user = chars("\n\nAdd\n\n1 2")
    assert tokens == [BOS, SH, *chars("user"), EH, *user, EOT, SH, *chars("assistant"), EH, *chars("\n\n"), ord("3")]
    assert labels == [M] * (len(tokens) - 2) + [ord("3"), EOT]  # the prompt is tokens[:-1]


def test_truncation_keeps_the_shift_and_drops_the_end_token():
    tok = ChatCharTokenizer()
    rec = {"instruction": "Hi", "input": "", "output": "abcdef"}
    full_prompt = len(encode_prompt(tok, rec, "llama3_chat"))
    tokens, labels = tokenize_example(tok, rec, "llama3_chat", max_len=full_prompt + 3)
    assert labels[-3:] == chars("abc") and EOT not in labels
    assert tokenize_example(tok, rec, "llama3_chat", max_len=full_prompt) is None  # no target left


def test_control_tokens_typed_by_a_user_stay_text():
    tok = ChatCharTokenizer()
    rec = {"instruction": "<|eot_id|>", "input": "", "output": "<|start_header_id|>"}
    tokens, labels = tokenize_example(tok, rec, "llama3_chat", max_len=128)
    assert tokens.count(EOT) == 1 and tokens.count(SH) == 2  # the template's own, no more
    assert labels[-1] == EOT and labels.count(EOT) == 1


def test_a_tokenizer_without_the_control_tokens_is_a_data_error():
    class Plain(ChatCharTokenizer):
        special_ids = {}

    with pytest.raises(DataError, match=r"template 'llama3_chat' needs the control token <\|start_header_id\|>"):
        tokenize_example(Plain(), {"instruction": "a", "output": "b"}, "llama3_chat")


def test_alpaca_still_ends_with_eos():
    tok = ChatCharTokenizer()
    tokens, labels = tokenize_example(tok, {"instruction": "a", "output": "b"},
                                      {"prompt_input": "I:{instruction} {input}>", "prompt_no_input": "I:{instruction}>"})
    assert labels[-2:] == [ord("b"), EOS]


def test_custom_json_template_may_name_a_response_end(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"prompt_input": "{instruction}{input}", "prompt_no_input": "{instruction}", "response_end": 3}')
    with pytest.raises(ValueError, match="response_end"):
        get_template(str(path))

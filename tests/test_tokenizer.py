"""model.tokenizer.Tokenizer on the real LLaMA-2 sentencepiece model (../shared/data), checked
against the published ids of that model and against sentencepiece itself. Skipped when the file
is absent (a fresh clone without the shared data)."""

from __future__ import annotations

import pytest
import sentencepiece as spm
from hf_reference import SHARED_TOKENIZER

from model.tokenizer import Tokenizer, load_tokenizer

pytestmark = pytest.mark.skipif(not SHARED_TOKENIZER.is_file(), reason=f"{SHARED_TOKENIZER} not present")

KOREAN = [
    "안녕하세요, 세계!",
    "알파카는 남아메리카에 사는 낙타과 동물입니다.",
    "똠방각하 뷁 쀍",  # rare syllables: no piece of their own, spelled with byte-fallback pieces
    "한국어와 English가 섞인 문장 123.",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer(SHARED_TOKENIZER)


def test_llama2_special_ids_and_vocabulary(tok):
    assert tok.vocab_size == 32000
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]


def test_pad_policy_reuses_eos_because_llama_has_no_pad_piece(tok):
    """docs/DESIGN.md: no sentencepiece pad id (-1), so padding uses EOS under a -100 label mask."""
    assert spm.SentencePieceProcessor(model_file=str(SHARED_TOKENIZER)).pad_id() == -1
    assert tok.pad_id == tok.eos_id == 2


def test_bos_and_eos_flags(tok):
    assert tok.encode("Hello world") == [15043, 3186]  # "▁Hello", "▁world" in LLaMA's vocabulary
    assert tok.encode("Hello world", bos=True) == [1, 15043, 3186]
    assert tok.encode("Hello world", bos=True, eos=True) == [1, 15043, 3186, 2]
    assert tok.decode([1, 15043, 3186, 2]) == "Hello world"  # control pieces decode to nothing


def test_empty_string(tok):
    assert tok.encode("") == []
    assert tok.encode("", bos=True, eos=True) == [1, 2]
    assert tok.decode([]) == ""


@pytest.mark.parametrize("text", KOREAN)
def test_korean_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids == spm.SentencePieceProcessor(model_file=str(SHARED_TOKENIZER)).encode(text)
    assert all(0 <= i < 32000 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_byte_fallback_spells_characters_missing_from_the_vocabulary(tok):
    ids = tok.encode("똠")
    pieces = [tok.id_to_piece(i) for i in ids]
    # U+B620 is EB 98 A0 in UTF-8: three <0x..> byte pieces after the word-boundary piece
    assert pieces[-3:] == ["<0xEB>", "<0x98>", "<0xA0>"]
    assert tok.decode(ids) == "똠"

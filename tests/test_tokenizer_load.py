"""load_tokenizer picks the implementation by the file's format, not its name, and both kinds
pickle by value: the data cache hands tokenizers to worker processes."""

from __future__ import annotations

import base64
import json
import pickle
import shutil
from pathlib import Path

import pytest

from data.synthetic import generate_train
from data.tokenizer_training import train_tokenizer
from model.sentencepiece_tokenizer import SentencePieceTokenizer
from model.tiktoken_tokenizer import TiktokenTokenizer
from model.tokenizer import Tokenizer, TokenizerError, load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXTS = ["Hello, world!", "안녕하세요 🦙", "x <|eot_id|> y", "  two  spaces\n\nand newlines", ""]
MERGES = [b"he", b"ll", b"hell", b"hello", b" w", b"or", b" wor", b"ld"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny sentencepiece model and a tiny tiktoken file (every byte plus a few merges), both
    named `tokenizer.model` as checkpoints name them."""
    d = tmp_path_factory.mktemp("toks")
    data = d / "train.json"
    data.write_text(json.dumps(generate_train(300, seed=0)), encoding="utf-8")
    (d / "sp").mkdir()
    (d / "tt").mkdir()
    sp = train_tokenizer([str(data)], vocab_size=500, out=str(d / "sp" / "tokenizer.model"))
    ranks = [bytes([b]) for b in range(256)] + MERGES
    tt = d / "tt" / "tokenizer.model"
    tt.write_text("".join(f"{base64.b64encode(tok).decode()} {i}\n" for i, tok in enumerate(ranks)))
    return {"sentencepiece": sp, "tiktoken": str(tt)}


def test_the_format_picks_the_class(files):
    sp, tt = load_tokenizer(files["sentencepiece"]), load_tokenizer(files["tiktoken"])
    assert type(sp) is SentencePieceTokenizer and type(tt) is TiktokenTokenizer
    assert isinstance(sp, Tokenizer) and isinstance(tt, Tokenizer)
    assert (sp.bos_id, sp.eos_id) == (1, 2)
    # Meta's layout: the specials follow the file's ranks, BOS first, EOS second
    assert (tt.vocab_size, tt.bos_id, tt.eos_id) == (256 + len(MERGES) + 256, 264, 265)
    assert tt.encode("hello") == [256 + MERGES.index(b"hello")]


def test_the_interface_cannot_be_instantiated_on_its_own():
    with pytest.raises(TypeError):
        Tokenizer()


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(TokenizerError, match=r"^\S+nope\.model: tokenizer model not found$"):
        load_tokenizer(tmp_path / "nope.model")


def _round_trip(tok: Tokenizer) -> None:
    copy = pickle.loads(pickle.dumps(tok))
    assert type(copy) is type(tok) and copy.path == tok.path
    assert ((copy.vocab_size, copy.bos_id, copy.eos_id, copy.pad_id, copy.stop_ids, copy.special_ids)
            == (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids, tok.special_ids))
    for text in TEXTS:
        ids = tok.encode(text, bos=True, eos=True)
        assert copy.encode(text, bos=True, eos=True) == ids
        assert copy.decode(ids) == tok.decode(ids)


@pytest.mark.parametrize("kind", ["sentencepiece", "tiktoken"])
def test_pickles_by_value(files, kind, tmp_path):
    path = tmp_path / "tokenizer.model"
    shutil.copy(files[kind], path)
    tok = load_tokenizer(path)
    _round_trip(tok)
    blob = pickle.dumps(tok)
    path.unlink()  # a worker never reopens the file: the model travels in the pickle
    assert pickle.loads(blob).encode(TEXTS[1]) == tok.encode(TEXTS[1])


@pytest.mark.parametrize("name", ["llama2_tokenizer.model", "llama3_tokenizer.model"])
def test_real_tokenizers_pickle(name):
    if not (SHARED / name).is_file():
        pytest.skip(f"{SHARED / name} not present")
    _round_trip(load_tokenizer(SHARED / name))

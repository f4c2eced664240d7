"""The tokenizer `make train` trains for itself: LLaMA's special ids, lossless on any text
(English, Korean, unseen characters), digits one per piece, and the template's fixed text in a
few ordinary pieces (no user-defined pieces, which other implementations split differently)."""

import json
import subprocess
import sys

import pytest
import sentencepiece as spm

from data.prompts import format_prompt
from data.synthetic import generate_train
from data.tokenizer_training import train_tokenizer
from model.tokenizer import load_tokenizer
from tools.train_tokenizer import main


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    records = generate_train(800, seed=0) + [
        {"instruction": "Say hello politely.", "input": "", "output": "Hello, how are you today?"},
        {"instruction": "인사말을 쓰세요.", "input": "", "output": "안녕하세요, 만나서 반갑습니다."},
    ]
    data = d / "train.json"
    data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return train_tokenizer([str(data)], vocab_size=600, out=str(d / "tok.model"))


def test_special_ids_follow_llama(tok_path):
    sp = spm.SentencePieceProcessor(model_file=tok_path)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.get_piece_size() == 600
    tok = load_tokenizer(tok_path)
    assert tok.encode("hi", bos=True, eos=True)[0] == 1 and tok.encode("hi", bos=True, eos=True)[-1] == 2
    assert tok.pad_id == tok.eos_id == 2  # no pad piece: the project's padding policy pads with EOS


@pytest.mark.parametrize("text", [
    "Hello, how are you today?",
    "안녕하세요, 만나서 반갑습니다.",
    "뷁 햏 — characters never seen in training 🦙",  # byte fallback
    "two  spaces, a\ttab and\n\nnewlines\n",
    "Sort: 10 2 33",
])
def test_round_trip_is_lossless(tok_path, text):
    tok = load_tokenizer(tok_path)
    ids = tok.encode(text)
    assert 0 not in ids  # nothing becomes <unk>: unseen characters go through bytes
    assert tok.decode(ids) == text


def test_digits_are_single_pieces(tok_path):
    tok = load_tokenizer(tok_path)
    pieces = [tok.id_to_piece(i) for i in tok.encode("12345")]
    assert [p.lstrip("\u2581") for p in pieces if p != "\u2581"] == ["1", "2", "3", "4", "5"]


def test_template_text_takes_a_few_ordinary_pieces(tok_path):
    """The boilerplate is learned as long BPE pieces, not reserved as user-defined symbols."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(open(tok_path, "rb").read())
    kinds = {p.type for p in proto.pieces}
    assert pb.ModelProto.SentencePiece.USER_DEFINED not in kinds
    tok = load_tokenizer(tok_path)
    prompt = format_prompt({"instruction": "Sort the numbers.", "input": "3 1"}, "alpaca")
    pieces = [tok.id_to_piece(i) for i in tok.encode(prompt)]
    preamble = ("▁Below is an instruction that describes a task, paired with an input that provides "
                "further context.").replace(" ", "▁")
    assert any(preamble in p for p in pieces[:2])  # at least one sentence of it in one piece
    assert len(tok.encode(prompt)) <= 16  # against 60+ one word at a time
    assert tok.decode(tok.encode(prompt)) == prompt


def test_cli_writes_a_model_and_rejects_a_missing_file(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in generate_train(300, seed=2)),
                    encoding="utf-8")
    assert main(["--data", str(data), "--vocab-size", "500", "--out", str(tmp_path / "t.model")]) == 0
    assert spm.SentencePieceProcessor(model_file=str(tmp_path / "t.model")).get_piece_size() == 500
    proc = subprocess.run([sys.executable, "-m", "tools.train_tokenizer", "--data", str(tmp_path / "nope.json"),
                           "--out", str(tmp_path / "x.model")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "nope.json" in proc.stderr and "Traceback" not in proc.stderr

"""Tokenizers that travel: the files `convert to-hf` writes (tools/hf_tokenizer.py) make
transformers' AutoTokenizer produce the project's ids, for the tiny default's own sentencepiece
model, LLaMA 2's, and Llama 3's tiktoken file (via the tokenizer.json built from its ranks).
transformers is the oracle here; the project never imports it at run time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from data.alpaca import encode_prompt  # noqa: E402
from data.prompts import format_prompt  # noqa: E402
from model.tokenizer import Tokenizer, load_tokenizer  # noqa: E402
from tools.hf_tokenizer import bpe_vocab_and_merges, bytes_to_unicode, write_hf_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LLAMA2, LLAMA3 = DATA / "llama2_tokenizer.model", DATA / "llama3_tokenizer.model"
KO_SEEDS = ROOT / "generate" / "seeds" / "ko.jsonl"


def hf_dir(tok: Tokenizer, out: Path, max_seq_len: int = 4096):
    out.mkdir(parents=True, exist_ok=True)
    write_hf_tokenizer(tok, out, max_seq_len)
    return transformers.AutoTokenizer.from_pretrained(str(out))


def records(name: str, every: int = 1) -> list[dict]:
    return json.loads((DATA / name).read_text(encoding="utf-8"))[::every]


def ko_records() -> list[dict]:
    out = []
    for line in KO_SEEDS.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        out += [{"instruction": rec["instruction"], **inst} for inst in rec["instances"]]
    return out


def assert_same_ids(tok: Tokenizer, hf, recs: list[dict], template: str = "alpaca") -> None:
    for rec in recs:
        prompt = format_prompt(rec, template)
        assert hf(prompt)["input_ids"] == encode_prompt(tok, rec, template), prompt
        assert hf(rec["output"], add_special_tokens=False)["input_ids"] == tok.encode(rec["output"]), rec["output"]


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120" and table[ord("\n")] == "\u010a"  # GPT-2's Ġ, Ċ
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_merges_list_every_split_in_rank_order():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    vocab, merges = bpe_vocab_and_merges(ranks)
    assert vocab == {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5}
    assert merges == ["a b", "b c", "a bc", "ab c"]


def test_tiny_default_tokenizer_matches_transformers_on_every_heldout_prompt(tmp_path):
    """The issue's measurement was 138 of 138 held-out prompts tokenized differently."""
    from data.synthetic import build_tiny_assets

    assets = build_tiny_assets(tmp_path / "assets", seed=0)
    tok = load_tokenizer(assets["tokenizer"])
    hf = hf_dir(tok, tmp_path / "hf")
    held = json.loads(Path(assets["heldout"]).read_text(encoding="utf-8"))
    assert len(held) == 138
    assert_same_ids(tok, hf, held)
    assert_same_ids(tok, hf, json.loads(Path(assets["train"]).read_text(encoding="utf-8"))[:300])


@pytest.mark.skipif(not LLAMA2.is_file(), reason=f"{LLAMA2} not present")
def test_llama2_sentencepiece_matches_transformers(tmp_path):
    tok = load_tokenizer(LLAMA2)
    hf = hf_dir(tok, tmp_path / "hf")
    assert_same_ids(tok, hf, records("gsm8k_alpaca.json", every=25) + ko_records())
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (1, 2)


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    if not LLAMA3.is_file():
        pytest.skip(f"{LLAMA3} not present")
    tok = load_tokenizer(LLAMA3)
    return tok, hf_dir(tok, tmp_path_factory.mktemp("l3") / "hf", 8192)


@pytest.mark.parametrize("name,every", [("gsm8k_alpaca.json", 10), ("gpteacher_toolformer_alpaca.json", 10),
                                        ("gpteacher_roleplay_alpaca.json", 5), ("ko", 1)])
def test_llama3_tokenizer_json_matches_tiktoken(llama3, name, every):
    tok, hf = llama3
    recs = ko_records() if name == "ko" else records(name, every)
    assert_same_ids(tok, hf, recs)


def test_llama3_published_ids_through_transformers(llama3):
    _, hf = llama3
    assert hf("This is a test sentence.")["input_ids"] == [128000, 2028, 374, 264, 1296, 11914, 13]
    assert hf.decode([2028, 374, 264, 1296, 11914, 13]) == "This is a test sentence."


def test_llama3_chat_template_matches_the_training_prompt(llama3):
    tok, hf = llama3
    for rec in ko_records()[:10] + records("gsm8k_alpaca.json", 500):
        content = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        ids = hf.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True)["input_ids"]
        assert ids == encode_prompt(tok, rec, "llama3_chat")

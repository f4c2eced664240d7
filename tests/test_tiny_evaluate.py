"""Held-out exact match (train/evaluate.py): right answer *and* a stop, compared exactly."""

import json

import pytest
import torch
import torch.nn.functional as F

import train.evaluate as ev
from data.alpaca import encode_example, encode_prompt
from data.synthetic import generate_train
from data.tokenizer_training import train_tokenizer
from model.args import ModelArgs
from model.checkpoint import save_checkpoint
from model.llama import Transformer
from model.sampling import generate, generate_batch
from model.tokenizer import load_tokenizer

RECORDS = [
    {"instruction": "What is 3 plus 4?", "input": "", "output": "7", "family": "add"},
    {"instruction": "Reverse the order of these words.", "input": "apple river stone",
     "output": "stone river apple", "family": "reverse"},
    {"instruction": "다음 단어의 반대말을 쓰세요.", "input": "크다", "output": "작다", "family": "antonym"},
    {"instruction": "Spell the word with dashes between the letters.", "input": "tiger",
     "output": "t-i-g-e-r", "family": "spell"},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("evtok")
    data = d / "train.json"
    data.write_text(json.dumps(generate_train(400, seed=0) + RECORDS, ensure_ascii=False), encoding="utf-8")
    return load_tokenizer(train_tokenizer([str(data)], vocab_size=500, out=str(d / "tok.model")))


@pytest.fixture(scope="module")
def memorised(tok):
    """A small model trained until it reproduces RECORDS' responses (and EOS) exactly."""
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=tok.vocab_size, multiple_of=32, max_seq_len=128)
    model = Transformer(args)
    model.init_weights()
    seqs = [encode_example(tok, r, "alpaca") for r in RECORDS]
    T = max(len(s) for s, _ in seqs)
    x = torch.full((len(seqs), T), tok.pad_id)
    y = torch.full((len(seqs), T), -100)
    for i, (s, n_prompt) in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
        y[i, n_prompt - 1: len(s) - 1] = torch.tensor(s[n_prompt:])  # targets: response + EOS
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = F.cross_entropy(model.logits(x).flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 1e-3:
            break
    assert loss.item() < 0.01, "the fixture model failed to memorise; the tests below would mean nothing"
    return model.eval()


def test_a_model_that_memorised_the_answers_scores_one(memorised, tok):
    result = ev.evaluate_records(memorised, tok, RECORDS)
    assert result["accuracy"] == 1.0 and result["n"] == 4
    assert result["per_family"] == {"add": 1.0, "antonym": 1.0, "reverse": 1.0, "spell": 1.0}
    assert ev.exact_match(memorised, tok, RECORDS, template="alpaca", max_new_tokens=16) == 1.0


def test_a_different_expected_answer_counts_as_a_miss(memorised, tok):
    changed = [dict(r) for r in RECORDS]
    changed[1]["output"] = "stone river"  # a prefix of what the model says is still wrong
    result = ev.evaluate_records(memorised, tok, changed)
    assert result["accuracy"] == 0.75
    assert result["misses"] == [{"instruction": RECORDS[1]["instruction"], "input": RECORDS[1]["input"],
                                 "expected": "stone river", "got": "stone river apple"}]


def test_a_response_cut_by_max_new_tokens_is_a_miss(memorised, tok):
    # "t-i-g-e-r" needs more than 2 tokens: without reaching EOS it cannot match.
    for batch_size in (1, 16):
        assert ev.exact_match(memorised, tok, RECORDS[3:], max_new_tokens=2, batch_size=batch_size) == 0.0


def test_batched_decoding_gives_what_generate_gives_each_prompt_alone(memorised, tok):
    # Seen and unseen prompts, several sharing a length (so real batches form), one cut short.
    records = RECORDS + generate_train(40, seed=5)
    prompts = [encode_prompt(tok, r, "alpaca") for r in records]
    assert len({len(p) for p in prompts}) < len(prompts)  # some lengths repeat
    for max_new in (3, 12):
        alone = [tok.decode(generate(memorised, p, max_new, eos_id=tok.eos_id)) for p in prompts]
        memorised.reset_caches()
        assert ev.respond_all(memorised, tok, records, max_new_tokens=max_new, batch_size=8) == alone
    assert ev.respond_all(memorised, tok, RECORDS, batch_size=1) == [r["output"] for r in RECORDS]
    # Unequal lengths share a batch too (left-padded): the memorised answers come out unchanged.
    mixed = prompts[:4]
    assert len({len(p) for p in mixed}) == 4
    assert generate_batch(memorised, mixed, 12, eos_id=tok.eos_id) == [tok.encode(r["output"]) for r in RECORDS]


def _fake_generate(answers: dict[str, str], tok):
    """Stands in for model.sampling.generate: returns the ids of a scripted response."""
    def fake(model, prompt_ids, max_new_tokens, temperature=0.0, top_p=1.0, eos_id=None, **kw):
        assert temperature == 0.0 and tuple(eos_id) == tok.stop_ids == (tok.eos_id,) and prompt_ids[0] == tok.bos_id
        text = tok.decode(prompt_ids)
        key = next(k for k in answers if k in text)
        return tok.encode(answers[key])
    return fake


def test_comparison_strips_whitespace_but_not_extra_words(monkeypatch, tok):
    monkeypatch.setattr(ev, "generate", _fake_generate(
        {"3 plus 4": " 7 ", "apple river stone": "stone river apple apple", "크다": "작다",
         "tiger": "t-i-g-e-r\n"}, tok))
    result = ev.evaluate_records(torch.nn.Linear(1, 1), tok, RECORDS, batch_size=1)
    assert result["accuracy"] == 0.75
    assert [m["got"] for m in result["misses"]] == ["stone river apple apple"]


def test_records_may_come_from_a_jsonl_path(monkeypatch, tok, tmp_path):
    path = tmp_path / "held.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS), encoding="utf-8")
    monkeypatch.setattr(ev, "generate", _fake_generate({"": "7"}, tok))
    assert ev.exact_match(torch.nn.Linear(1, 1), tok, path, batch_size=1) == 0.25
    assert ev.format_result(0.25, 4) == "exact-match accuracy on 4 held-out prompts: 0.250"


def test_cli_on_a_saved_checkpoint(memorised, tok, tmp_path, capsys):
    ckpt = save_checkpoint(memorised.state_dict(), memorised.args, tmp_path / "ckpt", tokenizer_path=tok.path)
    data = tmp_path / "held.json"
    data.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    assert ev.main(["--ckpt", str(ckpt), "--data", str(data)]) == 0
    assert capsys.readouterr().out.strip().endswith("exact-match accuracy on 4 held-out prompts: 1.000")
    assert ev.main(["--ckpt", str(tmp_path / "missing"), "--data", str(data)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("name, text, problem", [
    ("held.json", json.dumps([RECORDS[0], {**RECORDS[1], "output": 5}]),
     "record 1: field 'output': expected a string, got integer"),
    ("held.jsonl", json.dumps(RECORDS[0]) + "\n{not json\n", "line 2: invalid JSON at column 2"),
])
def test_cli_names_the_bad_record_in_one_line(tok, tmp_path, capsys, name, text, problem):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    data = tmp_path / name
    data.write_text(text, encoding="utf-8")
    assert ev.main(["--ckpt", str(ckpt), "--data", str(data), "--tokenizer", tok.path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: {problem}") and err.count("\n") == 1

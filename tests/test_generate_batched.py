"""Batched generation of prompts of any lengths (model.sampling.generate_batch, left-padded) and
`python -m tools.eval generate`: each prompt's greedy tokens equal what it gets decoded alone and
what transformers' `generate` gives on the `to-hf` export (left-padded with an attention mask);
any difference must be a near-tie shown from the logits. Then the CLI: output fields, resume after
an interruption or a SIGKILL without regenerating finished prompts, and one-line bad-input errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from hf_reference import REPO, hf_config, random_hf_llama, train_sentencepiece
from transformers import LlamaForCausalLM

import evaluation.batching as batching
from data.alpaca import encode_prompt
from data.prompts import format_prompt
from model.checkpoint import load_model
from model.sampling import generate, generate_batch
from model.tokenizer import load_tokenizer
from tools.convert import main as convert
from tools.eval import main as eval_main

EOS = 2
NEAR_TIE = 1e-3  # fp32 logits of O(1): batching moves them by ~1e-6, so a larger top-2 gap cannot flip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Our checkpoint (converted from a random GQA HF LLaMA, 400-piece tokenizer, max_seq_len 256)
    and the HF model read back from its `to-hf` export."""
    root = tmp_path_factory.mktemp("batched")
    tok = train_sentencepiece(root / "tok.model", vocab_size=400)
    hf = random_hf_llama(hf_config(vocab_size=400, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256), seed=5)
    hf.save_pretrained(root / "hf")
    shutil.copy(tok, root / "hf" / "tokenizer.model")
    assert convert(["hf", str(root / "hf"), str(root / "ckpt")]) == 0
    assert convert(["to-hf", str(root / "ckpt"), str(root / "export")]) == 0
    export = LlamaForCausalLM.from_pretrained(root / "export", dtype=torch.float32).eval()
    return root / "ckpt", load_model(root / "ckpt"), export, load_tokenizer(root / "ckpt" / "tokenizer.model")


def _prompts(n: int, seed: int, lo: int = 1, hi: int = 60) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [[1] + torch.randint(3, 400, (k - 1,), generator=g).tolist() for k in lengths]


@torch.no_grad()
def _check_same_or_near_tie(model, pairs: list[tuple[list[int], list[int], list[int]]], what: str) -> None:
    """pairs: (prompt, got, want). At least 95% identical; each other one first diverges where
    the reference continuation's top-2 logits (recomputed in full, no cache) are a near-tie."""
    differ = [(p, g, w) for p, g, w in pairs if g != w]
    assert len(differ) <= 0.05 * len(pairs), f"{what}: {len(differ)} of {len(pairs)} prompts differ"
    for prompt, got, want in differ:
        j = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        top2 = model.logits(torch.tensor([prompt + want[:j]]))[0, -1].topk(2).values
        assert (top2[0] - top2[1]).item() < NEAR_TIE, f"{what}: diverges at token {j} without a near-tie"


@torch.no_grad()
def test_a_left_padded_prefill_gives_each_prompt_its_own_logits(setup):
    """Per-row RoPE positions and the padding mask, checked directly: the last logits of a
    left-padded row equal a full recompute of that prompt alone."""
    _, ours, _, _ = setup
    prompts = _prompts(6, seed=1)
    T = max(map(len, prompts))
    ours.setup_caches(6, T + 4)
    try:
        padded = torch.tensor([[0] * (T - len(p)) + p for p in prompts])  # (6, T)
        start = torch.tensor([T - len(p) for p in prompts])
        got = ours.prefill(padded, torch.arange(T), start)[:, 0]  # (6, vocab)
        step = ours.decode(torch.full((6, 1), 7), torch.tensor([T]), start)[:, 0]
    finally:
        ours.reset_caches()
    for b, p in enumerate(prompts):
        assert (got[b] - ours.logits(torch.tensor([p]))[0, -1]).abs().max() < 1e-4
        assert (step[b] - ours.logits(torch.tensor([p + [7]]))[0, -1]).abs().max() < 1e-4


@torch.no_grad()
def test_greedy_batches_of_mixed_lengths_equal_each_prompt_decoded_alone(setup):
    _, ours, _, _ = setup
    prompts = _prompts(23, seed=2) + [[1] + list(range(3, 250))]  # the last one: 248 tokens of 256
    free = [generate(ours, p, 24) for p in prompts[:4]]
    stop = {EOS, free[0][5], free[3][10]}  # two stop ids that end some rows early, at different steps
    alone = [generate(ours, p, 24, eos_id=stop) for p in prompts]
    assert len({len(a) for a in alone}) > 2 and len(alone[-1]) == 8  # rows stop at different steps
    batched = []
    for s in range(0, len(prompts), 8):  # batch 8, in the given order: lengths 1..120 mixed
        batched += generate_batch(ours, prompts[s: s + 8], 24, eos_id=stop, pad_id=0)
    ours.reset_caches()
    assert len(batched[-1]) == 8  # max_seq_len holds per row: 248 + 8 = 256
    _check_same_or_near_tie(ours, list(zip(prompts, batched, alone, strict=True)), "batched vs alone")


@torch.no_grad()
def test_greedy_batches_equal_transformers_left_padded_generate(setup):
    _, ours, hf, _ = setup
    prompts = _prompts(16, seed=3)
    free = [generate(ours, p, 20) for p in prompts[:3]]
    stop = {EOS, free[0][6], free[2][12]}  # stop ids some rows meet mid-way
    ours_ids, hf_ids = [], []
    for s in range(0, 16, 8):
        chunk = prompts[s: s + 8]
        ours_ids += generate_batch(ours, chunk, 20, eos_id=stop)
        T = max(map(len, chunk))
        x = torch.tensor([[0] * (T - len(p)) + p for p in chunk])  # (8, T), left-padded as ours
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in chunk])
        out = hf.generate(x, attention_mask=mask, max_new_tokens=20, do_sample=False,
                          eos_token_id=sorted(stop), pad_token_id=0)
        for row in out[:, T:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stop), len(row))
            hf_ids.append(row[:cut])
    ours.reset_caches()
    assert any(len(h) < 20 for h in hf_ids)  # some rows stopped early
    _check_same_or_near_tie(ours, list(zip(prompts, ours_ids, hf_ids, strict=True)), "ours vs transformers")


@torch.no_grad()
def test_seeded_sampling_repeats_and_a_tiny_top_p_is_greedy(setup):
    _, ours, _, _ = setup
    prompts = _prompts(6, seed=4)

    def sample(seed, **kw):
        return generate_batch(ours, prompts, 12, temperature=1.0, generator=torch.Generator().manual_seed(seed), **kw)

    assert sample(0) == sample(0) and sample(0) != sample(1)
    assert sample(0, top_p=1e-6) == generate_batch(ours, prompts, 12)
    ours.reset_caches()


# ---------------------------------------------------------------- the CLI
WORDS = "the quick brown fox jumps over lazy dog model token train data text answer question write list".split()


def _alpaca_records(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(9)
    out = []
    for i in range(n):
        k = int(torch.randint(2, 30, (1,), generator=g))
        words = " ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g))
        out.append({"instruction": f"Write {words}.", "input": "a lazy dog" if i % 3 == 0 else "", "output": "ref"})
    return out


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _generate(ckpt, data, out, *extra: str) -> int:
    return eval_main(["generate", "--ckpt", str(ckpt), "--data", str(data), "--out", str(out),
                      "--max-new-tokens", "12", "--batch-size", "4", *extra])


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@torch.no_grad()
def test_cli_alpaca_and_ifeval_records(setup, tmp_path):
    ckpt, _, hf, tok = setup
    records = _alpaca_records(7)
    long = {"instruction": "Write " + " ".join(WORDS * 20), "input": ""}  # fills the model's 256 positions
    assert _generate(ckpt, _write_jsonl(tmp_path / "a.jsonl", records + [long]), tmp_path / "a_out.jsonl") == 0
    *lines, too_long = _lines(tmp_path / "a_out.jsonl")
    assert too_long == {"prompt": format_prompt(long), "response": "", **long, "index": 7, "new_tokens": 0,
                        "stopped": "prompt_too_long"}
    for i, (rec, line) in enumerate(zip(records, lines, strict=True)):
        ids = encode_prompt(tok, rec, "alpaca")  # the oracle: transformers on this prompt alone
        new = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=EOS,
                          pad_token_id=0)[0, len(ids):].tolist()
        new = new[: new.index(EOS)] if EOS in new else new
        assert line == {"prompt": format_prompt(rec, "alpaca"), "response": tok.decode(new), **rec, "index": i,
                        "new_tokens": len(new), "stopped": "eos" if len(new) < 12 else "length"}
    ifeval = [{"key": 1000 + i, "prompt": r["instruction"], "instruction_id_list": ["length_constraints:x"],
               "kwargs": [{"n": i}]} for i, r in enumerate(records[:5])]
    assert _generate(ckpt, _write_jsonl(tmp_path / "if.jsonl", ifeval), tmp_path / "if_out.jsonl") == 0
    for rec, line, same in zip(ifeval, _lines(tmp_path / "if_out.jsonl"), lines[:5], strict=True):
        assert {k: line[k] for k in rec} == rec and line["prompt"] == rec["prompt"]
        if not records[line["index"]]["input"]:  # the same instruction, no input: the same prompt
            assert line["response"] == same["response"]


def _counting(monkeypatch, fail_after: int | None = None) -> list[int]:
    """Wraps the batch decoder: records how many prompts each call decodes; raises
    KeyboardInterrupt (as Ctrl-C would) on call number fail_after + 1."""
    calls: list[int] = []

    def wrapped(model, prompts, *args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise KeyboardInterrupt
        calls.append(len(prompts))
        return generate_batch(model, prompts, *args, **kwargs)

    monkeypatch.setattr(batching, "generate_batch", wrapped)
    return calls


def test_cli_resumes_after_an_interruption_without_regenerating(setup, tmp_path, monkeypatch, capsys):
    ckpt = setup[0]
    data = _write_jsonl(tmp_path / "a.jsonl", _alpaca_records(10))
    assert _generate(ckpt, data, tmp_path / "whole.jsonl") == 0
    out, journal = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial.jsonl"
    calls = _counting(monkeypatch, fail_after=2)
    assert _generate(ckpt, data, out) == 130
    assert calls == [4, 4] and not out.exists()
    first = journal.read_text(encoding="utf-8").splitlines()
    assert len(first) == 1 + 8 and "rerun the same command to resume" in capsys.readouterr().err
    with open(journal, "a", encoding="utf-8") as f:
        f.write('{"prompt": "cut short by a kil')  # a line the kill interrupted
    assert _generate(ckpt, data, out, "--max-new-tokens", "13") == 2  # other settings: refused
    assert "journal of a run with other settings (max_new_tokens)" in capsys.readouterr().err
    calls = _counting(monkeypatch)
    assert _generate(ckpt, data, out) == 0
    assert calls == [2] and not journal.exists()  # only the 2 unfinished prompts were decoded
    assert out.read_text(encoding="utf-8") == (tmp_path / "whole.jsonl").read_text(encoding="utf-8")
    final = out.read_text(encoding="utf-8").splitlines()
    assert set(first[1:]) <= set(final)  # the journal's lines went into the output untouched


def test_cli_resumes_after_sigkill(setup, tmp_path, monkeypatch):
    ckpt = setup[0]
    data = _write_jsonl(tmp_path / "a.jsonl", _alpaca_records(40))
    out, journal = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial.jsonl"
    argv = ["--ckpt", str(ckpt), "--data", str(data), "--out", str(out), "--max-new-tokens", "60",
            "--batch-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tools.eval", "generate", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {json.loads(x)["index"] for x in journal.read_text(encoding="utf-8").splitlines()[1:] if x.endswith("}")}
    assert 3 <= len(kept) < 40 and not out.exists()
    calls = _counting(monkeypatch)
    assert eval_main(["generate", *argv]) == 0
    assert sum(calls) == 40 - len(kept)
    monkeypatch.undo()
    assert eval_main(["generate", *argv[:5], str(tmp_path / "whole.jsonl"), *argv[6:]]) == 0
    assert out.read_text(encoding="utf-8") == (tmp_path / "whole.jsonl").read_text(encoding="utf-8")


def _bad(tmp_path, capsys, ckpt, data, message: str) -> None:
    out = tmp_path / "out.jsonl"
    assert eval_main(["generate", "--ckpt", str(ckpt), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []


def test_cli_bad_input_is_one_line_and_writes_nothing(setup, tmp_path, capsys):
    ckpt = setup[0]
    good = _write_jsonl(tmp_path / "good.jsonl", _alpaca_records(2))
    _bad(tmp_path, capsys, ckpt, tmp_path / "missing.jsonl", "missing.jsonl: no such file")
    nameless = _write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "hi"}, {"input": "x", "key": 3}])
    _bad(tmp_path, capsys, ckpt, nameless, "bad.jsonl: line 2: field 'instruction': missing")
    broken = tmp_path / "broken_ckpt"
    shutil.copytree(ckpt, broken)
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    _bad(tmp_path, capsys, broken, good, "broken_ckpt: ")
    _bad(tmp_path, capsys, tmp_path / "no_such_ckpt", good, "no_such_ckpt: not a checkpoint directory")

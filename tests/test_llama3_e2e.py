"""The Llama 3 family end to end on CPU: a small Llama-3-shaped model (grouped-query attention,
rope theta 500000, Llama 3.1 rope scaling, Meta's real 128,256-token tokenizer) trains through
`python -m train` on real Alpaca-format data with the llama3_chat template, exports, converts
with `to-hf`, loads in transformers with the same logits and the same prompt ids, and answers
through `tools.chat` exactly as transformers' greedy generate does (stopping at <|eot_id|>).
Oracle: transformers' LlamaForCausalLM / AutoTokenizer. Skipped without the shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hf_reference import max_abs_diff, run_module
from train_helpers import run_train

transformers = pytest.importorskip("transformers")

from data.alpaca import encode_prompt  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LLAMA3, GSM8K = DATA / "llama3_tokenizer.model", DATA / "gsm8k_alpaca.json"
pytestmark = pytest.mark.skipif(not (LLAMA3.is_file() and GSM8K.is_file()), reason="shared data not present")
STOPS = [128001, 128008, 128009]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("l3")
    records = json.loads(GSM8K.read_text(encoding="utf-8"))[:32]
    (root / "train.json").write_text(json.dumps(records), encoding="utf-8")
    cfg = {
        "seed": 0,
        "max_steps": 10,
        "tokenizer": str(LLAMA3),
        "model": {"preset": "debug", "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16,
                  "rope_theta": 500000.0, "use_scaled_rope": True, "rope_scale_factor": 8.0,
                  "rope_low_freq_factor": 1.0, "rope_high_freq_factor": 4.0,
                  "rope_original_max_position_embeddings": 8192, "max_seq_len": 256},
        "data": {"paths": [str(root / "train.json")], "template": "llama3_chat", "max_len": 96,
                 "cache_dir": str(root / "cache"), "num_proc": 1},
        "optim": {"lr": 1e-2, "warmup_ratio": 0.1, "weight_decay": 0.0, "grad_clip": 1.0},
        "batch": {"micro_batch_size": 4, "grad_accum": 1},
        "parallel": {"fsdp": "full", "mixed_precision": "fp32"},
        "checkpoint": {"every": 0, "export": True, "export_dtype": "fp32"},
        "log": {"every": 1, "tensorboard": False},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_train(root / "cfg.yaml", root / "out", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, records


def test_loss_falls_and_the_export_carries_the_tokenizer(run):
    root, _ = run
    rows = [json.loads(line) for line in (root / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 10 and losses[0] > 11.0  # ~ln(128256) = 11.76 at initialisation
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0
    final = root / "out" / "final"
    assert (final / "tokenizer.model").read_bytes() == LLAMA3.read_bytes()
    args = json.loads((final / "config.json").read_text())
    assert args["vocab_size"] == 128256 and args["n_kv_heads"] == 2 and args["use_scaled_rope"] is True


@pytest.fixture(scope="module")
def hf(run):
    root, _ = run
    proc = run_module("tools.convert", "to-hf", str(root / "out" / "final"), str(root / "hf"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    model = transformers.LlamaForCausalLM.from_pretrained(root / "hf", dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(root / "hf")


def test_to_hf_has_the_same_logits_and_prompt_ids(run, hf):
    root, records = run
    hf_model, hf_tok = hf
    tok = load_tokenizer(LLAMA3)
    rec = records[0]
    ids = encode_prompt(tok, rec, "llama3_chat")
    hf_ids = hf_tok.apply_chat_template([{"role": "user", "content": rec["instruction"]}],
                                        add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert hf_ids == ids
    assert hf_tok(rec["output"], add_special_tokens=False)["input_ids"] == tok.encode(rec["output"])
    tokens = torch.tensor([ids + tok.encode(rec["output"])[:40]])
    with torch.no_grad():
        diff = max_abs_diff(hf_model(tokens).logits, load_model(root / "out" / "final").logits(tokens))
    assert diff < 1e-4
    gen = json.loads((root / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == STOPS and hf_model.config.bos_token_id == 128000


def test_chat_answers_with_the_trained_template_like_transformers(run, hf):
    root, records = run
    hf_model, hf_tok = hf
    instruction = records[1]["instruction"]
    # no --template: tools.chat reads data.template (llama3_chat) from the run's config.yaml
    proc = run_module("tools.chat", "--ckpt", str(root / "out" / "final"), "--instruction", instruction,
                      "--temperature", "0", "--max-new-tokens", "12", timeout=300)
    assert proc.returncode == 0, proc.stderr
    ids = hf_tok.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                eos_token_id=STOPS, pad_token_id=128004)
    new = out[0, len(ids):].tolist()
    new = new[:-1] if new and new[-1] in STOPS else new
    assert new, "an empty answer would compare nothing"
    assert proc.stdout == load_tokenizer(LLAMA3).decode(new) + "\n"


LLAMA2 = DATA / "llama2_tokenizer.model"


@pytest.mark.skipif(not LLAMA2.is_file(), reason=f"{LLAMA2} not present")
def test_a_tokenizer_that_does_not_fit_is_one_line_in_chat_convert_and_train(run, tmp_path):
    root, _ = run
    final = root / "out" / "final"
    # chat: 32,000 pieces for 128,256 rows
    proc = run_module("tools.chat", "--ckpt", str(final), "--tokenizer", str(LLAMA2), "--instruction", "hi",
                      timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "tokenizer has 32000 pieces but tensor 'tok_embeddings.weight' has 128256 rows" in proc.stderr
    # chat: a Llama-3-sized model whose training template needs control tokens LLaMA 2 lacks
    import tools.chat as chat

    with pytest.raises(chat.ChatError, match=r"needs the control token <\|start_header_id\|>"):
        chat.respond(load_model(final), load_tokenizer(LLAMA2), "hi", template="llama3_chat", max_new_tokens=1)
    # convert: 32,000 pieces for 128,256 rows is a wrong pairing
    bad = tmp_path / "ckpt"
    bad.mkdir()
    for f in final.iterdir():
        (bad / f.name).write_bytes((LLAMA2 if f.name == "tokenizer.model" else f).read_bytes())
    proc = run_module("tools.convert", "to-hf", str(bad), str(tmp_path / "hf"), timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "tokenizer.model: tokenizer has 32000 pieces but tensor 'tok_embeddings.weight' has 128256 rows" in proc.stderr
    # train: the Llama 3 tokenizer with a model of 1,000 embedding rows
    cfg = yaml.safe_load((root / "cfg.yaml").read_text())
    cfg["model"]["vocab_size"] = 1000
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_train(tmp_path / "cfg.yaml", tmp_path / "out", timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"tokenizer {LLAMA3} has 128256 tokens, the model only 1000 embeddings" in proc.stderr

"""tools.plan against a hand calculation (7B / 13B shards and AdamW state) and against measured
CPU peaks of small models (+-20%)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from model.args import ModelArgs
from tests.train_helpers import ROOT
from tools.plan import main as plan_main
from train.config import load_config
from train.plan import plan, smallest_fix

CONFIGS = ROOT / "configs"


def _cfg(name: str, *overrides: str):
    return load_config(CONFIGS / name, list(overrides))


@pytest.mark.parametrize("name,preset,params", [("alpaca_7b.yaml", "llama1-7b", 6_738_415_616),
                                                ("alpaca_13b.yaml", "llama1-13b", 13_015_864_320)])
def test_sharded_state_matches_a_hand_calculation(name, preset, params):
    # Parameter counts by hand: 7B = 32 layers x (4 x 4096^2 + 3 x 4096 x 11008 + 2 x 4096)
    # + 2 x 32000 x 4096 + 4096; 13B likewise with 40 x 5120, hidden 13824.
    hand = {"llama1-7b": 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 2 * 32000 * 4096 + 4096,
            "llama1-13b": 40 * (4 * 5120**2 + 3 * 5120 * 13824 + 2 * 5120) + 2 * 32000 * 5120 + 5120}[preset]
    assert hand == params
    args = ModelArgs.preset(preset)
    p = plan(_cfg(name), args, gpus=8)
    assert p.shard == 8
    assert p.terms["params"] == pytest.approx(params / 8 * 4)  # fp32 masters
    assert p.terms["grads"] == pytest.approx(params / 8 * 4)  # sharded fp32 gradients
    assert p.terms["adamw"] == pytest.approx(params / 8 * 8)  # exp_avg + exp_avg_sq, fp32
    assert p.terms["grads_in_flight"] == pytest.approx(params / 8 * 4)  # grad_accum 4
    # The recipes' headers promise 8 x 80 GB; 13B on 8 x 40 GB only without replicating state.
    assert p.fits(80.0)
    # Replicated (no sharding): 16 bytes per parameter per GPU, far beyond 80 GB for 7B.
    rep = plan(_cfg(name, "parallel.fsdp=none"), args, gpus=8)
    assert rep.terms["params"] + rep.terms["grads"] + rep.terms["adamw"] == pytest.approx(16 * params)
    assert not rep.fits(80.0)
    assert smallest_fix(_cfg(name, "parallel.fsdp=none"), args, 8, 80.0) == "parallel.fsdp=full"


def test_activation_checkpointing_and_micro_batch_move_the_activation_term():
    args = ModelArgs.preset("llama1-7b")
    full = plan(_cfg("alpaca_7b.yaml"), args, 8).terms["activations"]
    none = plan(_cfg("alpaca_7b.yaml", "parallel.activation_checkpointing=none"), args, 8).terms["activations"]
    half = plan(_cfg("alpaca_7b.yaml", "parallel.activation_checkpointing=none", "batch.micro_batch_size=2"),
                args, 8).terms["activations"]
    assert none > 10 * full
    assert half == pytest.approx(none / 2)
    # By hand, bf16 (2 bytes) per token per layer: two norms 2 x (4 + 2 + 2) x 4096, fp32 q and k
    # 8 x 4096, q/k/v/out 2 x 4 x 4096, wo's input 2 x 4096, SwiGLU 4 x 2 x 11008 = 227,328 bytes;
    # 2044 tokens (4 x 511) x 32 layers, plus the embedding, final-norm and backward working terms (< 2%).
    assert none == pytest.approx(2044 * 32 * 227_328, rel=0.02)


def test_impossible_layouts_are_one_line_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for extra in (["--gpus", "6", "parallel.fsdp=hybrid", "parallel.shard_size=4"], ["batch.micro_batch_size=0"]):
        proc = subprocess.run([sys.executable, "-m", "tools.plan", "--config", str(CONFIGS / "alpaca_7b.yaml"),
                               "--model", "llama1-7b", *extra], cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


SMALL = ["model.dim=512", "model.n_layers=4", "model.n_heads=8", "model.vocab_size=8000", "data.packing=false",
         "data.max_len=257", "batch.micro_batch_size=4", "parallel.mixed_precision=fp32"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["parallel.activation_checkpointing=none"],
                                   ["parallel.activation_checkpointing=full", "batch.grad_accum=2"],
                                   ["parallel.activation_checkpointing=none", "batch.micro_batch_size=8"]])
def test_prediction_within_20_percent_of_the_measured_cpu_peak(extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "tools.plan", "--config", str(CONFIGS / "bench_1b.yaml"),
                           "--measure", "--json", *SMALL, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.8 <= row["predicted_gb"] / row["measured_gb"] <= 1.2, row


# Every config whose header states a planner number (all but the tiny default and generate's).
STATED = ["alpaca_13b.yaml", "alpaca_7b.yaml", "alpaca_7b_fast.yaml", "bench_1b.yaml", "llama2_7b.yaml",
          "llama2_7b_fast.yaml", "llama31_8b_instruct_alpaca.yaml", "llama3_8b_alpaca.yaml",
          "alpaca_lora_7b.yaml", "alpaca_qlora_7b.yaml", "llama3_8b_qlora.yaml"]
RECIPES = {"alpaca_7b.yaml": "llama1-7b", "alpaca_13b.yaml": "llama1-13b", "llama2_7b.yaml": "llama2-7b",
           "alpaca_7b_fast.yaml": "llama1-7b", "llama2_7b_fast.yaml": "llama2-7b",
           "llama3_8b_alpaca.yaml": "llama3-8b", "llama31_8b_instruct_alpaca.yaml": "llama3.1-8b"}
ONE_GPU = {"alpaca_lora_7b.yaml": "llama1-7b", "alpaca_qlora_7b.yaml": "llama1-7b", "llama3_8b_qlora.yaml": "llama3-8b"}
HEADER = re.compile(r"Memory \(python -m tools\.plan ([^)]*)\): ([\d.]+) GB")


def test_the_configs_that_state_a_planner_number_are_all_listed():
    stating = sorted(p.name for p in CONFIGS.glob("*.yaml") if HEADER.search(p.read_text()))
    assert stating == sorted(STATED)


@pytest.mark.parametrize("name", STATED)
def test_every_header_states_what_its_own_planner_command_prints_and_fits(name, capsys):
    """The header's command, run as written (plus --json): its total, rounded as printed, is the
    header's number, and the verdict is "fits" (exit 0)."""
    stated = HEADER.search((CONFIGS / name).read_text())
    argv = shlex.split(stated.group(1))
    assert argv[:2] == ["--config", f"configs/{name}"]
    if name in RECIPES:  # 8 x 80 GB, with the architecture of the checkpoint the recipe fine-tunes
        assert argv[2:] == ["--model", RECIPES[name]]
    if name in ONE_GPU:  # LoRA / QLoRA: one 24 GB GPU
        assert argv[2:] == ["--model", ONE_GPU[name], "--gpus", "1", "--gpu-mem-gb", "24"]
    capsys.readouterr()
    code = plan_main([argv[0], str(ROOT / argv[1]), *argv[2:], "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and r["fits"]
    assert f"{r['total_gb']:.2f}" == stated.group(2)


# The tiny model by hand: dim 128, 4 layers, hidden 32 x ceil(int(2/3 x 4 x 128) / 32) = 352,
# layer = 4 x 128^2 (attention) + 3 x 128 x 352 (MLP) + 2 x 128 (norms); embeddings and output
# V x 128 each; the final norm 128.
TINY_LAYERS = 4 * (4 * 128**2 + 3 * 128 * 352 + 2 * 128) + 128


def _plan_json(capsys, *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = plan_main(list(argv) + ["--json"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object on one line, nothing else on stdout
    return code, json.loads(out)


def test_plan_json_counts_the_tiny_model_with_its_tokenizers_vocabulary(tmp_path, capsys):
    from hf_reference import train_sentencepiece

    tiny = str(CONFIGS / "tiny.yaml")
    code, r = _plan_json(capsys, "--config", tiny, f"output_dir={tmp_path}")  # assets not built yet
    assert code == 0 and r["params"] == TINY_LAYERS + 2 * 1000 * 128 == 1_059_968
    assert r["vocab_size"] == 1000 and r["vocab_source"].startswith("assumed: ")
    (tmp_path / "assets").mkdir()
    tok = train_sentencepiece(tmp_path / "assets" / "tokenizer.model", vocab_size=400)
    code, r = _plan_json(capsys, "--config", tiny, f"output_dir={tmp_path}")  # as `python -m train` built it
    assert r["vocab_size"] == 400 and r["vocab_source"] == str(tok)
    assert r["params"] == TINY_LAYERS + 2 * 400 * 128
    code, r = _plan_json(capsys, "--config", tiny, f"tokenizer={tok}", "output_dir=/nonexistent")
    assert r["vocab_size"] == 400 and r["params"] == TINY_LAYERS + 2 * 400 * 128
    code, r = _plan_json(capsys, "--config", tiny, "tokenizer=/nonexistent/tokenizer.model")
    assert r["vocab_size"] == 32000 and "assumed: /nonexistent/tokenizer.model is not on this machine" == r["vocab_source"]
    assert r["params"] == TINY_LAYERS + 2 * 32000 * 128


def test_plan_json_that_does_not_fit_exits_1_with_the_fix(capsys):
    params = 6_738_415_616  # llama1-7b, by hand in test_sharded_state_matches_a_hand_calculation
    code, r = _plan_json(capsys, "--config", str(CONFIGS / "alpaca_7b.yaml"), "--model", "llama1-7b",
                         "parallel.fsdp=none")
    assert code == 1 and r["fits"] is False and r["smallest_fix"] == "parallel.fsdp=full"
    assert r["params"] == params and r["shard"] == 1 and r["gpu_mem_gb"] == 80.0
    # Replicated: 4 (fp32 master) + 4 (gradient) + 8 (AdamW) bytes per parameter on every GPU.
    assert r["terms_gb"]["params"] + r["terms_gb"]["grads"] + r["terms_gb"]["adamw"] == pytest.approx(16 * params / 1e9)
    assert r["total_gb"] == pytest.approx(sum(r["terms_gb"].values()))


def test_asynchronous_saves_count_a_host_copy_of_the_ranks_state_outside_the_gpu_total():
    params = 6_738_415_616  # llama1-7b, by hand in test_sharded_state_matches_a_hand_calculation
    args = ModelArgs.preset("llama1-7b")
    on = plan(_cfg("alpaca_7b.yaml"), args, gpus=8)  # checkpoint.every 200, async_save auto
    assert on.host_terms == {"checkpoint_staging": pytest.approx(params / 8 * 12)}  # fp32 weights + 2 moments
    off = plan(_cfg("alpaca_7b.yaml", "checkpoint.async_save=false"), args, gpus=8)
    assert off.host_terms == {} and off.total == on.total
    assert plan(_cfg("alpaca_7b.yaml", "checkpoint.every=0"), args, gpus=8).host_terms == {}

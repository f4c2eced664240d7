"""tools.plan against a hand calculation (7B / 13B shards and AdamW state) and against measured
CPU peaks of small models (+-20%)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from model.args import ModelArgs
from tests.train_helpers import ROOT
from train.config import load_config
from train.plan import GB, plan, smallest_fix

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


RECIPES = {"alpaca_7b.yaml": "llama1-7b", "alpaca_13b.yaml": "llama1-13b", "llama2_7b.yaml": "llama2-7b",
           "alpaca_7b_fast.yaml": "llama1-7b", "llama2_7b_fast.yaml": "llama2-7b",
           "llama3_8b_alpaca.yaml": "llama3-8b", "llama31_8b_instruct_alpaca.yaml": "llama3.1-8b"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_header_states_what_the_planner_says_and_fits_8x80(name):
    import re

    text = (CONFIGS / name).read_text()
    stated = re.search(r"Memory \(python -m tools.plan --config configs/(\S+) --model (\S+)\): ([\d.]+) GB", text)
    assert stated and stated.group(1) == name and stated.group(2) == RECIPES[name], name
    p = plan(_cfg(name), ModelArgs.preset(RECIPES[name]), gpus=8)
    assert round(p.total / GB, 2) == float(stated.group(3))
    assert p.fits(80.0)

"""tools/bench.py train: runs the real loop for a few steps and reports throughput honestly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.train_helpers import ROOT, tiny_assets, tiny_config

pytestmark = pytest.mark.slow


def bench(cfg, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tools.bench", "train", "--config", str(cfg), "--steps", "3",
                           "--warmup", "1", *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_train_reports_real_tokens_per_s_and_mfu_only_with_a_known_peak(tmp_path):
    import torch

    from model.args import ModelArgs
    from model.llama import Transformer
    from model.tokenizer import load_tokenizer

    assets = tiny_assets(tmp_path / "assets")
    cfg = tiny_config(tmp_path / "tiny.yaml", assets, tmp_path / "cache")
    r = bench(cfg)
    assert r["measured_steps"] == 3 and r["tokens_per_s"] > 0 and r["model_tflops_per_s"] > 0
    assert r["mfu"] is None and r["peak_source"].startswith("none")  # a CPU has no table peak
    # The FLOPs basis is the real parameter count of the model that was trained.
    args = ModelArgs.preset("debug", dim=64, n_layers=2, max_seq_len=128,
                            vocab_size=load_tokenizer(assets["tokenizer"]).vocab_size)
    assert r["params"] == sum(p.numel() for p in Transformer(args).parameters())
    declared = bench(cfg, "--peak-tflops", "0.5")
    assert declared["peak_source"].startswith("declared")
    assert declared["mfu"] == pytest.approx(declared["model_tflops_per_s"] / 0.5, rel=1e-9)
    assert torch.isfinite(torch.tensor(declared["final_loss"]))


def test_bench_without_a_subcommand_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "tools.bench"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr

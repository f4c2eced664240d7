"""Shared helpers for the training tests: tiny assets, a tiny config, running `python -m train`
(alone or under torchrun with 2 gloo processes), and reading a run's results back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Fields of a metrics.jsonl row that measure time, not training: excluded when runs are compared.
TIMING = {"tokens_per_s", "step_time_s", "mfu", "peak_mem_gb", "eta_s", "checkpoint_blocked_s"}


def tiny_assets(out: Path) -> dict[str, str]:
    from data.synthetic import build_tiny_assets

    return build_tiny_assets(out, 0, n_train=400, heldout_per_family=2)


def tiny_config(path: Path, assets: dict[str, str], cache_dir: Path) -> Path:
    """dim 64, 2 layers, rows of <= 63 tokens, fp32: the smallest run that still trains."""
    cfg = {
        "seed": 0,
        "max_steps": 8,
        "tokenizer": assets["tokenizer"],
        "model": {"preset": "debug", "dim": 64, "n_layers": 2, "max_seq_len": 128},
        "data": {"paths": [assets["train"]], "max_len": 64, "cache_dir": str(cache_dir), "num_proc": 1},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.25, "weight_decay": 0.1, "grad_clip": 1.0},
        "batch": {"micro_batch_size": 4, "grad_accum": 1},
        "parallel": {"fsdp": "full", "mixed_precision": "fp32"},
        "checkpoint": {"every": 4, "keep": 2},
        "log": {"every": 1, "tensorboard": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_train(config: Path, out_dir: Path, nproc: int = 1, overrides: list[str] = (),
              fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TRAIN_FAULT", None)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if fault:
        env["TRAIN_FAULT"] = fault
    args = ["--config", str(config), f"output_dir={out_dir}", *overrides]
    if nproc == 1:
        cmd = [sys.executable, "-m", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def rows(out_dir: Path) -> list[dict]:
    """Training rows of metrics.jsonl without the timing fields (eval rows left out)."""
    out = []
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            out.append({k: v for k, v in r.items() if k not in TIMING})
    return out


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    from model.checkpoint import load_model

    return load_model(out_dir / "final").state_dict()

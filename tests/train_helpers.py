"""Shared helpers for the training tests: tiny assets, a tiny config, running `python -m train`
(alone or under torchrun with 2 gloo processes), and reading a run's results back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Fields of a metrics.jsonl row that measure time, not training: excluded when runs are compared.
TIMING = {"tokens_per_s", "step_time_s", "mfu", "peak_mem_gb", "eta_s"}


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


def assert_same_training(a: Path, b: Path, rtol: float, atol: float, weight_atol: float) -> None:
    """Same data, same updates: rows agree to `rtol`/`atol`; weights to `weight_atol` (Adam
    divides by sqrt(v), which turns last-bit differences of a rarely seen embedding row's
    gradient into ~1e-6 differences of its weight; a wrong normalisation moves weights by ~lr)."""
    ra, rb = rows(a), rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 9))
    for x, y in zip(ra, rb, strict=True):
        assert x["tokens"] == y["tokens"] and x["targets"] == y["targets"]
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-12)
        assert x["loss"] == pytest.approx(y["loss"], rel=rtol, abs=atol), (x, y)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=max(rtol, 1e-4), abs=atol), (x, y)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=weight_atol, msg=k)

"""Shared helpers for the training tests: tiny assets, a tiny config, running `python -m train`
(alone or under torchrun with 2 gloo processes), and reading a run's results back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def train_env(fault: str | None = None) -> dict[str, str]:
    """The environment of a training process: one thread, no inherited rank or fault variables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("TRAIN_FAULT", "TRAIN_FAULT_ONCE", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if fault:
        env["TRAIN_FAULT"] = fault
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(config: Path, out_dir: Path, nproc: int = 1, overrides: list[str] = (),
              fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = train_env(fault)
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


def agent_cmd(config: Path, out_dir: Path, port: int, nnodes: int, nproc: int, overrides: list[str] = (),
              max_restarts: int = 0, rdzv_conf: str | None = None) -> list[str]:
    """One torchrun agent of an `nnodes`-node job, as each node of a cluster starts it: the same
    command everywhere, a c10d rendezvous at 127.0.0.1:`port` (the "head node")."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test",
            f"--max-restarts={max_restarts}", *([f"--rdzv-conf={rdzv_conf}"] if rdzv_conf else []),
            "-m", "train", "--config", str(config), f"output_dir={out_dir}", *overrides]


def start_agent(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A process group of its own, like a node's launcher: killing it never reaches pytest."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def wait_agents(agents: list[subprocess.Popen], logs: list[Path], timeout: float = 240) -> list[int]:
    """Exit codes; on a timeout the agents are stopped and the test fails with their logs."""
    deadline = time.monotonic() + timeout
    try:
        return [a.wait(timeout=max(deadline - time.monotonic(), 1)) for a in agents]
    except subprocess.TimeoutExpired:
        stop_agents(agents)
        raise AssertionError("agents timed out\n" + "\n".join(log.read_text()[-3000:] for log in logs)) from None


def stop_agents(agents: list[subprocess.Popen]) -> None:
    """SIGTERM first: torchrun passes it on to its workers (which live in sessions of their own and
    would outlive a SIGKILLed agent), then SIGKILL whatever is left of each agent's group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for a in agents:
            if a.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(a.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            for a in agents:
                a.wait(timeout=15)

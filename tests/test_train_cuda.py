"""The GPU path (NCCL, bf16 on CUDA, MFU from the peak table). Skipped without a CUDA device;
the same loop is covered on CPU/gloo by test_train_distributed.py."""

from __future__ import annotations

import json

import pytest
import torch

from tests.train_helpers import check, final_weights, rows, run_train, tiny_assets, tiny_config
from train.metrics import peak_tflops_bf16

pytestmark = [pytest.mark.cuda, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_run_on_one_gpu_lowers_the_loss_and_reports_mfu(tmp_path):
    assets = tiny_assets(tmp_path / "assets")
    cfg = tiny_config(tmp_path / "tiny.yaml", assets, tmp_path / "cache")
    out = tmp_path / "gpu"
    check(run_train(cfg, out, overrides=["max_steps=12", "parallel.mixed_precision=bf16",
                                         "parallel.activation_checkpointing=full", "checkpoint.every=6"]))
    losses = [r["loss"] for r in rows(out)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    raw = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    known = peak_tflops_bf16(torch.cuda.get_device_name(0)) is not None
    assert all((r["mfu"] is not None) == known for r in raw)
    assert all(r["peak_mem_gb"] > 0 for r in raw)
    weights = final_weights(out)
    assert all(torch.isfinite(w).all() for w in weights.values())

"""The LoRA / QLoRA terms of the memory plan (train/plan_lora.py) against hand counts, torchao's
own NF4 tensors, and the recipes' headers."""

from __future__ import annotations

import pytest

from model.args import ModelArgs
from tests.train_helpers import ROOT
from train.config import load_config
from train.plan import plan, smallest_fix
from train.plan_lora import adapter_params, nf4_bytes

CONFIGS = ROOT / "configs"
P7B = 6_738_415_616  # llama1-7b, by hand in tests/test_plan.py


def _cfg(name: str, *overrides: str):
    return load_config(CONFIGS / name, list(overrides))


def _lora(*overrides: str):
    return _cfg("alpaca_lora_7b.yaml", *overrides).lora


def test_adapter_parameter_counts_by_hand():
    args = ModelArgs.preset("llama1-7b")
    # r 8 on q and v: 32 layers x 2 modules x 8 x (4096 in + 4096 out); alpaca-lora prints
    # "trainable params: 4194304".
    assert adapter_params(args, _lora()) == 32 * 2 * 8 * (4096 + 4096) == 4_194_304
    # r 64 on all seven: 4 attention maps 4096 -> 4096, three MLP maps between 4096 and 11008.
    # QLoRA's script prints half of this (79,953,920): it halves the count for 4-bit models.
    every = 32 * 64 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    assert adapter_params(args, _lora("lora.rank=64", "lora.targets=[all]")) == every == 159_907_840
    # Grouped-query attention: Llama 3 8B's wk and wv map 4096 -> 1024.
    l3 = ModelArgs.preset("llama3-8b")
    assert adapter_params(l3, _lora()) == 32 * 8 * ((4096 + 4096) + (4096 + 1024))


def test_nf4_bytes_of_a_7b_matrix_by_hand():
    # 4096 x 4096 from bf16: two 4-bit codes per byte, an int8 scale per 64 weights, a bf16
    # factor per 256 scales, the bf16 scale mean and the 16-entry bf16 code book.
    n = 4096 * 4096
    hand = n // 2 + n // 64 + (n // 64 // 256) * 2 + 2 + 16 * 2
    assert hand == 8_652_834 == nf4_bytes(n, 2)
    assert 8 * hand / n == pytest.approx(4.126, abs=1e-3)  # bits per weight
    # 4096 x 11008: 704,512 scales, 2752 blocks of 256.
    assert nf4_bytes(4096 * 11008, 2) == 22_544_384 + 704_512 + 2752 * 2 + 2 + 32


@pytest.mark.parametrize("shape,dtype", [((256, 1024), "bfloat16"), ((64, 96), "float32")])
def test_nf4_bytes_match_torchaos_tensors(shape, dtype):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    from torch import nn

    from model.lora import LoRALinear, quantize_module

    m = LoRALinear(nn.Linear(shape[1], shape[0], bias=False, dtype=getattr(torch, dtype)), 4, 8.0, 0.0)
    quantize_module(m)
    w = m.weight
    inner = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")
    held = sum(getattr(w, a).untyped_storage().nbytes() for a in inner)
    assert held == nf4_bytes(shape[0] * shape[1], getattr(torch, dtype).itemsize)


def test_lora_7b_state_terms_by_hand():
    args = ModelArgs.preset("llama1-7b")
    A = 4_194_304
    p = plan(_cfg("alpaca_lora_7b.yaml"), args, gpus=1)
    t = p.terms
    # The whole base frozen in bf16 (2 bytes), the adapters' fp32 masters, fp32 gradients and
    # two fp32 AdamW moments; nothing for a frozen weight's gradient or optimizer state.
    assert t["params"] == pytest.approx(P7B * 2 + A * 4)
    assert t["grads"] == pytest.approx(A * 4)
    assert t["adamw"] == pytest.approx(A * 8)
    assert t["grads_in_flight"] == pytest.approx(A * 4)  # grad_accum 32
    # Gathered: three bf16 layers with their adapters (bf16 in compute) plus one layer's fp32
    # adapter gradients; the root gathered in bf16, no gradient.
    layer = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    a_layer = 2 * 8 * (4096 + 4096)
    assert t["gathered_layers"] == pytest.approx(3 * (layer * 2 + a_layer * 2) + a_layer * 4)
    assert t["root_unsharded"] == pytest.approx((2 * 32000 * 4096 + 4096) * 2)
    assert "nf4_dequant" not in t
    # An asynchronous save stages the adapters and their AdamW moments, not the frozen base.
    staged = plan(_cfg("alpaca_lora_7b.yaml", "checkpoint.async_save=true"), args, gpus=1).host_terms
    assert staged["checkpoint_staging"] == pytest.approx(A * (4 + 8))
    # Eight GPUs: everything sharded eight ways.
    p8 = plan(_cfg("alpaca_lora_7b.yaml"), args, gpus=8)
    assert p8.terms["params"] == pytest.approx((P7B * 2 + A * 4) / 8)
    assert p8.terms["adamw"] == pytest.approx(A * 8 / 8)


def test_qlora_7b_params_term_by_hand():
    args = ModelArgs.preset("llama1-7b")
    p = plan(_cfg("alpaca_qlora_7b.yaml"), args, gpus=1)
    sq = 4096**2 // 2 + 4096**2 // 64 + 4096**2 // 64 // 256 * 2 + 2 + 32  # 8,652,834
    mlp = 4096 * 11008 // 2 + 4096 * 11008 // 64 + 4096 * 11008 // 64 // 256 * 2 + 2 + 32
    layer = 4 * sq + 3 * mlp + 2 * 4096 * 2  # NF4 linears, bf16 norms
    root = (2 * 32000 * 4096 + 4096) * 2  # embeddings, output, final norm stay bf16
    A = 159_907_840
    assert p.terms["params"] == pytest.approx(32 * layer + root + A * 4)
    assert p.terms["adamw"] == pytest.approx(A * 8)
    # Dequantising w1 (4096 x 11008) for a matmul: int64 codes (8 B) + 3 bf16 buffers per weight.
    assert p.terms["nf4_dequant"] == pytest.approx(4096 * 11008 * (8 + 3 * 2))


def test_lora_activations_by_hand():
    args = ModelArgs.preset("llama1-7b")
    base = ["parallel.activation_checkpointing=none"]
    full = plan(_cfg("alpaca_7b.yaml", *base, "data.max_len=256"), args, 1).terms["activations"]
    lora = plan(_cfg("alpaca_lora_7b.yaml", *base), args, 1).terms["activations"]
    # Per token per layer, bf16: full fine-tuning keeps 227,328 bytes (tests/test_plan.py); a
    # frozen base does not keep the norms' normalised and scaled outputs (2 x 2 x 2 x 4096), wo's
    # input (2 x 4096) or w2's input (2 x 11008); q's and v's adapters keep dropout's output and
    # mask (2 x 4096 x 3) and A x (2 x 8 x 2).
    per_layer = 227_328 - 8 * 4096 - 2 * 4096 - 2 * 11008 + 2 * 4096 * 3 + 2 * 8 * 2
    assert per_layer == 188_960
    tokens = 4 * 255
    # The same non-layer terms (embedding output, final norm, backward working set) as full FT.
    assert lora - full == pytest.approx(tokens * 32 * (per_layer - 227_328))


def test_smallest_fix_for_lora_names_checkpointing_micro_batch_or_nf4():
    args = ModelArgs.preset("llama1-7b")
    name = "alpaca_lora_7b.yaml"
    cases = [  # (overrides, GPU GB, the fix the planner names)
        (["parallel.activation_checkpointing=none"], 24, "parallel.activation_checkpointing=selective"),
        (["batch.micro_batch_size=32", "batch.grad_accum=4"], 24,
         "batch.micro_batch_size=16 batch.grad_accum=8 (same global batch)"),
        # Neither checkpointing nor a smaller micro-batch alone: both.
        (["parallel.activation_checkpointing=none", "batch.micro_batch_size=32", "batch.grad_accum=4"], 20,
         "parallel.activation_checkpointing=full batch.micro_batch_size=4 batch.grad_accum=32 (same global batch)"),
        # A bf16 base of 13.5 GB cannot fit 16 GB: NF4 for every adapted linear.
        (["lora.targets=[all]"], 16, "lora.quantize_base=nf4"),
    ]
    for overrides, gb, want in cases:
        cfg = _cfg(name, *overrides)
        assert not plan(cfg, args, 1).fits(gb)
        assert smallest_fix(cfg, args, 1, gb) == want
        fixed = [kv for kv in want.split(" (")[0].split()]
        assert plan(_cfg(name, *overrides, *fixed), args, 1).fits(gb), want
    # NF4 only quantises the adapted linears: with q and v alone, 16 GB still needs two GPUs.
    assert smallest_fix(_cfg(name), args, 1, 16) == "2 GPUs (batch.grad_accum scaled down to keep the global batch)"
    # 65B QLoRA r 64 on one 48 GB GPU: the fp32 adapter state alone is 800M x 16 bytes.
    assert smallest_fix(_cfg("alpaca_qlora_7b.yaml"), ModelArgs.preset("llama1-65b"), 1, 48) == \
        "2 GPUs (batch.grad_accum scaled down to keep the global batch)"


def _measure(config, env_extra: dict, *overrides: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env_extra}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MALLOC_MMAP_THRESHOLD_"):
        if k not in env_extra:
            env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "tools.plan", "--config", str(config), "--measure", "--json",
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["{rank: 8, alpha: 16, dropout: 0.05, targets: [wq, wv]}",
                                  "{rank: 64, alpha: 16, dropout: 0.1, targets: [all], quantize_base: nf4}"])
def test_lora_plan_lies_between_the_live_and_the_resident_cpu_peak(tmp_path, spec):
    """Three steps through the real build (base checkpoint, adapters, NF4) on a 512 x 4 model,
    measured twice: as resident memory (VmHWM, glibc keeping freed heap, as the full fine-tuning
    rows are measured) and as live bytes (MALLOC_MMAP_THRESHOLD_: every block of 64 KB or more
    mapped and unmapped on its own, so RSS follows what is allocated, as max_memory_allocated
    does on a GPU). The plan must lie between the two (below the live peak a GPU would run out of
    memory; above the resident peak the plan asks for more than a process ever held) and within
    20% of the live peak (docs/MEMORY.md has both columns)."""
    import torch
    import yaml

    from model.checkpoint import save_checkpoint
    from model.llama import Transformer

    torch.manual_seed(1)
    args = ModelArgs(dim=512, n_layers=4, n_heads=8, vocab_size=8000, multiple_of=256, norm_eps=1e-5)
    model = Transformer(args)
    model.init_weights()
    base = save_checkpoint(model.state_dict(), args, tmp_path / "base")
    del model
    cfg = {"output_dir": str(tmp_path / "run"), "model": {"init_from": str(base)},
           "data": {"paths": ["unused.json"], "max_len": 257, "packing": False},
           "batch": {"micro_batch_size": 4, "grad_accum": 1},
           "parallel": {"fsdp": "full", "mixed_precision": "fp32", "activation_checkpointing": "none"},
           "lora": yaml.safe_load(spec)}
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(cfg))
    resident = _measure(tmp_path / "lora.yaml", {})
    live = _measure(tmp_path / "lora.yaml", {"MALLOC_MMAP_THRESHOLD_": "65536"})
    planned = resident["predicted_gb"]
    assert live["measured_gb"] <= planned <= resident["measured_gb"], (live, resident)
    assert planned <= 1.2 * live["measured_gb"], (live, resident)

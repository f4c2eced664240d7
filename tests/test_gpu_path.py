"""CPU twins of GPU-path properties: the meta device stands in for a GPU where a tensor's
placement is what matters, and a one-rank gloo group runs FSDP2's bf16 casting on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.collate import collate_packed, collate_padded
from model.attention import DenseMask, PerDocument
from tests.examples import random_examples
from train.config import ConfigError, ParallelConfig
from train.parallel import check_supported
from train.step import MicroBatch, prepare_batch, prepare_step

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")


def _tensors(mb: MicroBatch) -> dict[str, torch.Tensor]:
    found = {k: v for k, v in vars(mb).items() if isinstance(v, torch.Tensor)}
    found.update({f"attn.{k}": v for k, v in vars(mb.attn).items() if isinstance(v, torch.Tensor)})
    return found


@pytest.mark.parametrize("layout,backend,attn_type", [("padded", "auto", None), ("packed", "dense", DenseMask),
                                                      ("packed", "documents", PerDocument)])
def test_every_tensor_of_a_micro_batch_lands_on_the_target_device(layout, backend, attn_type):
    examples = random_examples(6, seed=1)
    batch = collate_padded(examples, 0) if layout == "padded" else collate_packed(examples, 64, 0)
    mb = prepare_batch(batch, META, backend)
    tensors = _tensors(mb)
    # tokens, labels and target_index always; positions and the dense mask when the layout has them.
    expected = {"tokens", "labels", "target_index"} | ({"positions"} if layout == "packed" else set())
    expected |= {"attn.mask"} if attn_type is DenseMask else set()
    assert set(tensors) == expected
    assert {k: v.device.type for k, v in tensors.items()} == {k: "meta" for k in expected}
    if attn_type is not None:
        assert isinstance(mb.attn, attn_type)
    # The target positions are the labels that are not IGNORE_INDEX, counted by hand.
    assert mb.target_index.numel() == int((batch.labels != -100).sum()) == mb.num_targets


def test_step_totals_are_the_sums_of_the_micro_batches():
    parts = [collate_padded(random_examples(3, seed=s), 0) for s in (2, 3)]
    step = prepare_step(parts, META)
    assert (step.num_targets, step.num_tokens) == (sum(p.num_targets for p in parts),
                                                    sum(p.num_tokens for p in parts))
    assert len(step) == 2


@pytest.mark.parametrize("attention,compile_,ac,refused", [
    ("flex", False, "selective", True),
    ("flex", True, "selective", False),
    ("flex", False, "full", False),
    ("dense", False, "selective", False),
])
def test_selective_checkpointing_of_uncompiled_flex_attention_is_refused(attention, compile_, ac, refused):
    cfg = ParallelConfig(attention=attention, compile=compile_, activation_checkpointing=ac)
    if refused:
        with pytest.raises(ConfigError, match="parallel.compile=true"):
            check_supported(cfg, packing=True, device=torch.device("cpu"))
    else:
        check_supported(cfg, packing=True, device=torch.device("cpu"))
    check_supported(cfg, packing=False, device=torch.device("cpu"))  # unpacked rows never use flex


def test_auto_attention_resolves_to_flex_on_cuda_so_the_refusal_covers_the_default():
    cfg = ParallelConfig(attention="auto", activation_checkpointing="selective")
    with pytest.raises(ConfigError):
        check_supported(cfg, packing=True, device=torch.device("cuda"))


ROPE_PROBE = r"""
import torch
import model.llama as llama
from model.args import ModelArgs
from model.llama import Transformer
from train.config import ParallelConfig
from train.distributed import init_distributed
from train import parallel

seen = []
original = llama.apply_rope
def probe(x, cos, sin):
    seen.append((x.dtype, cos.dtype, sin.dtype))
    return original(x, cos, sin)
llama.apply_rope = probe
info = init_distributed()
pcfg = ParallelConfig(mixed_precision="bf16", fsdp="full")
torch.manual_seed(0)
model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=64, multiple_of=16, max_seq_len=16))
parallel.apply_fsdp(model, parallel.build_mesh(pcfg, info), pcfg)
tokens = torch.randint(0, 64, (2, 8))
model(tokens, tokens).backward()
print(sorted({f"{a}/{b}/{c}" for a, b, c in seen}))
torch.distributed.destroy_process_group()
"""


def test_rope_keeps_fp32_cos_sin_inside_bf16_fsdp_layers():
    """FSDP2 casts a module's floating inputs to its compute dtype by default; the layers are
    wrapped without that cast, so RoPE sees bf16 activations but fp32 angles, as Meta's model."""
    out = subprocess.run([sys.executable, "-c", ROPE_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['torch.bfloat16/torch.float32/torch.float32']"

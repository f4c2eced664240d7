"""Selective activation checkpointing and per-layer torch.compile change the compute, never the math.

- selective AC: the same gradients as no checkpointing, and it does what its name says, counted
  op by op in backward: no matmul or attention kernel is redone (full AC redoes them all), the
  element-wise SiLU is.
- compile: 20 packed training steps on CPU give the eager run's losses within 1e-5 relative, and
  packed rows of one shape compile once: no recompilation after the first step.
- both under 2 gloo ranks through `python -m train`: the plain run's losses over 20 steps.
"""

from __future__ import annotations

import copy
import shutil
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from data.collate import collate_rows
from model import ModelArgs, Transformer
from model.attention import build_attention
from tests.train_helpers import check, rows, run_train, tiny_assets, tiny_config
from train import parallel
from train.config import ParallelConfig

M = -100
needs_cxx = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                               reason="torch.compile on CPU (inductor) needs a C++ compiler")


def _model(seed=0):
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=16))
    model.init_weights()
    return model


def _packed_batch(seed, n_rows=2, pack_len=64):
    """n_rows rows of pack_len tokens, a random number of random examples in each: one shape,
    a different document layout every time."""
    g = torch.Generator().manual_seed(seed)
    rows_ = []
    for _ in range(n_rows):
        row, room = [], pack_len
        while room > 4:
            n = min(int(torch.randint(4, 30, (1,), generator=g)), room)
            tokens = [1] + torch.randint(3, 50, (n - 1,), generator=g).tolist()
            labels = tokens[1:] + [2]
            k = int(torch.randint(0, n - 1, (1,), generator=g))
            row.append((tokens, [M] * k + labels[k:]))
            room -= n
        rows_.append(row)
    return collate_rows(rows_, pack_len, pad_id=2)


def _loss(model, batch, backend="auto"):
    logits = model.logits(batch.tokens, batch.positions, build_attention(batch.document_ids, backend))
    return F.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten(), ignore_index=M,
                           reduction="sum") / batch.num_targets


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func] += 1
        return func(*args, **(kwargs or {}))


def _backward_ops(model, batch):
    loss = _loss(model, batch)
    with _OpCounter() as counter:
        loss.backward()
    return counter.ops, {n: p.grad for n, p in model.named_parameters()}


def test_selective_checkpointing_keeps_matmuls_and_recomputes_elementwise_ops():
    base, batch = _model(), _packed_batch(0)
    models = {}
    for mode in ("none", "selective", "full"):
        models[mode] = copy.deepcopy(base)
        parallel.apply_activation_checkpointing(models[mode], ParallelConfig(activation_checkpointing=mode))
    ops, grads = {}, {}
    for mode, model in models.items():
        ops[mode], grads[mode] = _backward_ops(model, batch)
    aten = torch.ops.aten
    for mode in ("selective", "full"):
        for (name, g), g0 in zip(grads[mode].items(), grads["none"].values(), strict=True):
            torch.testing.assert_close(g, g0, rtol=1e-6, atol=1e-7, msg=name)
    n_layers = 2
    # full AC re-runs every layer's forward in backward, matmuls and attention included (all but
    # the last matmul, w2, whose output backward does not need: recomputation stops early) ...
    assert ops["full"][aten.mm.default] == ops["none"][aten.mm.default] + n_layers * 6
    assert ops["full"][aten.silu.default] == n_layers
    # ... selective keeps the matmul and attention outputs and redoes only the cheap ops.
    assert ops["selective"][aten.mm.default] == ops["none"][aten.mm.default]
    attention_kernel = aten._scaled_dot_product_flash_attention_for_cpu.default
    assert ops["full"][attention_kernel] > ops["none"][attention_kernel]
    assert ops["selective"][attention_kernel] == ops["none"][attention_kernel]
    assert ops["none"][aten.silu.default] == 0 and ops["selective"][aten.silu.default] == n_layers


def _train(model, steps, backend="auto"):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    losses = []
    for step in range(steps):
        loss = _loss(model, _packed_batch(100 + step), backend)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step == 0:  # forward and backward graphs are compiled by now
            graphs_after_first_step = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return losses, graphs_after_first_step


@needs_cxx
@pytest.mark.slow
def test_compiled_layers_train_like_eager_over_20_packed_steps_without_recompiling():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, compiled = _model(), _model()
    parallel.apply_compile(compiled)
    eager_losses, _ = _train(eager, 20)
    compiled_losses, graphs = _train(compiled, 20)
    assert graphs > 0  # it really compiled
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # and never again
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-5, atol=0)
    # the run trains: random tokens over 47 ids, so the loss falls towards the floor ln(47) = 3.85
    assert compiled_losses[-1] < compiled_losses[0]


@needs_cxx
@pytest.mark.slow
def test_selective_checkpointing_and_compile_under_two_ranks_match_the_plain_run(tmp_path):
    assets = tiny_assets(tmp_path / "assets")
    cfg = tiny_config(tmp_path / "tiny.yaml", assets, tmp_path / "cache")
    common = ["max_steps=20", "checkpoint.every=0", "checkpoint.export=false", "data.packing=true",
              "data.pack_len=64", "batch.micro_batch_size=1", "batch.grad_accum=2"]
    check(run_train(cfg, tmp_path / "plain", nproc=2, overrides=common))
    check(run_train(cfg, tmp_path / "fast", nproc=2, timeout=600,
                    overrides=[*common, "parallel.activation_checkpointing=selective", "parallel.compile=true"]))
    plain, fast = rows(tmp_path / "plain"), rows(tmp_path / "fast")
    assert len(plain) == len(fast) == 20
    torch.testing.assert_close(torch.tensor([r["loss"] for r in fast]), torch.tensor([r["loss"] for r in plain]),
                               rtol=1e-5, atol=0)

"""Packed attention backends (model/attention.py) against the padded batch.

The oracle is the same examples right-padded one per row under plain causal attention (SDPA's
`is_causal`, no document mask at all): every packed backend must give each target token the loss
it gets there, within 1e-5 in fp32, for grouped-query and multi-head attention, and the same
gradients. A leak test changes one document and demands bit-identical logits everywhere else.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from data.collate import collate_packed, collate_padded, collate_rows
from model import ModelArgs, Transformer
from model.attention import CacheMask, build_attention, document_segments
from tests.examples import random_examples

M = -100
HAS_CXX = shutil.which("g++") is not None or shutil.which("c++") is not None
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="torch.compile on CPU (inductor) needs a C++ compiler")
CPU_BACKENDS = ["documents", "dense"]


def _examples(n=7, vocab=50, seed=0):
    return random_examples(n, vocab, seed, max_len=25)


def _model(n_kv_heads, dim=32):
    torch.manual_seed(0)
    args = ModelArgs(dim=dim, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=50, multiple_of=16)
    model = Transformer(args)
    model.init_weights()
    return model.float()


def _target_losses(model, batch, attn):
    """Per-target-token losses in reading order (row by row), and the logits."""
    logits = model.logits(batch.tokens, batch.positions, attn).float()
    losses = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=M, reduction="none")
    return losses[batch.labels.flatten() != M], logits


def _padded_oracle(model, examples):
    padded = collate_padded(examples, pad_id=2)
    return _target_losses(model, padded, build_attention(None))[0]


@pytest.mark.parametrize("n_kv_heads", [2, 4], ids=["gqa", "mha"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_packed_losses_and_gradients_equal_the_padded_batch(backend, n_kv_heads):
    model, examples = _model(n_kv_heads), _examples()
    packed = collate_packed(examples, pack_len=64, pad_id=2)
    assert packed.tokens.shape[0] < len(examples) and packed.tokens.shape[0] > 1  # several rows
    oracle = _padded_oracle(model, examples)
    oracle.sum().backward()
    oracle_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    losses, _ = _target_losses(model, packed, build_attention(packed.document_ids, backend))
    torch.testing.assert_close(losses, oracle, rtol=1e-5, atol=1e-6)
    losses.sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, oracle_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_changing_one_document_leaves_every_other_bit_identical(backend):
    model, examples = _model(2), _examples(n=5, seed=3)
    batch = collate_packed(examples, pack_len=128, pad_id=2)
    assert batch.tokens.shape[0] == 1 and len(document_segments(batch.document_ids)[0]) >= 5
    second = batch.document_ids[0] == 1  # a document in the middle of the row
    perturbed = batch.tokens.clone()
    perturbed[0, second] = (perturbed[0, second] + 7) % 47 + 3
    with torch.no_grad():
        before = model.logits(batch.tokens, batch.positions, build_attention(batch.document_ids, backend))
        after = model.logits(perturbed, batch.positions, build_attention(batch.document_ids, backend))
    assert not torch.equal(before[0, second], after[0, second])  # the change is real
    assert torch.equal(before[0, ~second], after[0, ~second])  # and nothing else moved a bit


def test_document_segments_are_the_runs_of_equal_ids():
    ids = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 0]])
    assert document_segments(ids) == [[(0, 3), (3, 5), (5, 6)], [(0, 6)]]


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        build_attention(torch.zeros(1, 4, dtype=torch.long), "flash")


@needs_cxx
@pytest.mark.slow
@pytest.mark.parametrize("n_kv_heads", [2, 4], ids=["gqa", "mha"])
def test_compiled_flex_forward_on_cpu_equals_the_padded_batch(n_kv_heads):
    model, examples = _model(n_kv_heads), _examples()
    packed = collate_packed(examples, pack_len=64, pad_id=2)
    with torch.no_grad():
        oracle = _padded_oracle(model, examples)
        losses, _ = _target_losses(model, packed, build_attention(packed.document_ids, "flex"))
    torch.testing.assert_close(losses, oracle, rtol=1e-5, atol=1e-6)


@needs_cxx
@pytest.mark.slow
@torch.no_grad()
def test_flex_inside_compiled_layers_equals_the_padded_batch_and_compiles_once():
    """parallel.compile's path: flex traced inside each compiled decoder layer. Two batches of one
    shape but different document layouts: the second reuses the first one's graph."""
    from train.parallel import apply_compile

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, model = _model(2), _model(2)
    apply_compile(model)
    graphs = None
    for seed in (4, 5):
        examples = _examples(n=6, seed=seed)
        packed = collate_rows([examples[:3], examples[3:]], pack_len=80, pad_id=2)
        losses, _ = _target_losses(model, packed, build_attention(packed.document_ids, "flex"))
        torch.testing.assert_close(losses, _padded_oracle(eager, examples), rtol=1e-5, atol=1e-6)
        count = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert count > 0 and (graphs is None or count == graphs)
        graphs = count


@torch.no_grad()
def test_folded_gqa_cache_attention_equals_enable_gqa_and_needs_no_math_kernel():
    """The decode path's folding of query-head groups is exactly SDPA's enable_gqa mapping, and it
    runs on SDPA's fused (flash) CPU kernel alone: the math fallback is switched off here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    B, H, Hkv, T, L, hd = 2, 8, 2, 3, 16, 8
    q, k, v = torch.randn(B, H, T, hd, generator=g), torch.randn(B, Hkv, L, hd, generator=g), \
        torch.randn(B, Hkv, L, hd, generator=g)
    input_pos = torch.tensor([5, 6, 7])
    mask = torch.arange(L)[None, :] <= input_pos[:, None]  # (T, L)
    # Reference: every query head against its own explicit copy of its k/v head.
    kr, vr = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    expected = torch.softmax((q @ kr.transpose(-1, -2)) / hd ** 0.5 + torch.where(mask, 0.0, -torch.inf), -1) @ vr
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        got = CacheMask(input_pos, L, H, Hkv)(q, k, v)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("n_kv_heads", [2, 4], ids=["gqa", "mha"])
def test_flex_on_cuda_forward_and_backward_equal_the_padded_batch(n_kv_heads):
    model, examples = _model(n_kv_heads, dim=128).cuda(), _examples()  # head_dim 32: flex's GPU kernel wants >= 16
    on = lambda b: {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in b.items()}  # noqa: E731
    padded, packed = on(collate_padded(examples, pad_id=2)), on(collate_packed(examples, pack_len=64, pad_id=2))
    oracle, _ = _target_losses(model, padded, build_attention(None))
    oracle.sum().backward()
    oracle_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    attn = build_attention(packed.document_ids, "auto", "cuda")
    assert type(attn).__name__ == "FlexDocuments"
    losses, _ = _target_losses(model, packed, attn)
    torch.testing.assert_close(losses, oracle, rtol=1e-5, atol=1e-5)
    losses.sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, oracle_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@torch.no_grad()
def test_cuda_prefill_and_decode_run_without_the_math_kernel(dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _model(2, dim=128).to("cuda", dtype)
    seq = torch.randint(3, 50, (2, 20), device="cuda")
    model.setup_caches(2, 32)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            model.prefill(seq[:, :12], torch.arange(12, device="cuda"))
            for t in range(12, 20):
                model.decode(seq[:, t:t + 1], torch.tensor([t], device="cuda"))
    finally:
        model.reset_caches()

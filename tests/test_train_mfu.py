"""Honest MFU: attention FLOPs are counted per document (sum of L_i^2), never per padded or packed
row (T^2); the step's FLOPs are 6 * (non-embedding params) * tokens + 12 * n_layers * dim * sum L_i^2,
less the output projection of tokens without a target (docs/PERFORMANCE.md). Values below are
worked out by hand from the layouts and the 7B shape."""

from __future__ import annotations

import pytest

from data.collate import collate_padded, collate_rows
from model import ModelArgs, Transformer
from train.metrics import Throughput, attention_pairs, document_lengths, model_flops, peak_tflops_bf16

M = -100
A = ([1, 5, 6], [M, 6, 2])  # 3 tokens
B = ([1, 7], [M, 2])  # 2 tokens
C = ([1, 8, 9, 10], [M, M, 10, 2])  # 4 tokens


def test_packed_rows_count_each_document_not_the_row():
    # row 0: A, B and one padding slot; row 1: C and two padding slots (6-token rows)
    batch = collate_rows([[A, B], [C]], pack_len=6, pad_id=0)
    assert sorted(document_lengths(batch).tolist()) == [2, 3, 4]
    assert attention_pairs(batch) == 3 ** 2 + 2 ** 2 + 4 ** 2  # 29, where rows would say 2 * 6^2 = 72


def test_padded_rows_count_their_real_length():
    batch = collate_padded([A, B, C], pad_id=0)  # 3 rows of 4 tokens
    assert sorted(document_lengths(batch).tolist()) == [2, 3, 4]
    assert attention_pairs(batch) == 29  # the same examples cost the same however they are laid out


def test_equal_ids_in_different_rows_are_different_documents():
    batch = collate_rows([[C], [C]], pack_len=4, pad_id=0)  # both rows: document id 0, no padding
    assert document_lengths(batch).tolist() == [4, 4]


def test_step_flops_and_mfu(monkeypatch):
    args = ModelArgs(dim=16, n_layers=3, n_heads=2, vocab_size=40, multiple_of=8)
    n_params = sum(p.numel() for p in Transformer(args).parameters())
    tokens, pairs = 9, 29
    # The 40 x 16 input embedding is a lookup: no FLOPs.
    expected = 6 * (n_params - 40 * 16) * tokens + 12 * 3 * 16 * pairs
    assert model_flops(args, tokens, pairs) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setenv("TRAIN_PEAK_TFLOPS", "1e-6")  # 1 MFLOP/s per device, 2 devices
    import torch

    row = Throughput(args, torch.device("cpu"), world_size=2).measure(0.5, tokens, pairs, remaining_steps=0)
    assert row["mfu"] == pytest.approx(expected / 0.5 / 2e6, rel=1e-12)
    assert row["tokens_per_s"] == pytest.approx(18.0)


def test_7b_flops_by_hand_count_non_embedding_parameters():
    # LLaMA-1 7B (untied): dim 4096, 32 layers, hidden 11008, vocab 32000.
    per_layer = 4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096  # wq wk wv wo, w1 w2 w3, two norms
    assert per_layer == 202_383_360
    layers_and_norm = 32 * per_layer + 4096  # + the final norm
    output = 32000 * 4096  # the output projection; the input embedding is as big but a lookup
    non_embedding = layers_and_norm + output
    assert non_embedding == 6_607_343_616  # 6.738e9 in all, less the 131,072,000 embedding table
    args = ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256)
    # 4 packed rows of 2048: 16 documents of 512 tokens, 4000 of the 8192 tokens have a target.
    tokens, targets, pairs = 8192, 4000, 16 * 512 ** 2
    expected = (6 * non_embedding * tokens + 12 * 32 * 4096 * pairs
                - 6 * output * (tokens - targets))
    assert model_flops(args, tokens, pairs, targets) == pytest.approx(expected, rel=1e-12)
    # The old count (all 6.738e9 parameters) was ~2% high at this shape.
    old = expected + 6 * 32000 * 4096 * tokens
    assert old / expected == pytest.approx(1.0196, abs=1e-4)


def test_tied_embeddings_count_the_shared_matrix_as_the_output_projection():
    args = ModelArgs(dim=16, n_layers=3, n_heads=2, vocab_size=40, multiple_of=8, tie_word_embeddings=True)
    per_layer = 4 * 16 ** 2 + 3 * 16 * 48 + 2 * 16  # hidden: 2/3 of 64 = 42, rounded up to 48
    shared = 40 * 16  # embedding == output weight: a matmul once, as the output projection
    tokens, targets, pairs = 9, 5, 29
    expected = 6 * (3 * per_layer + 16 + shared) * tokens + 12 * 3 * 16 * pairs - 6 * shared * (tokens - targets)
    assert model_flops(args, tokens, pairs, targets) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0),  # SXM
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA H200 NVL", 835.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100-PCIE-40GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA GeForce RTX 4090", None),  # not in the table: no MFU rather than a guess
    ("H100", None),  # a bare chip name does not say which part it is
])
def test_peak_lookup_by_exact_device_name(name, tflops):
    assert peak_tflops_bf16(name) == tflops

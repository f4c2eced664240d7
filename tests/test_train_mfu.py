"""Honest MFU: attention FLOPs are counted per document (sum of L_i^2), never per padded or packed
row (T^2); the step's FLOPs are 6 * n_params * tokens + 12 * n_layers * dim * sum L_i^2
(docs/PERFORMANCE.md). Values below are worked out by hand from the layouts."""

from __future__ import annotations

import pytest

from data.collate import collate_padded, collate_rows
from model import ModelArgs, Transformer
from train.metrics import Throughput, attention_pairs, document_lengths, model_flops

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
    expected = 6 * n_params * tokens + 12 * 3 * 16 * pairs
    assert model_flops(args, tokens, pairs) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setenv("TRAIN_PEAK_TFLOPS", "1e-6")  # 1 MFLOP/s per device, 2 devices
    import torch

    row = Throughput(args, torch.device("cpu"), world_size=2).measure(0.5, tokens, pairs, remaining_steps=0)
    assert row["mfu"] == pytest.approx(expected / 0.5 / 2e6, rel=1e-12)
    assert row["tokens_per_s"] == pytest.approx(18.0)

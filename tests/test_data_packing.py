"""Collation: padded and packed layouts written out by hand, and the handwritten model giving the
same per-token losses for both (packing changes the compute, never the math)."""

import dataclasses

import torch
import torch.nn.functional as F

from data.collate import collate_packed, collate_padded
from model import ModelArgs, Transformer
from model.attention import build_attention
from tests.examples import random_examples

M = -100


def test_collate_padded_pads_right_with_masked_labels():
    b = collate_padded([([1, 5, 6], [M, 6, 2]), ([1, 7], [M, 2])], pad_id=0)
    assert b.tokens.tolist() == [[1, 5, 6], [1, 7, 0]]
    assert b.labels.tolist() == [[M, 6, 2], [M, 2, M]]
    assert b.positions is None and b.document_ids is None
    assert b.num_targets == 3 and b.num_tokens == 5


def test_collate_packed_restarts_positions_and_separates_documents():
    a = ([1, 5, 6], [M, 6, 2])
    b = ([1, 7], [M, 2])
    c = ([1, 8, 9, 10], [M, M, 10, 2])
    batch = collate_packed([a, b, c], pack_len=6, pad_id=0)
    # next-fit: a (3) + b (2) fill 5 of row 0; c (4) does not fit the last slot, so opens row 1
    assert batch.tokens.tolist() == [[1, 5, 6, 1, 7, 0], [1, 8, 9, 10, 0, 0]]
    assert batch.labels.tolist() == [[M, 6, 2, M, 2, M], [M, M, 10, 2, M, M]]
    assert batch.positions.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert batch.document_ids.tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1]]
    assert batch.num_targets == 5 and batch.num_tokens == 9


def _examples(n=9, vocab=50, seed=0):
    return random_examples(n, vocab, seed, max_len=21)


def _model():
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=16))
    model.init_weights()
    return model.float().eval()


def _logits(model, batch):
    with torch.no_grad():
        return model.logits(batch.tokens, batch.positions, build_attention(batch.document_ids)).float()


def _summed_loss(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=M, reduction="sum")


def test_packed_loss_equals_padded_loss():
    model, examples = _model(), _examples()
    padded = collate_padded(examples, pad_id=2)
    packed = collate_packed(examples, pack_len=48, pad_id=2)
    assert packed.tokens.shape[0] < len(examples)  # several examples per row
    assert packed.num_targets == padded.num_targets
    loss_pad = _summed_loss(_logits(model, padded), padded.labels)
    loss_pack = _summed_loss(_logits(model, packed), packed.labels)
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=0)


def test_packed_logits_match_each_example_run_alone():
    model, examples = _model(), _examples(seed=1)
    packed = collate_packed(examples, pack_len=48, pad_id=2)
    logits = _logits(model, packed)
    docs = packed.document_ids
    # one segment per document id per row; padding segments have no targets (every example has)
    segments = [(r, docs[r] == d) for r in range(docs.shape[0]) for d in docs[r].unique()]
    segments = [(r, m) for r, m in segments if (packed.labels[r, m] != M).any()]
    assert len(segments) == len(examples)
    for (r, m), (tokens, _) in zip(segments, examples, strict=True):
        assert packed.tokens[r, m].tolist() == tokens
        alone = _logits(model, dataclasses.replace(packed, tokens=torch.tensor([tokens]), positions=None,
                                                   document_ids=None))
        torch.testing.assert_close(logits[r, m], alone[0], rtol=1e-5, atol=1e-5)


def test_no_token_attends_across_an_example_boundary():
    model, examples = _model(), _examples(n=3, seed=2)
    batch = collate_packed(examples, pack_len=64, pad_id=2)
    assert batch.tokens.shape[0] == 1  # all three in one row
    first = batch.document_ids[0] == 0
    perturbed = dataclasses.replace(batch, tokens=batch.tokens.clone())
    perturbed.tokens[0, first] = (perturbed.tokens[0, first] + 7) % 47 + 3
    before, after = _logits(model, batch), _logits(model, perturbed)
    assert not torch.allclose(before[0, first], after[0, first])  # the perturbation is real
    torch.testing.assert_close(after[0, ~first], before[0, ~first], rtol=0, atol=1e-6)
    # and the check can fail: with plain causal attention the later examples do see the first
    leaky = dataclasses.replace(perturbed, document_ids=None)
    leaky_before = _logits(model, dataclasses.replace(batch, document_ids=None))
    assert not torch.allclose(_logits(model, leaky)[0, ~first], leaky_before[0, ~first])

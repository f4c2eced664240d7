"""KV-cache decoding: prefill + one token at a time gives the logits of a full recompute, and
`model.sampling.generate` picks, greedily, the tokens transformers' `generate` picks."""

from __future__ import annotations

import pytest
import torch
from hf_reference import hf_config, max_abs_diff, random_hf_llama

from model.checkpoint import load_model
from model.sampling import generate
from tools.convert import main as convert

EOS = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(ours, hf) on the same weights: GQA and Llama 3.1 rope scaling, so both the grouped cache
    and the scaled frequencies are exercised at decode positions."""
    root = tmp_path_factory.mktemp("kv")
    hf = random_hf_llama(hf_config(num_attention_heads=8, num_key_value_heads=2, rope_theta=500000.0,
                                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                     high_freq_factor=4.0, original_max_position_embeddings=16)),
                         seed=7)
    hf.save_pretrained(root / "hf")
    assert convert(["hf", str(root / "hf"), str(root / "ckpt")]) == 0
    return load_model(root / "ckpt"), hf


def _ids(n: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(3, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_cached_decoding_equals_full_recompute(models):
    ours, hf = models
    seq = _ids(40, seed=0, batch=2)  # (2, 40): a 12-token prompt, then 28 single-token steps
    full = ours.logits(seq)
    reference = hf(seq).logits
    ours.setup_caches(max_batch_size=2, max_seq_len=64)
    try:
        step_logits = [ours.decode(seq[:, :12], torch.arange(12))]
        for t in range(12, 40):
            step_logits.append(ours.decode(seq[:, t:t + 1], torch.tensor([t])))
    finally:
        ours.reset_caches()
    cached = torch.cat(step_logits, dim=1)  # (2, 40, vocab)
    assert max_abs_diff(cached, full) <= 1e-5
    assert max_abs_diff(cached, reference) <= 1e-4


def _hf_greedy(hf, prompt: list[int], max_new_tokens: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                      eos_token_id=EOS, pad_token_id=0)
    new = out[0, len(prompt):].tolist()
    return new[:-1] if new and new[-1] == EOS else new


@torch.no_grad()
def test_greedy_generate_matches_transformers_token_for_token(models):
    ours, hf = models
    for seed, (n_prompt, n_new) in enumerate([(5, 30), (30, 20), (1, 10)]):
        prompt = _ids(n_prompt, seed=10 + seed)[0].tolist()
        expected = _hf_greedy(hf, prompt, n_new)
        assert len(expected) == n_new  # the random model does not emit EOS here: full length compared
        assert generate(ours, prompt, n_new, temperature=0.0, eos_id=EOS) == expected


@torch.no_grad()
def test_a_reused_cache_from_a_longer_conversation_does_not_leak(models):
    """Interactive chat reuses one cache: stale entries past the new prompt must stay masked."""
    ours, hf = models
    generate(ours, _ids(30, seed=1)[0].tolist(), 25, eos_id=EOS)  # fills positions 0..54
    prompt = _ids(6, seed=2)[0].tolist()
    assert generate(ours, prompt, 15, eos_id=EOS) == _hf_greedy(hf, prompt, 15)
    ours.reset_caches()


@torch.no_grad()
def test_generation_stops_at_eos_and_at_max_seq_len(models):
    ours, hf = models
    prompt = _ids(8, seed=3)[0].tolist()
    free_run = _hf_greedy(hf, prompt, 12)
    # Make EOS the greedy choice at step 4: swap the output rows of EOS and the token chosen there.
    # Earlier steps keep their choice (only two logits trade places, neither was the maximum).
    assert EOS not in free_run[:4] and free_run[4] not in free_run[:4]
    for model_out in (ours.output.weight, hf.lm_head.weight):
        model_out[[EOS, free_run[4]]] = model_out[[free_run[4], EOS]]
    try:
        expected = _hf_greedy(hf, prompt, 12)
        assert expected == free_run[:4]
        assert generate(ours, prompt, 12, eos_id=EOS) == expected
    finally:
        for model_out in (ours.output.weight, hf.lm_head.weight):
            model_out[[EOS, free_run[4]]] = model_out[[free_run[4], EOS]]
    # prompt + new tokens never exceed max_seq_len (128): 120 + at most 8
    assert len(generate(ours, _ids(120, seed=4)[0].tolist(), 50, eos_id=None)) == 8


@torch.no_grad()
def test_top_p_below_the_top_token_mass_is_greedy(models):
    """Nucleus sampling keeps the smallest prefix reaching top_p: a tiny top_p keeps only argmax."""
    ours, hf = models
    prompt = _ids(7, seed=5)[0].tolist()
    g = torch.Generator().manual_seed(0)
    sampled = generate(ours, prompt, 15, temperature=1.0, top_p=1e-6, eos_id=EOS, generator=g)
    assert sampled == _hf_greedy(hf, prompt, 15)

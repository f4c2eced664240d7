"""The handwritten LLaMA computes what transformers' LlamaForCausalLM computes, on the same weights.

Weights travel the way a user moves them: HF `save_pretrained` -> `python -m tools.convert hf`
-> `load_model`, or Meta's model-parallel `consolidated.NN.pth` -> `tools.convert meta`. fp32,
max |logit difference| <= 1e-4 on random (not trained, not zero) weights with O(1) logits.
Run with `-s` to see the measured differences (recorded in docs/PARITY.md).
"""

from __future__ import annotations

import json

import pytest
import torch
from hf_reference import (
    hf_config,
    max_abs_diff,
    meta_state_dict,
    random_hf_llama,
    split_model_parallel,
    write_meta_checkpoint,
)

from model.checkpoint import load_model
from tools.convert import main as convert

TOL = 1e-4
LLAMA31_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=32)

# name -> HF config overrides. head_dim 16; with original_max_position_embeddings=32 the Llama 3.1
# scaling changes every frequency whose wavelength exceeds 8 positions, i.e. most of them.
CONFIGS = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(num_attention_heads=8, num_key_value_heads=2, intermediate_size=200),
    "llama3.1-rope-scaling": dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
                                  rope_scaling=LLAMA31_ROPE),
    "tied-embeddings": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    # deeper and wider, to see that the difference does not grow out of bounds with size
    "gqa-dim256-4layers": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                               num_attention_heads=8, num_key_value_heads=2, vocab_size=1000),
}


def _tokens(vocab: int, seed: int = 1, batch: int = 2, length: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits_after_hf_convert(hf, tmp_path, tokens, save_kwargs=None):
    hf.save_pretrained(tmp_path / "hf", **(save_kwargs or {}))
    assert convert(["hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    model = load_model(tmp_path / "ckpt", dtype=torch.float32)
    return model.logits(tokens), hf(tokens).logits


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers_after_hf_conversion(name, tmp_path):
    hf = random_hf_llama(hf_config(**CONFIGS[name]))
    ours, ref = _logits_after_hf_convert(hf, tmp_path, _tokens(hf.config.vocab_size))
    diff = max_abs_diff(ours, ref)
    print(f"\nPARITY hf/{name}: max|dlogit| = {diff:.3e} (max|logit| = {ref.abs().max():.2f})")
    assert ref.abs().max() > 1.0  # the bound is meaningful only for logits of real size
    assert diff <= TOL


def test_llama31_rope_scaling_is_carried_over_not_ignored(tmp_path):
    """The rope-scaling case is discriminating: the same weights without the scaling diverge."""
    hf = random_hf_llama(hf_config(**CONFIGS["llama3.1-rope-scaling"]))
    ours, ref = _logits_after_hf_convert(hf, tmp_path, _tokens(256))
    assert max_abs_diff(ours, ref) <= TOL
    cfg_path = tmp_path / "ckpt" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["use_scaled_rope"] and cfg["rope_original_max_position_embeddings"] == 32
    cfg_path.write_text(json.dumps({**cfg, "use_scaled_rope": False}))
    (tmp_path / "ckpt" / "manifest.json").unlink()  # edited on purpose: the manifest would refuse it
    with torch.no_grad():
        unscaled = load_model(tmp_path / "ckpt").logits(_tokens(256))
    assert max_abs_diff(unscaled, ref) > 1e-2


def test_sharded_safetensors_and_pytorch_bin_convert_to_the_same_logits(tmp_path):
    hf = random_hf_llama(hf_config(**CONFIGS["gqa"]))
    tokens = _tokens(256)
    ours, ref = _logits_after_hf_convert(hf, tmp_path / "st", tokens, dict(max_shard_size="100KB"))
    assert len(list((tmp_path / "st" / "hf").glob("model-*.safetensors"))) > 1
    assert max_abs_diff(ours, ref) <= TOL
    # the legacy pickle format, read with torch.load(weights_only=True)
    (tmp_path / "bin").mkdir()
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert convert(["hf", str(tmp_path / "bin"), str(tmp_path / "bin_ckpt")]) == 0
    with torch.no_grad():
        assert max_abs_diff(load_model(tmp_path / "bin_ckpt").logits(tokens), ref) <= TOL


# Meta checkpoints, built from the HF reference with the inverse permute and split over ranks.
# llama2: embedding split by columns, params.json vocab_size -1 (LLaMA 1/2 ship it that way),
# SwiGLU width from multiple_of. llama3: embedding split by vocabulary rows, ffn_dim_multiplier,
# theta 5e5 and the Llama 3.1 rope scaling with Meta's built-in constants.
META_STYLES = {
    "llama2": (dict(num_attention_heads=8, num_key_value_heads=8, intermediate_size=176),
               dict(dim=64, n_layers=2, n_heads=8, vocab_size=-1, multiple_of=16, norm_eps=1e-5)),
    "llama3": (dict(num_attention_heads=8, num_key_value_heads=4, intermediate_size=224, rope_theta=500000.0,
                    max_position_embeddings=131072,
                    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=8192)),
               dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=256, multiple_of=32,
                    ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True)),
}


@pytest.mark.parametrize("n_shards", [1, 2, 4])
@pytest.mark.parametrize("style", list(META_STYLES))
def test_meta_model_parallel_shards_convert_to_the_same_logits(style, n_shards, tmp_path):
    hf_overrides, params = META_STYLES[style]
    hf = random_hf_llama(hf_config(**hf_overrides), seed=n_shards)
    head_dim = 64 // hf.config.num_attention_heads
    shards = split_model_parallel(meta_state_dict(hf), n_shards, vocab_parallel=style == "llama3",
                                  head_dim=head_dim)
    src = write_meta_checkpoint(tmp_path / "meta", shards, params)
    assert convert(["meta", str(src), str(tmp_path / "ckpt")]) == 0
    tokens = _tokens(256)
    with torch.no_grad():
        ours = load_model(tmp_path / "ckpt").logits(tokens)
        ref = hf(tokens).logits
    diff = max_abs_diff(ours, ref)
    print(f"\nPARITY meta/{style}/{n_shards}-shards: max|dlogit| = {diff:.3e}")
    assert diff <= TOL

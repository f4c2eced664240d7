"""ModelArgs against the published numbers of each release (HF config.json intermediate sizes
and parameter counts), and Meta's params.json field names."""

import pytest

from model import PRESETS, ModelArgs

# intermediate_size in the published HF configs of each model.
PUBLISHED_FFN = {
    "llama1-7b": 11008, "llama1-13b": 13824, "llama1-33b": 17920, "llama1-65b": 22016,
    "llama2-7b": 11008, "llama2-13b": 13824, "llama2-70b": 28672,
    "llama3-8b": 14336, "llama3-70b": 28672, "llama3.1-8b": 14336, "llama3.1-70b": 28672,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_FFN))
def test_preset_ffn_width_matches_published_config(name):
    assert ModelArgs.preset(name).hidden_dim == PUBLISHED_FFN[name]


def test_param_counts_match_published_sizes():
    # 6,738,415,616 is LLaMA-2-7B's count (HF model card); 8,030,261,248 is Llama-3-8B's.
    assert ModelArgs.preset("llama2-7b").num_params() == 6_738_415_616
    assert ModelArgs.preset("llama3-8b").num_params() == 8_030_261_248


def test_meta_params_json_loads_as_keyword_arguments():
    llama31_8b_params = {"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32,
                         "n_kv_heads": 8, "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0,
                         "use_scaled_rope": True, "vocab_size": 128256}
    args = ModelArgs(**llama31_8b_params)
    assert args.hidden_dim == 14336 and args.head_dim == 128 and args.n_kv_heads == 8


def test_unknown_field_names_the_closest_one():
    with pytest.raises(ValueError, match="did you mean 'n_kv_heads'"):
        ModelArgs.from_dict({"n_kv_head": 8})
    with pytest.raises(ValueError, match="did you mean 'llama2-7b'"):
        ModelArgs.preset("llama2_7b")


def test_all_presets_are_consistent():
    for name in PRESETS:
        a = ModelArgs.preset(name)
        assert a.dim % a.n_heads == 0 and a.n_heads % a.n_kv_heads == 0

"""Model hyper-parameters, named exactly like the fields of Meta's `params.json`.

`ModelArgs(**json.load(open("params.json")))` works for every released LLaMA 1/2/3 checkpoint;
the extra fields (rope scaling details, `max_seq_len`, `tie_word_embeddings`, `ffn_hidden_dim`)
have defaults that reproduce Meta's reference behaviour.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None = n_heads (multi-head); fewer = grouped-query attention
    vocab_size: int = 32000  # Meta's LLaMA-1 params.json says -1: filled from the tokenizer
    multiple_of: int = 256  # the SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Llama 3.1 rope scaling: the four numbers come from the checkpoint, never hard-coded.
    use_scaled_rope: bool = False
    rope_scale_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    max_seq_len: int = 2048
    tie_word_embeddings: bool = False
    # HF configs state the hidden size outright; None = derive it from multiple_of as Meta does.
    ffn_hidden_dim: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of 4*dim, scaled, rounded up to `multiple_of` (11008 for 7B)."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def num_params(self) -> int:
        """Parameter count without building the model (used for MFU and size checks)."""
        d, kv = self.dim, self.n_kv_heads * self.head_dim
        attn = d * d * 2 + d * kv * 2  # wq, wo, wk, wv
        ffn = 3 * d * self.hidden_dim
        per_layer = attn + ffn + 2 * d
        emb = self.vocab_size * d
        return self.n_layers * per_layer + d + emb * (1 if self.tie_word_embeddings else 2)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        """Like `ModelArgs(**d)`, but an unknown key is a clear error naming the closest field."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"unknown model field '{key}'{hint}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelArgs:
        if name not in PRESETS:
            close = difflib.get_close_matches(name, list(PRESETS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(PRESETS)}"
            raise ValueError(f"unknown model preset '{name}'{hint}")
        return cls.from_dict({**PRESETS[name], **overrides})


_LLAMA3_ROPE = dict(
    rope_theta=500000.0,
    use_scaled_rope=True,
    rope_scale_factor=8.0,
    rope_low_freq_factor=1.0,
    rope_high_freq_factor=4.0,
    rope_original_max_position_embeddings=8192,
)

# The published params.json values (plus max_seq_len) of each release.
PRESETS: dict[str, dict] = {
    "debug": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=16,
                  max_seq_len=256),
    "llama1-7b": dict(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-6, max_seq_len=2048),
    "llama1-13b": dict(dim=5120, n_layers=40, n_heads=40, norm_eps=1e-6, max_seq_len=2048),
    "llama1-33b": dict(dim=6656, n_layers=60, n_heads=52, norm_eps=1e-6, max_seq_len=2048),
    "llama1-65b": dict(dim=8192, n_layers=80, n_heads=64, norm_eps=1e-5, max_seq_len=2048),
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-5, max_seq_len=4096),
    "llama2-13b": dict(dim=5120, n_layers=40, n_heads=40, norm_eps=1e-5, max_seq_len=4096),
    "llama2-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.3,
                       multiple_of=4096, norm_eps=1e-5, max_seq_len=4096),
    "llama3-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256,
                      ffn_dim_multiplier=1.3, multiple_of=1024, rope_theta=500000.0,
                      max_seq_len=8192),
    "llama3-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256,
                       ffn_dim_multiplier=1.3, multiple_of=4096, rope_theta=500000.0,
                       max_seq_len=8192),
    "llama3.1-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256,
                        ffn_dim_multiplier=1.3, multiple_of=1024, max_seq_len=131072, **_LLAMA3_ROPE),
    "llama3.1-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256,
                         ffn_dim_multiplier=1.3, multiple_of=4096, max_seq_len=131072,
                         **_LLAMA3_ROPE),
}

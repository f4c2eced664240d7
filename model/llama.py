"""LLaMA 1/2/3 in one file: RMSNorm, RoPE (theta + Llama 3.1 scaling), grouped-query attention,
SwiGLU, optional tied embeddings, and a gpt-fast style KV cache for decoding.

Parameter names and the q/k row order follow Meta's reference `model.py`, so Meta checkpoints load
as they are; RoPE rotates interleaved pairs (x[2i], x[2i+1]) as Meta's complex formulation does
(HF checkpoints permute q/k rows for their `rotate_half`; tools/convert.py undoes that).

One entry point per use; how tokens attend is decided once per batch by the caller
(model/attention.py) and passed in, so the layers never build masks:
  training   model(tokens, labels, positions, attn, target_index) -> summed loss
  scoring    model.logits(tokens, positions, attn)                -> logits of every position
  decoding   model.setup_caches(B, L); model.prefill(prompt, input_pos[, start]); model.decode(token, input_pos[, start])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.args import ModelArgs
from model.attention import AttentionInputs, CacheMask, Causal
from model.loss import chunked_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under bf16: the mean of squares loses too much in 8 mantissa bits.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_inv_freq(args: ModelArgs, device: torch.device | None = None) -> torch.Tensor:
    """Per-pair rotation frequencies, (head_dim // 2,), fp32, with Llama 3.1 scaling if enabled.

    Recomputed on every forward (it is head_dim/2 numbers): no buffer to re-initialise after a
    meta-device build, and no max length baked in.
    """
    hd = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
    if not args.use_scaled_rope:
        return inv_freq
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth ramp between.
    factor, low, high = args.rope_scale_factor, args.rope_low_freq_factor, args.rope_high_freq_factor
    old_len = args.rope_original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    smooth = ((old_len / wavelen) - low) / (high - low)
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    ramp = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    in_between = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return torch.where(in_between, ramp, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) or (T,) -> cos, sin of shape (B or 1, T, 1, head_dim // 2), fp32."""
    if positions.dim() == 1:
        positions = positions[None]
    angles = positions[..., None].float() * inv_freq  # (B, T, hd/2)
    return angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, T, H, hd) in fp32, as Meta's complex multiply does.

    Eager: that complex multiply itself (one kernel each way; ~5x faster than the real form on a
    CPU, same numbers). Compiled: the real form, which inductor fuses (it does not lower complex)."""
    xp = x.float().unflatten(-1, (-1, 2))  # (B, T, H, hd/2, 2)
    if not torch.compiler.is_compiling():
        rotated = torch.view_as_complex(xp) * torch.complex(cos, sin)  # (B, T, H, hd/2)
        return torch.view_as_real(rotated).flatten(-2).type_as(x)  # (B, T, H, hd)
    x0, x1 = xp[..., 0], xp[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # (B, T, H, hd/2, 2)
    return out.flatten(-2).type_as(x)  # (B, T, H, hd)


class KVCache(nn.Module):
    """Static-size key/value buffers, written in place at `input_pos` (gpt-fast style), so
    decoding shapes never change and `torch.compile(model)` needs no recompiles."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # k, v: (B, n_kv_heads, T, hd) for the T new positions. index_copy_, not `k[:, :, pos] = k`:
        # the advanced-index put took ~10% of a CPU decode step (tools/bench_generate.py).
        self.k[: k.shape[0]].index_copy_(2, input_pos, k)
        self.v[: v.shape[0]].index_copy_(2, input_pos, v)
        return self.k[: k.shape[0]], self.v[: v.shape[0]]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, attn: AttentionInputs, input_pos: torch.Tensor | None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, n_heads, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, n_kv_heads, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hd)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, n_kv_heads, max_len, hd)
        # Grouped-query attention: each group of n_heads // n_kv_heads query heads shares one k/v;
        # `attn` (built once per batch) picks the kernel and the document/cache masking.
        out = attn(q, k, v)  # (B, n_heads, T, hd)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, cos, sin, attn, input_pos=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, attn, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # A ModuleList keeps Meta's names (layers.0.attention.wq.weight) and gives FSDP and
        # activation checkpointing one unit per decoder layer.
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        # Tied models have no `output` weight: the logits reuse the embedding matrix.
        self.output = None if args.tie_word_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)
        self.max_cache_len = self.max_cache_batch = 0

    # ---------------------------------------------------------------- init and resizing
    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Initialisation for training from scratch (GPT-2 / torchtitan style): N(0, 0.02), the
        projections that write into the residual stream scaled by 1/sqrt(2 * n_layers) so the
        residual's variance does not grow with depth, norms at 1. Works after `to_empty()`."""
        nn.init.normal_(self.tok_embeddings.weight, std=std)
        out_std = std / math.sqrt(2 * self.args.n_layers)
        for layer in self.layers:
            for lin in (layer.attention.wq, layer.attention.wk, layer.attention.wv,
                        layer.feed_forward.w1, layer.feed_forward.w3):
                nn.init.normal_(lin.weight, std=std)
            nn.init.normal_(layer.attention.wo.weight, std=out_std)
            nn.init.normal_(layer.feed_forward.w2.weight, std=out_std)
            nn.init.ones_(layer.attention_norm.weight)
            nn.init.ones_(layer.ffn_norm.weight)
        nn.init.ones_(self.norm.weight)
        if self.output is not None:
            nn.init.normal_(self.output.weight, std=std)

    @torch.no_grad()
    def resize_token_embeddings(self, new_vocab_size: int) -> None:
        """Append rows (e.g. Alpaca's `[PAD]`, vocab 32000 -> 32001), initialised to the mean of
        the existing rows as Stanford's `smart_tokenizer_and_embedding_resize` does."""
        old = self.args.vocab_size
        if new_vocab_size < old:
            raise ValueError(f"cannot shrink the vocabulary from {old} to {new_vocab_size}")

        def grown(w: torch.Tensor) -> torch.Tensor:
            extra = w.mean(dim=0, keepdim=True).expand(new_vocab_size - old, -1)
            return torch.cat([w, extra], dim=0)

        self.tok_embeddings.weight = nn.Parameter(grown(self.tok_embeddings.weight))
        self.tok_embeddings.num_embeddings = new_vocab_size
        if self.output is not None:
            self.output.weight = nn.Parameter(grown(self.output.weight))
            self.output.out_features = new_vocab_size
        self.args.vocab_size = new_vocab_size

    # ---------------------------------------------------------------- KV cache
    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype=None, device=None) -> None:
        ref = self.tok_embeddings.weight
        dtype, device = dtype or ref.dtype, device or ref.device
        a = self.args
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch_size, a.n_kv_heads, max_seq_len, a.head_dim,
                                               dtype, device)
        self.max_cache_len, self.max_cache_batch = max_seq_len, max_batch_size

    def reset_caches(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.max_cache_len = self.max_cache_batch = 0

    # ---------------------------------------------------------------- entry points
    # One signature per use, each a thin shell over `_hidden`; train.parallel registers the
    # non-forward ones with FSDP2 so a sharded model all-gathers for them too.

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None,
                attn: AttentionInputs | None = None, target_index: torch.Tensor | None = None) -> torch.Tensor:
        """Training: tokens, labels (B, T) -> the summed cross-entropy (fp32 scalar; IGNORE_INDEX
        skipped), a chunk of tokens at a time (model/loss.py): fp32 `[tokens, vocab]` logits never exist.

        positions (B, T): RoPE positions, default 0..T-1 (packed rows restart at 0 per example).
        attn: from model.attention.build_attention, once per micro-batch; default plain causal.
        target_index (N,): the flat positions whose label is not IGNORE_INDEX (found on the host,
            train.step.prepare_batch): only those are projected to the vocabulary. Alpaca's prompts
            are about half of all tokens, and their logits would only be multiplied by zero.
        """
        h = self._hidden(tokens, positions, attn)
        if target_index is not None:
            h = h.flatten(0, 1).index_select(0, target_index)  # (N, dim)
            labels = labels.flatten().index_select(0, target_index)  # (N,)
        return chunked_cross_entropy(h, self._output_weight(), labels)

    def logits(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
               attn: AttentionInputs | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab) in the compute dtype, every position (scoring, tests)."""
        return F.linear(self._hidden(tokens, positions, attn), self._output_weight())

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor, start: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Decoding, first call: the prompt (B, T) into the KV cache at `input_pos` (T,) ->
        the last position's logits (B, 1, vocab). `start` (B,): see `decode`."""
        h = self._hidden(tokens, self._row_positions(input_pos, start), self._cache_mask(input_pos, start), input_pos)
        return F.linear(h[:, -1:], self._output_weight())  # (B, 1, vocab)

    def decode(self, tokens: torch.Tensor, input_pos: torch.Tensor, start: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Decoding, each later call: new tokens (B, T) (usually T = 1) at cache positions
        `input_pos` (T,) -> their logits (B, T, vocab).

        start (B,), left-padded batches only: the cache slot of each row's first real token. Row b's
        RoPE position is then slot - start[b] (its first real token is position 0) and the slots
        before start[b] are masked; every row still writes the same slots, so the cache update
        stays one shared index."""
        h = self._hidden(tokens, self._row_positions(input_pos, start), self._cache_mask(input_pos, start), input_pos)
        return F.linear(h, self._output_weight())

    @staticmethod
    def _row_positions(input_pos: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
        """RoPE positions: the cache slots (T,), or per row (B, T) when rows are left-padded
        (padding slots get 0: their outputs are never read)."""
        if start is None:
            return input_pos
        return (input_pos[None, :] - start[:, None]).clamp(min=0)  # (B, T)

    def _cache_mask(self, input_pos: torch.Tensor, start: torch.Tensor | None = None) -> CacheMask:
        if self.max_cache_len == 0:
            raise RuntimeError("decoding needs a KV cache: call setup_caches() first")
        return CacheMask(input_pos, self.max_cache_len, self.args.n_heads, self.args.n_kv_heads, start)

    def _output_weight(self) -> torch.Tensor:
        return self.tok_embeddings.weight if self.output is None else self.output.weight

    def _hidden(self, tokens, positions, attn, input_pos=None) -> torch.Tensor:
        """The trunk: embeddings, decoder layers, final norm -> (B, T, dim)."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        # fp32 cos/sin: train.parallel keeps FSDP from casting them to bf16 on the way into a layer.
        cos, sin = rope_cos_sin(rope_inv_freq(self.args, tokens.device), positions)
        attn = Causal() if attn is None else attn
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers:
            h = layer(h, cos, sin, attn, input_pos)
        return self.norm(h)

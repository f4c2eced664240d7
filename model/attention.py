"""How tokens attend, decided once per batch, outside the decoder layers.

The training loop (or the decoder) calls `build_attention(...)` once per micro-batch and passes
the result to `model(tokens, positions, attn)`; every layer then calls `attn(q, k, v)`. The layers
never look at document ids or masks themselves, so the mask (or BlockMask, or segment list) is
built once per batch instead of once per layer, and each backend keeps its kernels honest:

  Causal        plain causal SDPA (`is_causal`, GQA via `enable_gqa`): unpacked, right-padded rows.
                On CUDA in bf16 this is the flash kernel, which accepts GQA.
  FlexDocuments packed rows on CUDA: `flex_attention` with a document-causal BlockMask, compiled;
                GQA without repeating k/v and without SDPA's math fallback (SDPA's flash kernel
                takes no mask, and with a mask only the math kernel accepts `enable_gqa`).
  PerDocument   packed rows on CPU: one causal SDPA call per document, so a row costs
                sum(L_i^2) instead of T^2 and no T x T mask is built. Exact.
  DenseMask     packed rows as one (B, 1, T, T) boolean mask; the fallback for anything else.
  CacheMask     decoding with the KV cache (prefill and one token a step): the query heads of a
                GQA group are folded into the query length, so k/v need no repeat and no
                `enable_gqa`, and SDPA can take its masked fused kernels instead of math.

Shapes: q (B, n_heads, T, hd); k, v (B, n_kv_heads, S, hd); the result is (B, n_heads, T, hd).
"""

from __future__ import annotations

import functools
import typing
from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["auto", "flex", "documents", "dense"]
BACKENDS = typing.get_args(Backend)


class Causal:
    """Plain causal attention over the whole row."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


class DenseMask:
    """Document-causal attention through one boolean mask (B, 1, T, T), broadcast over heads."""

    def __init__(self, document_ids: torch.Tensor):
        T = document_ids.shape[1]
        same_doc = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
        self.mask = (same_doc & causal)[:, None]  # (B, 1, T, T)

    def __call__(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, enable_gqa=k.shape[1] != q.shape[1])


def document_segments(document_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """(B, T) ids on the host -> per row, the [start, end) spans of equal consecutive ids."""
    ids = document_ids.cpu()
    T = ids.shape[1]
    out = []
    for row in ids:
        starts = [0] + (torch.nonzero(row[1:] != row[:-1]).flatten() + 1).tolist()
        out.append(list(zip(starts, starts[1:] + [T], strict=True)))
    return out


class PerDocument:
    """One causal SDPA call per document span: exact, sum(L_i^2) work, no mask tensor.

    The spans are Python ints, so this call is kept out of torch.compile's graphs (a graph break
    around attention only): tracing it would specialise, and recompile, on every batch's layout.
    """

    def __init__(self, document_ids: torch.Tensor):
        self.segments = document_segments(document_ids)

    @torch.compiler.disable
    def __call__(self, q, k, v):
        gqa = k.shape[1] != q.shape[1]
        rows = []
        for b, spans in enumerate(self.segments):
            if len(spans) == 1:
                parts = [F.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], is_causal=True,
                                                        enable_gqa=gqa)]
            else:
                parts = [F.scaled_dot_product_attention(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e], v[b:b + 1, :, s:e],
                                                        is_causal=True, enable_gqa=gqa) for s, e in spans]
            rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
        return torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class FlexDocuments:
    """Document-causal flex_attention; the BlockMask lets the kernel skip whole blocks that cross
    a document boundary or lie above the diagonal."""

    def __init__(self, document_ids: torch.Tensor):
        from torch.nn.attention.flex_attention import create_block_mask

        B, T = document_ids.shape
        docs = document_ids

        def document_causal(b, h, q_idx, kv_idx):
            return (docs[b, q_idx] == docs[b, kv_idx]) & (q_idx >= kv_idx)

        self.block_mask = create_block_mask(document_causal, B, None, T, T, device=document_ids.device)

    def __call__(self, q, k, v):
        from torch.nn.attention.flex_attention import flex_attention

        # Inside a compiled layer dynamo traces flex_attention itself; eager callers get the
        # compiled kernel (uncompiled flex materialises the full score matrix).
        fn = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
        if q.device.type == "cpu":
            # Inductor's CPU flex template reads its inputs' buffers as 4-D; traced inside a
            # compiled layer, q/k/v are views of the 5-D RoPE output and its lowering fails.
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return fn(q, k, v, block_mask=self.block_mask, enable_gqa=k.shape[1] != q.shape[1])


class CacheMask:
    """Decoding against a static KV cache: row t of the queries sees cache slots <= input_pos[t].

    GQA is folded: the G = n_heads / n_kv_heads query heads sharing one k/v head become G * T
    query rows of that head (the mask rows tiled G times), which is exactly `enable_gqa`'s
    head mapping (query head h reads k/v head h // G) without repeating the cache.

    `start` (B,): left-padded batches (model.sampling.generate_batch) hold batch row b's first real
    token in cache slot start[b]; the slots before it (padding) are never seen by a real token.
    A padding query sees only its own slot, so its softmax is over one finite score, not over none
    (an all-masked row would be NaN, and a NaN value times a zero weight is still NaN).
    """

    def __init__(self, input_pos: torch.Tensor, cache_len: int, n_heads: int, n_kv_heads: int,
                 start: torch.Tensor | None = None):
        slots = torch.arange(cache_len, device=input_pos.device)
        rows = slots[None, :] <= input_pos[:, None]  # (T, cache_len)
        self.group = n_heads // n_kv_heads
        if start is None:
            self.mask = rows.repeat(self.group, 1)[None, None]  # (1, 1, G * T, cache_len)
            return
        real = slots[None, None, :] >= start[:, None, None]  # (B, 1, cache_len)
        own = slots[None, :] == input_pos[:, None]  # (T, cache_len)
        per_row = rows[None] & (real | own[None])  # (B, T, cache_len)
        self.mask = per_row.repeat(1, self.group, 1)[:, None]  # (B, 1, G * T, cache_len)

    def __call__(self, q, k, v):
        B, H, T, hd = q.shape
        folded = q.reshape(B, k.shape[1], self.group * T, hd)  # heads h = j * G + g -> row g * T + t
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=self.mask)
        return out.reshape(B, H, T, hd)


AttentionInputs = Causal | DenseMask | PerDocument | FlexDocuments | CacheMask


def resolve_backend(backend: str, device: torch.device) -> str:
    """`auto`: flex on CUDA; on CPU one SDPA call per document (faster than the dense mask on
    CPU at every size measured, docs/PERFORMANCE.md)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "flex" if device.type == "cuda" else "documents"


def build_attention(document_ids: torch.Tensor | None, backend: str = "auto",
                    device: torch.device | str | None = None) -> AttentionInputs:
    """The attention of one micro-batch. `document_ids` (B, T) as the batch holds it (on the host:
    the per-document path reads its spans there without a device sync), or None for unpacked rows;
    `device` is where the model runs (default: where the ids are)."""
    if document_ids is None:
        return Causal()
    device = torch.device(device) if device is not None else document_ids.device
    kind = resolve_backend(backend, device)
    if kind == "documents":
        return PerDocument(document_ids)
    cuda = device.type == "cuda"  # one copy, pinned and non-blocking: the host runs ahead
    ids = (document_ids.pin_memory() if cuda else document_ids).to(device, non_blocking=cuda)
    if kind == "flex":
        return FlexDocuments(ids)
    return DenseMask(ids)

"""Cross-entropy over the output projection, a chunk of tokens at a time.

Why: the plain loss materialises fp32 logits for every token, `[tokens, vocab]`. At Llama 3's
128,256-token vocabulary and 8K tokens per micro-batch that is ~4 GB for the fp32 copy, as much
again for log-softmax, and again for its gradient: more than the sharded weights of a layer.

Here each chunk of hidden states is projected to logits, upcast, turned into a summed loss and
freed. Each chunk runs under non-reentrant activation checkpointing, so autograd keeps only the
chunk's hidden states (a view of the `[tokens, dim]` input) and recomputes the chunk's logits
in backward: one chunk's fp32 logits exist at a time, forward and backward. The price is one
extra output-projection matmul per token (~2% of a 7B step at vocab 32K), paid only when the
micro-batch needs more than one chunk: a micro-batch that fits one chunk (Alpaca's 4 x 512 tokens
at vocab 32K) runs the plain loss, whose saved log-probs are at most one chunk. The arithmetic per
token is exactly the plain loss's (same matmul, same upcast, same `F.cross_entropy`), so the
result matches it to fp32 rounding (tests/test_chunked_loss.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # data.alpaca.IGNORE_INDEX; model/ does not import data/

# Elements of fp32 logits per chunk: 2**27 = 512 MB (4,194 tokens at vocab 32,000; 1,046 at
# 128,256). Large enough that the matmul stays efficient, small enough to be noise in the plan.
CHUNK_ELEMENTS = 2**27


def chunk_tokens(vocab_size: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Tokens per loss chunk for this vocabulary (tools.plan counts the same number)."""
    return max(1, chunk_elements // vocab_size)


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight).float()  # (chunk, vocab) fp32, alive only inside this call
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """sum over tokens of CE(h @ weight.T, labels), ignoring IGNORE_INDEX; fp32 scalar.

    h: (..., dim) final hidden states (after the last norm), weight: (vocab, dim), labels: (...).
    """
    h = h.reshape(-1, h.shape[-1])  # (N, dim)
    labels = labels.reshape(-1)  # (N,)
    step = chunk_tokens(weight.shape[0], chunk_elements)
    if h.shape[0] <= step:
        # One chunk holds every token: recomputing it would buy nothing, its fp32 log-probs (at
        # most `chunk_elements`) are simply kept for backward.
        return _chunk_loss(h, weight, labels)
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], step):
        sl = slice(start, start + step)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, h[sl], weight, labels[sl], use_reentrant=False,
                                       preserve_rng_state=False)
        else:
            total = total + _chunk_loss(h[sl], weight, labels[sl])
    return total

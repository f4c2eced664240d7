"""Autoregressive decoding with the KV cache: one prefill over the prompt, then one token a step.

Greedy at temperature 0, otherwise temperature + nucleus (top-p) sampling. Only the new tokens are
returned; generation stops at EOS (not returned) or after `max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from model.llama import Transformer


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> int:
    """logits (vocab,) -> one token id."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    device = model.tok_embeddings.weight.device
    total = min(len(prompt_ids) + max_new_tokens, model.args.max_seq_len)
    if len(prompt_ids) >= total:
        return []
    if model.max_cache_len < total:
        model.setup_caches(1, total)
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    logits = model(prompt, input_pos=torch.arange(len(prompt_ids), device=device))  # prefill
    new: list[int] = []
    pos = len(prompt_ids)
    while True:
        tok = sample_next(logits[0, -1], temperature, top_p, generator)
        if eos_id is not None and tok == eos_id:
            break
        new.append(tok)
        if on_token is not None:
            on_token(tok)
        if pos + 1 > total - 1 or len(new) >= max_new_tokens:
            break
        step = torch.tensor([[tok]], dtype=torch.long, device=device)  # (1, 1)
        logits = model(step, input_pos=torch.tensor([pos], device=device))
        pos += 1
    return new

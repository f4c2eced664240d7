"""Autoregressive decoding with the KV cache: one prefill over the prompt, then one token a step.

Greedy at temperature 0, otherwise temperature + nucleus (top-p) sampling. Only the new tokens are
returned; generation stops at EOS (not returned) or after `max_new_tokens`. One loop serves a
single prompt (`generate`, chat) and a batch of prompts of any lengths (`generate_batch`, evaluation).

Unequal prompts are left-padded: row b's prompt ends in the last prompt slot, so every row writes
its next token to the same cache slot and the KV cache keeps one shared write index (static
shapes, as gpt-fast; right-aligned per-row writes would need a scatter per layer and step). The
price is start[b] wasted slots per row, which bucketing by length keeps small
(evaluation/batching.py). Per row, RoPE counts from the first real token and the padding slots
are masked (model.llama.Transformer.decode's `start`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch

from model.llama import Transformer


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, vocab) -> token ids (B,), on the logits' device (no host sync here)."""
    if temperature <= 0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(-1, keepdim=True), 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()  # not inference_mode: FSDP2 reuses its all-gather buffers for training afterwards
def generate_batch(
    model: Transformer,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | Collection[int] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    generator: torch.Generator | None = None,
    agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
    pad_id: int = 0,
) -> list[list[int]]:
    """Decode prompts of any lengths together; row i of the result is prompt i's new tokens.

    Equal lengths need no padding and take exactly the path a lone prompt takes (each row gets
    the tokens `generate` gives it alone). Unequal ones are left-padded with `pad_id` (never
    attended, so its value does not matter) and decoded with per-row positions and mask.

    A row stops at EOS (`eos_id`: one id, or all of a model's stop ids, e.g. Llama 3's
    end-of-text and end-of-turn), after `max_new_tokens`, or when prompt + response reach the
    model's `max_seq_len` (a prompt already that long gets nothing); the batch ends when every row
    has stopped. So a row stopped at EOS iff it got fewer tokens than
    min(max_new_tokens, max_seq_len - len(prompt)). `on_token(row, token)` sees each kept token as
    it is chosen. `agree(ids)` may replace the chosen ids (B,) before they are used: ranks decoding
    a sharded model broadcast rank 0's, so all run the same number of steps (train/heldout.py).
    """
    stop = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate_batch needs non-empty prompts (at least BOS)")
    B, T = len(prompts), max(len(p) for p in prompts)
    limit = [max(0, min(max_new_tokens, model.args.max_seq_len - len(p))) for p in prompts]
    if max(limit) == 0:
        return [[] for _ in prompts]
    device = model.tok_embeddings.weight.device
    total = T + max(limit)  # cache slots: the longest prompt, then the most tokens any row may add
    if model.max_cache_len < total or model.max_cache_batch < B:
        model.setup_caches(B, total)
    starts = [T - len(p) for p in prompts]
    tokens = torch.tensor([[pad_id] * s + p for s, p in zip(starts, prompts, strict=True)],
                          dtype=torch.long, device=device)  # (B, T), left-padded
    start = torch.tensor(starts, device=device) if any(starts) else None  # (B,)
    # Prefill: the whole prompt into the cache, logits for its last position only.
    logits = model.prefill(tokens, torch.arange(T, device=device), start)  # (B, 1, vocab)
    new: list[list[int]] = [[] for _ in prompts]
    running = [n > 0 for n in limit]
    pos = T
    while True:
        chosen = sample_next(logits[:, -1], temperature, top_p, generator)  # (B,) on the device
        if agree is not None:
            chosen = agree(chosen)
        next_ids = chosen.tolist()  # the one host read per generated token
        for i, tok in enumerate(next_ids):
            if not running[i]:
                continue
            if tok in stop:
                running[i] = False
                continue
            new[i].append(tok)
            if on_token is not None:
                on_token(i, tok)
            if len(new[i]) >= limit[i]:
                running[i] = False
        if not any(running):
            return new
        # Stopped rows keep decoding their last token; their outputs are already final.
        logits = model.decode(chosen[:, None], torch.tensor([pos], device=device), start)  # (B, 1, vocab)
        pos += 1


def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | Collection[int] | None = None,
    on_token: Callable[[int], None] | None = None,
    generator: torch.Generator | None = None,
    agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[int]:
    """One prompt: `generate_batch` with a batch of one (tools.chat, held-out samples)."""
    stream = None if on_token is None else (lambda _row, tok: on_token(tok))
    return generate_batch(model, [prompt_ids], max_new_tokens, temperature, top_p, eos_id, stream,
                          generator, agree)[0]

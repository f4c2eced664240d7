"""Autoregressive decoding with the KV cache: one prefill over the prompt, then one token a step.

Greedy at temperature 0, otherwise temperature + nucleus (top-p) sampling. Only the new tokens are
returned; generation stops at EOS (not returned) or after `max_new_tokens`. One loop serves a
single prompt (`generate`, chat) and a batch of equal-length prompts (`generate_batch`, evaluation).
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
) -> list[list[int]]:
    """Decode prompts of equal length together: the cache is indexed by one shared position, so
    equal lengths need no padding and each row gets exactly the tokens it would get alone.

    A row stops at EOS (`eos_id`: one id, or all of a model's stop ids, e.g. Llama 3's
    end-of-text and end-of-turn), after `max_new_tokens`, or at the model's `max_seq_len`; the batch ends
    when every row has stopped. `on_token(row, token)` sees each kept token as it is chosen.
    `agree(ids)` may replace the chosen ids (B,) before they are used: ranks decoding a sharded
    model broadcast rank 0's, so all run the same number of steps (train/heldout.py).
    """
    stop = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    T = len(prompts[0])
    if any(len(p) != T for p in prompts):
        raise ValueError("generate_batch needs prompts of equal length (group them first)")
    B = len(prompts)
    device = model.tok_embeddings.weight.device
    total = min(T + max_new_tokens, model.args.max_seq_len)
    if T >= total:
        return [[] for _ in prompts]
    if model.max_cache_len < total or model.max_cache_batch < B:
        model.setup_caches(B, total)
    tokens = torch.tensor(prompts, dtype=torch.long, device=device)  # (B, T)
    # Prefill: the whole prompt into the cache, logits for its last position only.
    logits = model.prefill(tokens, torch.arange(T, device=device))  # (B, 1, vocab)
    new: list[list[int]] = [[] for _ in prompts]
    running = [True] * B
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
            if len(new[i]) >= max_new_tokens or pos >= total - 1:
                running[i] = False
        if not any(running):
            return new
        # Stopped rows keep decoding their last token; their outputs are already final.
        logits = model.decode(chosen[:, None], torch.tensor([pos], device=device))  # (B, 1, vocab)
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

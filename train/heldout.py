"""Held-out loss and sample generations during training (all ranks take part: FSDP forwards are
collectives, so every rank runs the same number of them)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from data.alpaca import encode_prompt
from data.prompts import format_prompt
from train.parallel import all_reduce_sum
from train.step import prepare_batch


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, loader, max_batches: int, device: torch.device,
                 attention: str = "auto") -> dict[str, float]:
    """Token-level mean CE over the held-out set (summed over ranks, divided by all targets)."""
    model.eval()
    loss_sum, targets = torch.zeros((), dtype=torch.float64, device=device), 0
    # one_pass(): every held-out example once, the same number of batches on every rank.
    for i, b in enumerate(loader.one_pass()):
        if max_batches > 0 and i >= max_batches:
            break
        b = prepare_batch(b, device, attention)
        # The training loss's own chunked cross-entropy (model/loss.py), summed on the device.
        loss_sum += model(b["tokens"], b["positions"], b["attn"], labels=b["labels"],
                          target_index=b["target_index"]).double()
        targets += b["num_targets"]
    total, count = all_reduce_sum([float(loss_sum), targets], device)
    model.train()
    return {"eval_loss": total / max(count, 1), "eval_targets": count}


@torch.no_grad()
def sample_responses(model: torch.nn.Module, tokenizer, records: list[dict], template: str,
                     max_new_tokens: int, device: torch.device) -> list[tuple[str, str]]:
    """Greedy continuations of a few held-out prompts, for a human glance in TensorBoard.

    No KV cache here: the cache would live outside FSDP's parameter handling, and a handful of
    short generations every eval is cheap. Rank 0's token choice is broadcast each step so all
    ranks stay in lockstep (same number of forwards) even if logits differed in the last bit."""
    model.eval()
    out = []
    max_len = model.args.max_seq_len if hasattr(model, "args") else 2048
    for rec in records:
        prompt = format_prompt(rec, template)
        ids = encode_prompt(tokenizer, rec, template)
        new: list[int] = []
        while len(new) < max_new_tokens and len(ids) + len(new) < max_len:
            x = torch.tensor([ids + new], dtype=torch.long, device=device)  # (1, T)
            tok = model(x, last_only=True)[0, -1].float().argmax().reshape(1)
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.broadcast(tok, src=0)
            if int(tok) in tokenizer.stop_ids:
                break
            new.append(int(tok))
        out.append((prompt, tokenizer.decode(new)))
    model.train()
    return out

"""Held-out loss and sample generations during training (all ranks take part: FSDP forwards are
collectives, so every rank runs the same number of them)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from data.alpaca import encode_prompt
from data.prompts import format_prompt
from model.sampling import generate
from train.distributed import all_reduce_sum, world_size
from train.step import prepare_batch


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, loader, max_batches: int, device: torch.device,
                 attention: str = "auto") -> dict[str, float]:
    """Token-level mean CE over the held-out set (summed over ranks, divided by all targets)."""
    model.eval()
    loss_sum, targets = torch.zeros((), dtype=torch.float64, device=device), 0
    # one_pass(): every held-out example once, the same number of batches on every rank.
    for i, batch in enumerate(loader.one_pass()):
        if max_batches > 0 and i >= max_batches:
            break
        mb = prepare_batch(batch, device, attention)
        # The training loss's own chunked cross-entropy (model/loss.py), summed on the device.
        loss_sum += model(mb.tokens, mb.labels, mb.positions, mb.attn, mb.target_index).double()
        targets += mb.num_targets
    total, count = all_reduce_sum([float(loss_sum), targets], device)
    model.train()
    return {"eval_loss": total / max(count, 1), "eval_targets": count}


def _rank0_tokens(ids: torch.Tensor) -> torch.Tensor:
    """Every rank continues with rank 0's choice, so all run the same number of sharded forwards
    even if their logits differ in the last bit."""
    if world_size() > 1:
        dist.broadcast(ids, src=0)
    return ids


@torch.no_grad()
def sample_responses(model: torch.nn.Module, tokenizer, records: list[dict], template: str,
                     max_new_tokens: int, dtype: torch.dtype) -> list[tuple[str, str]]:
    """Greedy continuations of a few held-out prompts with the KV cache, for a human glance in
    TensorBoard. The cache lives only for these calls (`dtype`: the compute dtype)."""
    model.eval()
    prompts = [encode_prompt(tokenizer, rec, template) for rec in records]
    longest = max((len(ids) for ids in prompts), default=0)
    model.setup_caches(1, min(longest + max_new_tokens, model.args.max_seq_len), dtype=dtype)  # one for all
    out = []
    for rec, ids in zip(records, prompts, strict=True):
        new = generate(model, ids, max_new_tokens, eos_id=tokenizer.stop_ids, agree=_rank0_tokens)
        out.append((format_prompt(rec, template), tokenizer.decode(new)))
    model.reset_caches()
    model.train()
    return out

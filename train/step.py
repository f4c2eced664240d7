"""One optimizer step: `train_step(micro_batches)` -> loss, grad norm, skipped.

What it guarantees:
- The step's loss is sum(token CE over all micro-batches and ranks) / (targets of the whole
  step), however the global batch is split into ranks x micro-batch x accumulation.
- No unsharded gradient outlives a micro-batch under sharded FSDP (`full`, `hybrid`): gradients
  are reduce-scattered after every micro-batch, as torchtitan does. Holding them unsharded until
  the last micro-batch (FSDP2's `set_requires_gradient_sync(False)`) keeps a full fp32 gradient
  per rank: +27 GB at 7B. Only `fsdp: none` (replicated) accumulates locally and all-reduces
  once, since there a rank's gradient is full-size either way. `hybrid` reduce-scatters inside
  the shard group every micro-batch and all-reduces across replicas (the slow link) once.
- One device-to-host synchronisation per step: the targets count is all-reduced and used on the
  device, and the loss, grad norm and stop vote are read together once, to decide the skip. The
  vote after each micro-batch (a signal stops the step there) is a host-side collective.
- The loss is the model's chunked cross-entropy (model/loss.py): the fp32 `[tokens, vocab]`
  logits never exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from model.attention import build_attention
from model.loss import IGNORE_INDEX
from train.config import ParallelConfig
from train.faults import fault_point
from train.metrics import attention_pairs
from train.preempt import StopRequest


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int  # real (non-padding) input tokens, all ranks
    targets: int  # trained tokens, all ranks
    skipped: bool  # non-finite loss or gradient: weights, moments and schedule left untouched
    stop_votes: int  # ranks that were asked to stop (SIGTERM/SIGINT) before the step ended
    attention_pairs: int  # sum over documents of length^2, all ranks (train.metrics MFU)
    abandoned: int = 0  # > 0: stopped by a signal after this many micro-batches; nothing updated


def prepare_batch(batch: dict, device: torch.device, attention: str = "auto") -> dict:
    """What a micro-batch needs on the device, prepared on the host ahead of the step: how its
    tokens attend (model.attention, built once for all layers from the host's document ids), its
    attention (query, key) pairs for MFU, the positions that have a target (the loss projects
    only those to the vocabulary), and its tensors on `device` (on CUDA from pinned memory
    without blocking the host)."""
    cuda = device.type == "cuda"
    out = dict(batch)
    out["attn"] = build_attention(batch["document_ids"], attention, device)
    out["attention_pairs"] = attention_pairs(batch)
    out["target_index"] = (batch["labels"].flatten() != IGNORE_INDEX).nonzero().squeeze(1)  # host: no sync
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = (v.pin_memory() if cuda else v).to(device, non_blocking=cuda)
    return out


def set_gradient_sync(model: torch.nn.Module, pcfg: ParallelConfig, last_micro_batch: bool) -> None:
    """Which gradient collectives run after this micro-batch's backward (see the module doc)."""
    if not hasattr(model, "set_requires_gradient_sync"):  # one process, no FSDP: nothing to sync
        return
    if pcfg.fsdp == "none":
        model.set_requires_gradient_sync(last_micro_batch)
    elif pcfg.fsdp == "hybrid":
        model.set_requires_all_reduce(last_micro_batch)
    # full: reduce-scatter every micro-batch (the FSDP2 default).


def _on_device(values: list[float], device: torch.device) -> torch.Tensor:
    """Host numbers as an fp64 device tensor without waiting for the device's queued work (a
    pageable host-to-device copy would: pinned memory and a non-blocking copy do not)."""
    t = torch.tensor(values, dtype=torch.float64)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
               micro_batches: list[dict], pcfg: ParallelConfig, grad_clip: float,
               stop: StopRequest | None, device: torch.device, fault_step: int = 0) -> StepResult:
    """Forward/backward every micro-batch (prepared by `prepare_batch`), clip, then AdamW unless
    non-finite. When a stop (SIGTERM/SIGINT) is agreed after a micro-batch that is not the last,
    the partial gradients are dropped and the step returns `abandoned` = micro-batches run."""
    dp_world = dist.get_world_size() if dist.is_initialized() else 1
    # Targets and real tokens of the whole step, all ranks, counted before any backward:
    # the gradient of each micro-batch is scaled by 1 / (step's targets) on the device.
    counts = _all_reduce(_on_device([sum(b[k] for b in micro_batches)
                                     for k in ("num_targets", "num_tokens", "attention_pairs")], device))
    # FSDP averages gradients over the dp_world ranks; scaling by dp_world turns that average
    # back into the sum, so the gradient is exactly d(total loss / step targets).
    grad_scale = (dp_world / counts[0].clamp(min=1.0)).float()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, b in enumerate(micro_batches):
        set_gradient_sync(model, pcfg, i == len(micro_batches) - 1)
        token_loss_sum = model(b["tokens"], b["positions"], b["attn"], labels=b["labels"],
                               target_index=b["target_index"])
        (token_loss_sum * grad_scale).backward()
        loss_sum += token_loss_sum.detach().double()
        if i == 0 and fault_step:  # tests only (train/faults.py)
            fault_point("term_mid", fault_step, dist.get_rank() if dist.is_initialized() else 0)
            fault_point("int_mid", fault_step, dist.get_rank() if dist.is_initialized() else 0)
        # The stop vote runs on the host (train/preempt.py): no device sync per micro-batch.
        if i < len(micro_batches) - 1 and stop is not None and stop.agreed():
            optimizer.zero_grad(set_to_none=True)
            return StepResult(math.nan, math.nan, 0, 0, True, 1, 0, abandoned=i + 1)

    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf,
                                               foreach=True)
    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    # Loss and stop votes summed over ranks in one collective; then the step's one host read.
    stop_requested = stop is not None and stop.requested
    totals = _all_reduce(torch.cat([loss_sum.reshape(1), _on_device([float(stop_requested)], device)]))
    loss_total, stop_votes, grad_norm_f, targets, tokens, pairs = torch.cat(
        [totals, grad_norm.detach().double().reshape(1), counts]).tolist()
    loss = loss_total / max(targets, 1.0)

    skipped = not (math.isfinite(loss) and math.isfinite(grad_norm_f))
    if not skipped:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, grad_norm_f, int(tokens), int(targets), skipped, int(stop_votes), int(pairs))

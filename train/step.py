"""One optimizer step: `train_step(model, optimizer, scheduler, batches, grad_clip)`.

What it guarantees:
- The step's loss is sum(token CE over all micro-batches and ranks) / (targets of the whole
  step), however the global batch is split into ranks x micro-batch x accumulation.
- No unsharded gradient outlives a micro-batch under sharded FSDP (`full`, `hybrid`): gradients
  are reduce-scattered after every micro-batch, as torchtitan does (train.parallel.set_gradient_sync).
- One device-to-host synchronisation per step: the targets count is all-reduced and used on the
  device, and the loss and grad norm are read together once, to decide the skip.
- The loss is the model's chunked cross-entropy (model/loss.py): the fp32 `[tokens, vocab]`
  logits never exist.

What a micro-batch needs on the device is prepared on the host ahead of the step
(`prepare_step`), while the device still runs the previous one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor

from data.collate import Batch
from model.attention import AttentionInputs, build_attention
from model.loss import IGNORE_INDEX
from train.distributed import all_reduce_, world_size
from train.metrics import attention_pairs
from train.parallel import set_gradient_sync


@dataclass
class MicroBatch:
    """One micro-batch on the device, ready for `model(tokens, labels, positions, attn, target_index)`."""

    tokens: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T)
    positions: torch.Tensor | None  # (B, T); None: 0..T-1
    attn: AttentionInputs  # how its tokens attend (model.attention), built once for all layers
    target_index: torch.Tensor  # (N,) flat positions with a target: only those reach the vocabulary
    num_targets: int
    num_tokens: int
    attention_pairs: int  # sum over documents of length^2 (MFU)


@dataclass
class StepBatches:
    """The micro-batches of one optimizer step and their totals on this rank (host ints)."""

    micro: list[MicroBatch]
    num_targets: int
    num_tokens: int
    attention_pairs: int

    def __iter__(self) -> Iterator[MicroBatch]:
        return iter(self.micro)

    def __len__(self) -> int:
        return len(self.micro)


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int  # real (non-padding) input tokens, all ranks
    targets: int  # trained tokens, all ranks
    attention_pairs: int  # sum over documents of length^2, all ranks
    skipped: bool  # non-finite loss or gradient: weights, moments and schedule left untouched


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One copy to `device`; on CUDA from pinned memory without blocking the host."""
    cuda = device.type == "cuda"
    return (t.pin_memory() if cuda else t).to(device, non_blocking=cuda)


def prepare_batch(batch: Batch, device: torch.device, attention: str = "auto") -> MicroBatch:
    """A host batch -> a MicroBatch on `device`: every tensor moved once (the document ids only
    by the attention that needs them on the device), the target positions found on the host."""
    target_index = (batch.labels.flatten() != IGNORE_INDEX).nonzero().squeeze(1)  # host: no sync
    positions = None if batch.positions is None else to_device(batch.positions, device)
    return MicroBatch(tokens=to_device(batch.tokens, device), labels=to_device(batch.labels, device),
                      positions=positions, attn=build_attention(batch.document_ids, attention, device),
                      target_index=to_device(target_index, device), num_targets=batch.num_targets,
                      num_tokens=batch.num_tokens, attention_pairs=attention_pairs(batch))


def prepare_step(batches: Sequence[Batch], device: torch.device, attention: str = "auto") -> StepBatches:
    micro = [prepare_batch(b, device, attention) for b in batches]
    return StepBatches(micro, sum(m.num_targets for m in micro), sum(m.num_tokens for m in micro),
                       sum(m.attention_pairs for m in micro))


def step_batches(loader, grad_accum: int, device: torch.device, attention: str = "auto") -> Iterator[StepBatches]:
    """The loader's batches, `grad_accum` at a time, prepared for the device (lazily: the loop asks
    for the next step's while the device still runs the current one)."""
    batches = iter(loader)
    while True:
        yield prepare_step([next(batches) for _ in range(grad_accum)], device, attention)


def _on_device(values: list[float], device: torch.device) -> torch.Tensor:
    """Host numbers as an fp64 device tensor without waiting for the device's queued work."""
    return to_device(torch.tensor(values, dtype=torch.float64), device)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, batches: StepBatches,
               grad_clip: float) -> StepResult:
    """Forward/backward every micro-batch, clip (grad_clip 0: no clipping), then AdamW unless
    the loss or gradient is non-finite. Iterating `batches` may raise between micro-batches
    (train.run: a stop signal); the caller then drops the partial gradients."""
    device = batches.micro[0].tokens.device
    # Targets and real tokens of the whole step, all ranks, counted before any backward:
    # the gradient of each micro-batch is scaled by 1 / (step's targets) on the device.
    counts = all_reduce_(_on_device([batches.num_targets, batches.num_tokens, batches.attention_pairs], device))
    # FSDP averages gradients over the data-parallel ranks; scaling by their number turns that
    # average back into the sum, so the gradient is exactly d(total loss / step targets).
    grad_scale = (world_size() / counts[0].clamp(min=1.0)).float()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, mb in enumerate(batches):
        set_gradient_sync(model, last_micro_batch=i == len(batches) - 1)
        token_loss_sum = model(mb.tokens, mb.labels, mb.positions, mb.attn, mb.target_index)
        (token_loss_sum * grad_scale).backward()
        loss_sum += token_loss_sum.detach().double()

    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf,
                                               foreach=True)
    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    # The loss summed over ranks, then the step's one host read.
    loss_total, grad_norm_f, targets, tokens, pairs = torch.cat(
        [all_reduce_(loss_sum.reshape(1)), grad_norm.detach().double().reshape(1), counts]).tolist()
    loss = loss_total / max(targets, 1.0)

    skipped = not (math.isfinite(loss) and math.isfinite(grad_norm_f))
    if not skipped:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss, grad_norm=grad_norm_f, tokens=int(tokens), targets=int(targets),
                      attention_pairs=int(pairs), skipped=skipped)

"""AdamW and the learning-rate schedule (linear warmup by ratio, then cosine / linear / constant).

The schedule follows HF's `get_cosine_schedule_with_warmup` (what Stanford Alpaca ran), so a run
here and a run of the original recipe see the same learning rate at every step: the rate used by
the optimizer update with 0-based index `i` is `lr * factor(i)`.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from train.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over all trainable parameters. Fused kernels on CUDA (one launch for all tensors);
    the foreach path on CPU. Weight decay applies to every parameter, norms included, as HF's
    Trainer did for Alpaca (which used weight_decay 0 anyway)."""
    params = [p for p in model.parameters() if p.requires_grad]
    on_cuda = bool(params) and params[0].device.type == "cuda"
    return torch.optim.AdamW(
        params,
        lr=cfg.lr,
        betas=(cfg.betas[0], cfg.betas[1]),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=True if on_cuda else None,
        foreach=None if on_cuda else True,
    )


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """HF's rule: ceil(ratio * total)."""
    return math.ceil(warmup_ratio * total_steps)


def lr_factor(i: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr for the update with 0-based index `i` of `total`."""
    if i < warmup:
        return i / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (i - warmup) / max(1, total - warmup))
    if schedule == "linear":
        decay = 1.0 - progress
    else:  # cosine: half a period from 1 down to 0
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    warm = warmup_steps(total_steps, cfg.warmup_ratio)
    return LambdaLR(optimizer, lambda i: lr_factor(i, total_steps, warm, cfg.schedule, cfg.min_lr_ratio))


def set_schedule(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, cfg: OptimConfig, step: int) -> None:
    """Point a schedule built from this config (`build_scheduler`) at `step`. On resume the
    checkpoint's optimizer state brings its own lr and hyper-parameters; this run's config must
    win, so a longer run or a lower lr does what it says. LambdaLR computes base_lr * factor(step)
    afresh at every step (not chained), so an unchanged config gives the same bits."""
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    scheduler.last_epoch = step
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group.update(lr=cfg.lr * factor(step), initial_lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps,
                     weight_decay=cfg.weight_decay)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

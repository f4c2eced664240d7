"""Preemption: SIGTERM / SIGINT become a request to save and stop, agreed on by every rank.

Why a flag and not an exception: the signal lands at an arbitrary bytecode of an arbitrary rank,
possibly inside a collective; raising there would leave the other ranks waiting in the collective
forever. The handler only records the signal; the loop asks `agreed()` at points where every rank
is at the same place (after each micro-batch), and all ranks then stop together.

Why after each micro-batch and not each step: with gradient accumulation a 7B step is many
seconds to minutes, and the cluster's grace period (torchrun: 30 s, TORCH_ELASTIC_SHUTDOWN_TIMEOUT;
SLURM: KillWait, or `--signal`) is spent waiting for it. Stopping inside a step throws away that
step's partial gradients and saves the state *before* the step (weights and optimizer untouched,
the data loader rewound to the step's first micro-batch), so resuming redoes the step exactly.

A second Ctrl-C (SIGINT) is not caught: a person pressing it twice wants out now.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from train.distributed import all_reduce_, world_size


class StopRequest:
    """`signum` is the first stop signal received (None until then)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._group = None  # a gloo group for the vote when the default one is NCCL

    def install(self) -> StopRequest:
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal's name, as agreed by `agreed()` (a rank that was not signalled learns it there)."""
        return signal.Signals(self.signum).name if self.signum is not None else "none"

    def agreed(self) -> bool:
        """True on every rank when any rank was signalled (one tiny all-reduce: call it at the
        same point on every rank); afterwards every rank knows the signal's name.

        The vote is a CPU tensor over gloo (a group of its own when training runs on NCCL), so
        asking after every micro-batch never waits for the GPU to finish its queued work."""
        t = torch.tensor([self.signum or 0], dtype=torch.int64)
        if world_size() > 1:
            if self._group is None:  # created on the first vote, which every rank reaches together
                self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
            all_reduce_(t, op=dist.ReduceOp.MAX, group=self._group)
        signum = int(t.item())
        if signum and self.signum is None:
            self.signum = signum
        return signum != 0

"""The loop's saving policy: when a checkpoint is written, synchronously or in the background,
and what a failed save does (train/checkpoint.py writes one; train/checkpoint_async.py writes
one in the background)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from train.checkpoint import SaveError, save
from train.checkpoint_async import AsyncWriter
from train.distributed import DistInfo


class Checkpointer:
    """The loop's saving policy around `save`.

    - A step saved already (the checkpoint just resumed from; a periodic save right before a
      preemption) is not written again: preemption time goes to work that is not done yet.
    - `on_error="warn"` keeps training when a periodic save fails (logged on one line; the next
      save tries again); a save that ends the run (preemption) always raises.
    - `asynchronous`: a periodic save is staged to host memory and written by a background thread
      (train/checkpoint_async.py); it becomes `step_N` (manifest + rename) only when every rank's
      write has finished, at `poll()` (every step), at the next save, or at `finish()` (the end).
      At most one is in flight. A save that ends the run (`last`) is always synchronous.
    """

    def __init__(self, root: Path, info: DistInfo, keep: int, on_error: str = "stop",
                 log: Callable[[str], None] = print, saved_step: int | None = None, asynchronous: bool = False):
        self.root, self.info, self.keep, self.on_error, self.log = root, info, keep, on_error, log
        self.saved_step = saved_step
        self.writer = None
        if asynchronous:
            self.writer = AsyncWriter(info)

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             train_state: dict[str, Any], last: bool = False) -> Path | None:
        self.finish(waiting_for=step)
        path = self.root / f"step_{step}"
        if step == self.saved_step:
            return path
        try:
            if self.writer is not None and not last:
                self.writer.start(self.root, step, model, optimizer, train_state)
                return None
            path = save(self.root, step, model, optimizer, train_state, self.info, self.keep)
        except SaveError as e:
            return self._failed(e, last)
        self.saved_step = step
        self.log(f"saved checkpoint {path}")
        return path

    def poll(self) -> None:
        """Collective while a save is in flight (a no-op otherwise, on every rank alike): commit
        it once every rank's write has finished."""
        if self.writer is not None and self.writer.pending is not None and self.writer.all_written():
            self.finish()

    def finish(self, waiting_for: int | None = None) -> None:
        """Collective: wait for the save in flight (if any) and commit it."""
        if self.writer is None or self.writer.pending is None:
            return
        step, t0 = self.writer.pending.step, time.perf_counter()
        try:
            path = self.writer.finish(self.keep)
        except SaveError as e:
            self._failed(e, last=False)
            return
        waited = self.writer.last_wait_s
        if waiting_for is not None:
            self.log(f"checkpoint step_{waiting_for}: waited {waited:.2f} s for step_{step}'s background write")
        self.saved_step = step
        self.log(f"saved checkpoint {path} (written in the background; committed in "
                 f"{time.perf_counter() - t0:.2f} s)")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _failed(self, e: SaveError, last: bool) -> None:
        if self.on_error == "warn" and not last and not e.fatal:
            self.log(f"warning: {e} (checkpoint.on_error=warn: training goes on)")
            return None
        raise e

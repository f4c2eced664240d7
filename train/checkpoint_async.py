"""Periodic checkpoints written while training goes on (`checkpoint.async_save`).

    start   (every rank, the loop blocked)  `.tmp_step_N` created; this rank's train state
            written; model + optimizer shards copied to host memory (DCP's DefaultStager:
            pinned on CUDA) and handed to `dcp.async_save`, which writes them from a thread
    thread  DCP's write (its own collectives, on a gloo group of its own), then SHA-256 of this
            rank's share of the files
    commit  (every rank, at `all_written()` / `finish()`) the ranks agree the writes succeeded,
            rank 0 writes the manifest and renames `.tmp_step_N` to `step_N` (train/checkpoint.py)

Why a process group of its own: collectives are matched by the order they are issued in; DCP's
background thread issuing them on the group the training step uses would interleave with FSDP's
and the stop vote differently on each rank. Why the commit waits for a collective vote: every
rank must know every write finished before rank 0 declares the checkpoint complete, and the vote
happens at the same point of the loop on every rank, so no rank races ahead into a collective.

A crash while a save is in flight leaves a `.tmp_step_N` that resume ignores (and start-up
removes); the previous `step_N` is untouched. The staged host copy is the planner's
`checkpoint_staging` host term (train/plan.py).
"""

from __future__ import annotations

import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from model.manifest import describe, list_files
from train.checkpoint import (
    SaveError,
    _begin,
    _commit,
    _fail_together,
    _write_train_state,
    _writer,
    trainable_state,
)
from train.distributed import DistInfo, all_reduce_

_WRITERS: weakref.WeakSet = weakref.WeakSet()


def drain_all() -> None:
    """Wait for every write in flight, uncommitted: a run ending on an error destroys the process
    groups next, and a write thread still in a collective on one of them would hang the exit."""
    for writer in list(_WRITERS):
        writer.drain()


@dataclass
class Pending:
    step: int
    final: Path
    tmp: Path
    done: Future  # this rank's write + hashing: the manifest entries of its share of the files


class AsyncWriter:
    def __init__(self, info: DistInfo):
        self.info = info
        self.pending: Pending | None = None
        self.last_wait_s = 0.0
        _WRITERS.add(self)
        # Created once, on every rank in the same order (Checkpointer is built at the same point).
        self.group = dist.new_group(backend="gloo")
        # The loop's vote on "written" runs on the main thread: the default group when it is gloo
        # (the training step's collectives are issued on the same thread), else a gloo group of its own.
        self.vote_group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-hash")
        self.stager = None
        if info.device.type == "cuda":  # kept between saves: pinning host memory is slow, reuse it
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            self.stager = DefaultStager(StagingOptions(use_pinned_memory=True, use_shared_memory=False,
                                                       use_async_staging=False, use_non_blocking_copy=True))

    def start(self, root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              train_state: dict[str, Any]) -> None:
        """Collective; returns once the state is staged (training may then change it)."""
        if self.pending is not None:
            raise RuntimeError("a checkpoint write is already in flight (finish() it first)")
        final, tmp = _begin(root, step, self.info)
        err, future = None, None
        try:
            _write_train_state(tmp, train_state, self.info)
            state = {"model": trainable_state(model), "optim": get_optimizer_state_dict(model, optimizer)}
            # No stager on CPU: the FileSystemWriter stages itself (a plain host copy, freed after the write).
            future = dcp.async_save(state, storage_writer=_writer(tmp, step, self.info), process_group=self.group,
                                    async_stager=self.stager)
        except Exception as e:
            err = e
        try:
            _fail_together(err, "staging the state", self.info, root, final, tmp)
        except SaveError as e:
            # The ranks that did stage have a write thread waiting in DCP's first collective for
            # the rank that did not: nothing can finish that save, so on_error=warn cannot go on.
            e.fatal = True
            raise
        self.pending = Pending(step, final, tmp, self.pool.submit(self._hash_when_written, future, tmp))

    def _hash_when_written(self, written: Future, tmp: Path) -> tuple[dict, BaseException | None]:
        """Background: wait for DCP's write (its exception is the write's failure), then hash this
        rank's share of the directory, so the commit costs no more than a manifest and a rename."""
        written.result()
        try:
            return describe(tmp, list_files(tmp)[self.info.rank::self.info.world_size]), None
        except Exception as e:
            return {}, e

    def all_written(self) -> bool:
        """Collective: has every rank's write (and hashing) finished? Never blocks on the write."""
        done = torch.tensor([int(self.pending.done.done())], dtype=torch.int64)
        all_reduce_(done, op=dist.ReduceOp.MIN, group=self.vote_group)
        return bool(done.item())

    def finish(self, keep: int) -> Path:
        """Collective: wait for this rank's write, agree on the outcome, commit. SaveError on every
        rank if any rank's write or hashing failed."""
        p, self.pending = self.pending, None
        t0 = time.perf_counter()
        entries, write_err, hash_err = {}, None, None
        try:
            entries, hash_err = p.done.result()
        except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
            write_err = e
        self.last_wait_s = time.perf_counter() - t0
        root = p.final.parent
        _fail_together(write_err, "writing the shards", self.info, root, p.final, p.tmp)
        return _commit(root, p.step, p.final, p.tmp, entries, hash_err, self.info, keep)

    def drain(self) -> None:
        """Wait for a write in flight without committing it (a run ending on an error)."""
        if self.pending is not None:
            try:
                self.pending.done.result()
            except (Exception, CheckpointException):
                pass
            self.pending = None

    def close(self) -> None:
        self.drain()
        self.pool.shutdown(wait=True)
        if self.stager is not None:
            self.stager.close()

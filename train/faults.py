"""Fault injection for the crash-safety tests, off unless TRAIN_FAULT is set.

Why in the product code: the moments that matter (after step N is logged; after a checkpoint's
shards are written but before its rename; half way through a step's micro-batches; a disk that
fills up under one rank's write) cannot be hit reliably from outside the process on a loaded
2-core CI machine. The faults are the real thing (a signal to the own process; an OSError with
errno ENOSPC raised by the file DCP is writing), so the code paths under test are exactly those
of a preempted job or a full disk.

TRAIN_FAULT = comma-separated `KIND@STEP` or `KIND@STEP:rRANK`, KIND one of
    kill          SIGKILL after step STEP is logged
    term / int    SIGTERM / SIGINT after step STEP is logged (a cluster preempting the job; Ctrl-C)
    term_mid      SIGTERM after the first micro-batch of step STEP (needs batch.grad_accum >= 2)
    int_mid       SIGINT after the first micro-batch of step STEP
    kill_in_save  SIGKILL after the shards of checkpoint STEP are written, before the rename
    enospc        the DCP writer of checkpoint STEP fails with ENOSPC after writing 1 KiB
    stall_in_save the DCP writer of checkpoint STEP writes 1 KiB, then never returns (an asynchronous
                  save kept in flight, for a `kill@LATER` to land in the middle of it)
    kill_node     SIGKILL the whole "node" where `kill` fires: this worker's torchrun agent
                  (its process group), the agent's other workers, then this worker

TRAIN_FAULT_ONCE = a directory: each fault fires once in it. Firing first creates a marker file
there (O_EXCL), so a run restarted by torchrun (`--max-restarts`) or requeued by Slurm with the
same environment passes the same point again without dying again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

from torch.distributed.checkpoint.filesystem import FileSystem

ENV = "TRAIN_FAULT"
ONCE_ENV = "TRAIN_FAULT_ONCE"
_SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT, "term_mid": signal.SIGTERM,
            "int_mid": signal.SIGINT, "kill_in_save": signal.SIGKILL, "kill_node": signal.SIGKILL}
_FULL_AFTER = 1024  # bytes a rank writes before "the disk is full"


def _armed(kind: str, step: int, rank: int) -> bool:
    spec = os.environ.get(ENV)
    if not spec:
        return False
    for item in spec.split(","):
        k, _, rest = item.strip().partition("@")
        at, _, who = rest.partition(":r")
        if k == kind and int(at) == step and (not who or int(who) == rank):
            return _first_time(f"{kind}@{step}:r{rank}")
    return False


def _first_time(name: str) -> bool:
    """True unless TRAIN_FAULT_ONCE names a directory where this fault already fired."""
    once = os.environ.get(ONCE_ENV)
    if not once:
        return True
    os.makedirs(once, exist_ok=True)
    try:
        os.close(os.open(os.path.join(once, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


# Faults that fire at another kind's point: the loop names only the points, not every fault.
_SAME_POINT = {"kill": ("kill", "kill_node")}


def fault_point(kind: str, step: int, rank: int) -> None:
    for k in _SAME_POINT.get(kind, (kind,)):
        if _armed(k, step, rank):
            if k == "kill_node":
                _kill_node()
            os.kill(os.getpid(), _SIGNALS[k])


def _kill_node() -> None:
    """What a node failure does to torchrun: the agent goes first (so it cannot restart anything),
    then its workers, which torchrun starts in sessions of their own (not in its process group)."""
    agent = os.getppid()
    try:
        with open(f"/proc/{agent}/task/{agent}/children") as f:
            workers = [int(pid) for pid in f.read().split()]
    except OSError:
        workers = []
    if os.getpgid(agent) == agent:  # its own group (as a node's launcher is): take the group down
        os.killpg(agent, signal.SIGKILL)
    else:  # never the group of whoever started torchrun (a shell, pytest)
        os.kill(agent, signal.SIGKILL)
    for pid in workers:
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class _FullDiskStream:
    """A real file whose writes fail with ENOSPC once `budget` bytes are in it (partial data
    stays on disk, as on a full filesystem); with `stall`, they never return instead."""

    def __init__(self, f, path: str, budget: int, stall: bool = False):
        self._f, self._path, self._budget, self._stall = f, path, budget, stall

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        room = max(self._budget - self._f.tell(), 0)
        if len(data) > room:
            self._f.write(data[:room])
            self._f.flush()
            while self._stall:  # until the test's SIGKILL
                time.sleep(1)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


class _FullDisk(FileSystem):
    def __init__(self, stall: bool = False):
        super().__init__()
        self.stall = stall

    @contextlib.contextmanager
    def create_stream(self, path, mode):
        with super().create_stream(path, mode) as f:
            yield _FullDiskStream(f, str(path), _FULL_AFTER, self.stall) if "w" in mode else f


def faulty_filesystem(step: int, rank: int) -> FileSystem | None:
    """A DCP FileSystem that runs out of space (`enospc@STEP`) or stalls (`stall_in_save@STEP`),
    when armed for this rank."""
    if _armed("stall_in_save", step, rank):
        return _FullDisk(stall=True)
    return _FullDisk() if _armed("enospc", step, rank) else None

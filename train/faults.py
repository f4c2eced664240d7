"""Fault injection for the crash-safety tests, off unless TRAIN_FAULT is set.

Why in the product code: the moments that matter (after step N is logged; after a checkpoint's
shards are written but before its rename) cannot be hit reliably from outside the process on a
loaded 2-core CI machine. The faults are the real thing (a signal to the own process), so the code
paths under test are exactly those of a preempted or crashed job.

TRAIN_FAULT = comma-separated `KIND@STEP` or `KIND@STEP:rRANK`, KIND one of
    kill          SIGKILL after step STEP is logged
    term          SIGTERM after step STEP is logged (a cluster preempting the job)
    kill_in_save  SIGKILL after the shards of checkpoint STEP are written, before the rename
"""

from __future__ import annotations

import os
import signal

ENV = "TRAIN_FAULT"
_SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "kill_in_save": signal.SIGKILL}


def fault_point(kind: str, step: int, rank: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        k, _, rest = item.strip().partition("@")
        at, _, who = rest.partition(":r")
        if k == kind and int(at) == step and (not who or int(who) == rank):
            os.kill(os.getpid(), _SIGNALS[kind])

"""`make gpu-check` in its reduced CPU mode: every path but the CUDA kernels runs, and the
compiled + selectively checkpointed run trains exactly like the eager one on the same batches."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.train_helpers import ROOT


@pytest.mark.slow
def test_gpu_check_cpu_mode_prints_one_table_and_compile_changes_nothing():
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("| ") and not x.startswith("| case")]
    rows = {x.split(" | ")[0][2:]: [c.strip() for c in x.strip("| ").split(" | ")] for x in lines}
    cases = [k.split(": ", 1)[1] for k in rows if ": " in k]
    compiled = ["packed, compiled, AC selective"] if shutil.which("g++") else []  # inductor needs a compiler
    assert cases == ["padded, eager, AC none", "packed, eager, AC none", *compiled, "packed, eager, AC full"]
    assert any(k.startswith("decode ") for k in rows)
    for cells in rows.values():
        assert float(cells[2].replace(",", "")) > 0  # tokens/s
    losses = {k.split(": ", 1)[1]: float(v[5]) for k, v in rows.items() if ": " in k}
    assert all(math.isfinite(x) for x in losses.values())
    # Same packed batches, same init: compile and checkpointing must not change the training.
    assert losses["packed, eager, AC none"] == losses["packed, eager, AC full"]
    if compiled:
        assert losses["packed, compiled, AC selective"] == losses["packed, eager, AC none"]

"""`make gpu-check` in its reduced CPU mode: every path but the CUDA kernels runs, the
compiled + selectively checkpointed run trains exactly like the eager one on the same batches,
each row reaches OUT/ as its case ends, and a case over its time limit is a row saying so."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_helpers import ROOT


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_gpu_check_cpu_mode_prints_one_table_and_compile_changes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--cpu", "--out", str(tmp_path)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=900)
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
    # The same rows are on disk: the JSONL record and the markdown table, one row per case.
    assert [r["case"] for r in _jsonl(tmp_path / "rows.jsonl")] == list(rows)
    assert [x for x in (tmp_path / "table.md").read_text().splitlines() if x.startswith("| ")] == \
        [x for x in proc.stdout.splitlines() if x.startswith("| ")]


@pytest.mark.slow
def test_quick_cpu_run_writes_each_row_as_it_ends_and_a_timeout_is_a_row(tmp_path):
    # The compiled case (the middle one of --quick) gets 0.5 s: less than a child's Python start,
    # so it times out for sure, and CI pays for no compile here.
    cmd = [sys.executable, "-m", "tools.gpu_check", "--cpu", "--quick", "--out", str(tmp_path),
           "--case-timeout", "tiny-packed-compiled-selective=0.5"]
    with (tmp_path / "stdout.txt").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.PIPE, text=True)
        started, rows_before = [], []  # each case's key, and the rows on disk when it started
        for line in proc.stderr:
            if line.startswith("  ") and ": limit " in line:
                started.append(line.split(":")[0].strip())
                rows_before.append(len(_jsonl(tmp_path / "rows.jsonl")))
        rc = proc.wait(timeout=600)
    # Exactly the three quick cases, in order; each one's row was on disk before the next began.
    assert started == ["tiny-packed-eager-none", "tiny-packed-compiled-selective", "decode"]
    assert rows_before == [0, 1, 2]
    rows = _jsonl(tmp_path / "rows.jsonl")
    assert [r["case"] for r in rows[:2]] == ["tiny GQA (CPU stand-in): packed, eager, AC none",
                                             "tiny GQA (CPU stand-in): packed, compiled, AC selective"]
    assert len(rows) == 3 and rows[2]["case"].startswith("decode ")
    assert float(rows[0]["tok/s"].replace(",", "")) > 0 and rows[0]["note"] == ""
    assert rows[1]["note"] == "timeout after 0.5 s" and rows[1]["tok/s"] == ""
    assert float(rows[2]["tok/s"].replace(",", "")) > 0  # the case after the timeout still ran
    assert rc == 1  # documented: a timed-out, failed or skipped case makes the exit status 1
    table = (tmp_path / "table.md").read_text()
    assert "timeout after 0.5 s" in table and table.count("\n| ") == 1 + 3  # header + three rows


@pytest.mark.parametrize("name, tbs", [("NVIDIA H100 80GB HBM3", 3.35), ("NVIDIA H100 PCIe", 2.0),
                                       ("NVIDIA H100 NVL", 3.9), ("NVIDIA H200", 4.8), ("NVIDIA H200 NVL", 4.8),
                                       ("NVIDIA GeForce RTX 4090", None), ("H100", None)])
def test_bandwidth_by_exact_device_name(name, tbs):
    from tools.gpu_check import bandwidth_tbs

    assert bandwidth_tbs(name) == tbs  # datasheet TB/s; a PCIe card is not the SXM part

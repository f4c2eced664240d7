"""Asynchronous periodic saves (checkpoint.async_save=true), specified by comparison with
synchronous runs: the same losses and final weights, the same checkpoints, a crash with a save in
flight resumes from the previous checkpoint bit-identically, and a failed background write is
reported and handled like a failed synchronous one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.test_train_checkpoint_faults import assert_bitwise_equal_runs, assert_workers_exited, worker_errors
from tests.train_helpers import check, rows, run_train, tiny_assets, tiny_config

pytestmark = pytest.mark.slow

ONE_PROC = ["checkpoint.every=2", "checkpoint.keep=3"]
ASYNC, SYNC = "checkpoint.async_save=true", "checkpoint.async_save=false"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("async")
    assets = tiny_assets(tmp / "assets")
    return tmp, tiny_config(tmp / "tiny.yaml", assets, tmp / "cache")


@pytest.fixture(scope="module")
def straight(setup):
    tmp, cfg = setup
    out = tmp / "straight_sync"
    check(run_train(cfg, out, overrides=[*ONE_PROC, SYNC]))
    return out


def blocked(out: Path) -> dict[int, float]:
    """step -> checkpoint_blocked_s, for the metrics rows that carry it."""
    found = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "checkpoint_blocked_s" in r:
            found[r["step"]] = r["checkpoint_blocked_s"]
    return found


def load_checkpoint(path: Path, scratch: Path) -> dict:
    """Every tensor of a DCP checkpoint, flattened (no process group needed), and its train state."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(path, scratch)
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, x) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(x, torch.Tensor):
            flat[prefix] = x

    walk("", torch.load(scratch, weights_only=False))
    return {"tensors": flat, "train_state": torch.load(path / "train_state_rank0.pt", weights_only=True)}


def names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_async_saves_change_nothing_computed_and_write_the_same_checkpoints(setup, straight):
    from model.manifest import read_manifest
    from train.verify import checkpoint_problem

    tmp, cfg = setup
    out = tmp / "async"
    proc = check(run_train(cfg, out, overrides=[*ONE_PROC, ASYNC]))
    assert_bitwise_equal_runs(out, straight)
    assert names(out) == names(straight) == ["step_4", "step_6", "step_8"]  # keep=3 counted committed saves
    for name in names(out):
        assert checkpoint_problem(out / "checkpoints" / name, checksums=True, local=True) is None
        mine, theirs = (read_manifest(o / "checkpoints" / name)["files"] for o in (out, straight))
        assert mine.keys() == theirs.keys()
        # The same model and optimizer tensors (staged before training changed them), the same
        # train state (its config differs: output_dir, async_save).
        a, b = (load_checkpoint(o / "checkpoints" / name, tmp / f"{name}_{o.name}.pt") for o in (out, straight))
        assert a["tensors"].keys() == b["tensors"].keys() and any(".exp_avg_sq" in k for k in a["tensors"])
        assert all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])
        assert a["train_state"]["loader"] == b["train_state"]["loader"] and a["train_state"]["step"] == b["train_state"]["step"]
        assert torch.equal(a["train_state"]["rng"]["torch"], b["train_state"]["rng"]["torch"])
    # Every row of a step that started a save says how long the loop was blocked, sync or async.
    for run in (out, straight):
        assert sorted(blocked(run)) == [2, 4, 6, 8] and all(v >= 0 for v in blocked(run).values())
    # The loop waited for a write in flight at most once per save, and said so.
    waits = [x for x in proc.stdout.splitlines() if re.match(r"checkpoint step_\d+: waited [\d.]+ s for step_\d+", x)]
    saved = [x for x in proc.stdout.splitlines() if x.startswith("saved checkpoint ")]
    assert len(saved) == 4 and len(waits) <= 3, proc.stdout


def test_sigkill_with_a_save_in_flight_resumes_from_the_previous_checkpoint_bitwise(setup, straight):
    """step_4's background write stalls after 1 KiB; the process is killed after step 5, with the
    write still in flight. Resume must take step_2 (itself written asynchronously)."""
    tmp, cfg = setup
    out = tmp / "killed_in_flight"
    proc = run_train(cfg, out, overrides=[*ONE_PROC, ASYNC], fault="stall_in_save@4,kill@5")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert names(out) == [".tmp_step_4", "step_2"]
    assert (out / "checkpoints" / ".tmp_step_4" / "__0_0.distcp").stat().st_size == 1024  # killed mid-write
    proc = check(run_train(cfg, out, overrides=[*ONE_PROC, ASYNC, "resume=auto"]))
    assert f"resumed from {out / 'checkpoints' / 'step_2'} at step 2" in proc.stdout
    assert_bitwise_equal_runs(out, straight)
    assert names(out) == ["step_4", "step_6", "step_8"]  # the partial directory was removed at start-up


def test_a_preemption_completes_the_save_in_flight_then_saves_synchronously(setup, straight):
    tmp, cfg = setup
    out = tmp / "term_async"
    proc = check(run_train(cfg, out, overrides=[*ONE_PROC, ASYNC], fault="term@5"))
    assert "stopped by signal at step 5 (SIGTERM)" in proc.stdout
    assert names(out) == ["step_2", "step_4", "step_5"]
    check(run_train(cfg, out, overrides=[*ONE_PROC, ASYNC, "resume=auto"]))
    assert_bitwise_equal_runs(out, straight)


def test_a_failed_background_write_can_warn_and_train_on(setup, straight):
    tmp, cfg = setup
    out = tmp / "enospc_async_warn"
    proc = check(run_train(cfg, out, overrides=[*ONE_PROC, ASYNC, "checkpoint.on_error=warn"], fault="enospc@4"))
    warned = [x for x in proc.stdout.splitlines() if x.startswith("warning: saving checkpoint step_4 failed")]
    assert len(warned) == 1 and "while writing the shards" in warned[0] and "No space left on device" in warned[0]
    assert "training goes on" in warned[0] and "removed the partial .tmp_step_4" in warned[0]
    assert names(out) == ["step_2", "step_6", "step_8"]
    assert_bitwise_equal_runs(out, straight)


TWO_PROC = ["batch.micro_batch_size=2", "checkpoint.every=2", "checkpoint.keep=3"]


def test_disk_full_on_one_rank_during_a_background_write_stops_both_ranks_and_resume_is_bitwise(setup):
    tmp, cfg = setup
    straight_w2 = tmp / "straight_w2_sync"
    check(run_train(cfg, straight_w2, nproc=2, overrides=[*TWO_PROC, SYNC]))
    out = tmp / "enospc_async_w2"
    ckpts = out / "checkpoints"
    proc = run_train(cfg, out, nproc=2, overrides=[*TWO_PROC, ASYNC], fault="enospc@4:r1", timeout=180)
    assert_workers_exited(proc, 1)
    lines = worker_errors(proc.stderr)
    for rank in (0, 1):
        mine = [x for x in lines if x.startswith(f"[rank {rank}] error: saving checkpoint step_4 failed")]
        assert len(mine) == 1, proc.stderr
        assert "rank 1: [Errno 28] No space left on device" in mine[0] and "__1_0.distcp" in mine[0]
        assert f"newest good checkpoint {ckpts / 'step_2'}" in mine[0] and "resume=auto" in mine[0]
    assert names(out) == ["step_2"]  # partial removed, step_2 untouched
    # The failure is noticed when every rank has finished the write: at step 4, 5 or 6 (step 6's
    # save waits for it), never later.
    assert 4 <= max(r["step"] for r in rows(out)) <= 6 and not (out / "final").exists()
    proc = check(run_train(cfg, out, nproc=2, overrides=[*TWO_PROC, ASYNC, "resume=auto"]))
    assert f"resumed from {ckpts / 'step_2'} at step 2" in proc.stdout
    assert_bitwise_equal_runs(out, straight_w2)

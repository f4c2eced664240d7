"""Checkpoints under the faults clusters produce: a corrupted newest checkpoint, a disk that fills
up on one rank during a save, SIGINT/SIGTERM half way through a step's micro-batches. Each
interrupted run is specified by comparison with an uninterrupted run of the same configuration:
from the checkpoint it resumed on, its metrics and final weights must be bit-identical."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.train_helpers import ROOT, check, final_weights, rows, run_train, tiny_assets, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    assets = tiny_assets(tmp / "assets")
    return tmp, tiny_config(tmp / "tiny.yaml", assets, tmp / "cache")


def assert_bitwise_equal_runs(a: Path, b: Path) -> None:
    assert rows(a) == rows(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def worker_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def assert_workers_exited(proc, code: int) -> None:
    """The workers exited with `code` and printed no traceback. torchrun SIGTERMs the remaining
    workers as soon as the first one exits non-zero, so a rank that had already printed its line
    may be reported as -15; anything else (a crash, a hang killed by the timeout) fails. torchrun
    adds its own summary, with a traceback of torchrun itself, which names no file of this project."""
    assert proc.returncode != 0
    codes = re.findall(r"exitcode\s+: (-?\d+) ", proc.stderr)
    assert len(codes) == 2 and str(code) in codes and set(codes) <= {str(code), "-15"}, proc.stderr
    # torchrun's own frames live in the venv, which CI keeps inside the checkout: those do not count.
    ours = [x for x in proc.stderr.splitlines() if f'File "{ROOT}/' in x and f'File "{ROOT}/.venv/' not in x]
    assert not ours, proc.stderr


# ---------------------------------------------------------------- corrupt checkpoints
ONE_PROC = ["checkpoint.every=2", "checkpoint.keep=3"]


@pytest.fixture(scope="module")
def straight(setup):
    tmp, cfg = setup
    out = tmp / "straight"
    check(run_train(cfg, out, overrides=ONE_PROC))
    return out


@pytest.fixture(scope="module")
def three_checkpoints(setup):
    """Killed after step 7: step_2, step_4, step_6 on disk."""
    tmp, cfg = setup
    out = tmp / "killed"
    assert run_train(cfg, out, overrides=ONE_PROC, fault="kill@7").returncode != 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_4", "step_6"]
    return out


def _shard(ckpt: Path) -> Path:
    return ckpt / "__0_0.distcp"  # the model + optimizer tensors: the largest file


def truncate(ckpt: Path) -> str:
    data = _shard(ckpt).read_bytes()
    _shard(ckpt).write_bytes(data[: len(data) // 2])
    return f"__0_0.distcp: {len(data) // 2} bytes, manifest.json says {len(data)}"


def flip_bytes(ckpt: Path) -> str:
    data = bytearray(_shard(ckpt).read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0x55
    _shard(ckpt).write_bytes(bytes(data))
    return "__0_0.distcp: SHA-256 differs"


def delete_manifest(ckpt: Path) -> str:
    (ckpt / "manifest.json").unlink()
    return "manifest.json: missing"


def delete_shard(ckpt: Path) -> str:
    _shard(ckpt).unlink()
    return "__0_0.distcp: missing"


@pytest.mark.parametrize("corrupt", [truncate, flip_bytes, delete_manifest, delete_shard])
def test_resume_auto_skips_a_corrupt_newest_checkpoint_and_matches_the_straight_run(
        setup, straight, three_checkpoints, corrupt):
    tmp, cfg = setup
    out = tmp / f"corrupt_{corrupt.__name__}"
    shutil.copytree(three_checkpoints, out)
    ckpts = out / "checkpoints"
    reason = corrupt(ckpts / "step_6")
    proc = check(run_train(cfg, out, overrides=[*ONE_PROC, "resume=auto"]))
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("resume: skipping")]
    assert len(skipped) == 1 and skipped[0].startswith("resume: skipping step_6: ") and reason in skipped[0]
    assert f"resumed from {ckpts / 'step_4'} at step 4" in proc.stdout
    assert_bitwise_equal_runs(out, straight)
    # The corrupt checkpoint is kept (set aside when step 6 was saved again); keep=3 counted only
    # verified ones: 4, 6 (new), 8 remain and the oldest verified one, step_2, went.
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_4", "step_6", "step_6.corrupt", "step_8"]


def test_resume_path_on_a_corrupt_checkpoint_is_one_line_and_exit_2_on_both_ranks(setup, three_checkpoints):
    """Two ranks share the hashing (rank 1 hashes __0_0.distcp here); both must refuse."""
    tmp, cfg = setup
    out = tmp / "corrupt_path"
    shutil.copytree(three_checkpoints, out)
    flip_bytes(out / "checkpoints" / "step_4")
    proc = run_train(cfg, out, nproc=2, overrides=["batch.micro_batch_size=2",
                                                   f"resume={out / 'checkpoints' / 'step_4'}"])
    assert_workers_exited(proc, 2)
    lines = worker_errors(proc.stderr)
    for rank in (0, 1):
        mine = [x for x in lines if x.startswith(f"[rank {rank}] error: resume: ")]
        assert len(mine) == 1 and "step_4/__0_0.distcp: SHA-256 differs" in mine[0], proc.stderr


def test_a_failed_periodic_save_can_warn_and_train_on(setup, straight):
    tmp, cfg = setup
    out = tmp / "enospc_warn"
    proc = check(run_train(cfg, out, overrides=[*ONE_PROC, "checkpoint.on_error=warn"], fault="enospc@4"))
    warned = [x for x in proc.stdout.splitlines() if x.startswith("warning: saving checkpoint step_4 failed")]
    assert len(warned) == 1 and "No space left on device" in warned[0] and "training goes on" in warned[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_6", "step_8"]
    assert_bitwise_equal_runs(out, straight)  # the failed save changed nothing that was computed


def test_an_export_the_filesystem_refuses_is_one_line_and_leaves_no_partial_final(setup, straight):
    """A real write failure, no root needed: RLIMIT_FSIZE (inherited by the child) makes the kernel
    refuse any file over 600 KB with EFBIG; the fp32 weights (~880 KB) are the first such file."""
    import resource

    tmp, cfg = setup
    out = tmp / "export_refused"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, hard))
    try:
        proc = run_train(cfg, out, overrides=["checkpoint.every=0", "max_steps=2"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: exporting {out / 'final'} failed"), lines
    assert "File too large" in lines[0] and "no resumable checkpoint" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.jsonl"]  # no final/, no temp dir


# ---------------------------------------------------------------- full disk on one of two ranks
TWO_PROC = ["batch.micro_batch_size=2", "checkpoint.every=2", "checkpoint.keep=3"]


@pytest.fixture(scope="module")
def straight_w2(setup):
    tmp, cfg = setup
    out = tmp / "straight_w2"
    check(run_train(cfg, out, nproc=2, overrides=TWO_PROC))
    return out


def test_disk_full_on_one_rank_stops_both_ranks_with_one_line_and_resume_is_bitwise(setup, straight_w2):
    tmp, cfg = setup
    out = tmp / "enospc_w2"
    ckpts = out / "checkpoints"
    proc = run_train(cfg, out, nproc=2, overrides=TWO_PROC, fault="enospc@4:r1", timeout=180)
    assert_workers_exited(proc, 1)
    lines = worker_errors(proc.stderr)
    for rank in (0, 1):
        mine = [x for x in lines if x.startswith(f"[rank {rank}] error: saving checkpoint step_4 failed")]
        assert len(mine) == 1, proc.stderr
        assert "rank 1: [Errno 28] No space left on device" in mine[0] and "__1_0.distcp" in mine[0]
        assert f"newest good checkpoint {ckpts / 'step_2'}" in mine[0] and "resume=auto" in mine[0]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2"]  # partial removed, step_2 untouched
    assert max(r["step"] for r in rows(out)) == 4 and not (out / "final").exists()
    proc = check(run_train(cfg, out, nproc=2, overrides=[*TWO_PROC, "resume=auto"]))
    assert f"resumed from {ckpts / 'step_2'} at step 2" in proc.stdout
    assert_bitwise_equal_runs(out, straight_w2)


# ---------------------------------------------------------------- signals mid-accumulation
def test_sigint_mid_accumulation_saves_the_step_before_and_resumes_bitwise(setup):
    tmp, cfg = setup
    over = ["batch.micro_batch_size=2", "batch.grad_accum=2", "checkpoint.every=0"]
    straight_accum = tmp / "straight_accum"
    check(run_train(cfg, straight_accum, overrides=over))
    out = tmp / "sigint_mid"
    proc = check(run_train(cfg, out, overrides=over, fault="int_mid@3"))
    assert "stopped by signal (SIGINT) in step 3, after micro-batch 1 of 2; saved step 2" in proc.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2"]
    assert max(r["step"] for r in rows(out)) == 2 and not (out / "final").exists()
    check(run_train(cfg, out, overrides=[*over, "resume=auto"]))
    assert_bitwise_equal_runs(out, straight_accum)


def test_sigterm_on_one_rank_mid_accumulation_stops_both_and_resumes_bitwise(setup):
    tmp, cfg = setup
    over = ["batch.micro_batch_size=1", "batch.grad_accum=2", "checkpoint.every=0"]
    straight_accum = tmp / "straight_accum_w2"
    check(run_train(cfg, straight_accum, nproc=2, overrides=over))
    out = tmp / "sigterm_mid_w2"
    proc = check(run_train(cfg, out, nproc=2, overrides=over, fault="term_mid@5:r1"))
    assert "stopped by signal (SIGTERM) in step 5, after micro-batch 1 of 2; saved step 4" in proc.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4"]
    check(run_train(cfg, out, nproc=2, overrides=[*over, "resume=auto"]))
    assert_bitwise_equal_runs(out, straight_accum)

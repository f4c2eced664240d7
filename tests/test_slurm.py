"""tools/slurm/train.sbatch under a real Slurm (one host, tools/slurm/local_cluster.sh): a job
trains to completion; a job signalled as before its time limit, and one preempted by a
higher-priority job, each save, requeue, resume and end with the same rows and bit-identical
weights as the uninterrupted job. Skipped, with the reason, where
Slurm cannot run here (not root, packages not installed: `.ci/run` installs them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.train_helpers import ROOT, final_weights, free_port, rows, tiny_assets, tiny_config, train_env

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "tools" / "slurm" / "local_cluster.sh"
# 100 steps (~15 s of training here): room to deliver the signal while the job is still training.
STEPS = 100
# This machine has no GPU and 2 cores: one node, 2 CPU workers (the script's defaults are 8 GPUs).
SBATCH_ARGS = ["--gpus-per-node=0", "--cpus-per-task=2"]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return f"Slurm: starting slurmd needs root (running as uid {os.geteuid()})"
    path = os.environ.get("PATH", "") + ":/usr/sbin"
    absent = [b for b in ("sbatch", "munged", "slurmctld", "slurmd") if not shutil.which(b, path=path)]
    if absent:
        return f"Slurm: {', '.join(absent)} not installed (apt-get install -y slurm-wlm munge)"
    return None


def _two_free_ports() -> int:
    """slurmctld's port p and slurmd's p + 1, both free."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-host cluster for this module; stopped (jobs and daemons) at the end."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    env = {**train_env(), "SLURM_LOCAL_DIR": str(state / "cluster"), "SLURM_LOCAL_PORT": str(_two_free_ports()),
           "PATH": os.environ.get("PATH", "") + ":/usr/sbin"}
    env["SLURM_CONF"] = str(state / "cluster" / "slurm.conf")
    try:
        proc = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:  # e.g. a container without the munge user or a resolvable hostname
            said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
            pytest.skip(f"Slurm could not be started here: tools/slurm/local_cluster.sh start exited "
                        f"{proc.returncode}: {said[-1] if said else 'no output'}")
        assets = tiny_assets(state / "assets")
        yield state, env, tiny_config(state / "tiny.yaml", assets, state / "cache")
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)


def submit(slurm, out: Path) -> tuple[str, Path]:
    """The job, as the script's header says to submit it, plus this machine's sizes."""
    state, env, cfg = slurm
    log = out.parent / f"{out.name}.slurm.out"
    cmd = ["sbatch", "--parsable", *SBATCH_ARGS, f"--output={log}",
           f"--export=ALL,GPUS_PER_NODE=2,RDZV_PORT={free_port()},OMP_NUM_THREADS=1",
           "tools/slurm/train.sbatch", str(cfg), f"output_dir={out}", "batch.micro_batch_size=2",
           f"max_steps={STEPS}", "checkpoint.every=0", "log.every=10"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0], log


def job(slurm, job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge, 300 s)."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=slurm[1], capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))


def wait_done(slurm, job_id: str, log: Path, timeout: float = 150) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job(slurm, job_id)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        if info.get("Reason") in ("PartitionConfig", "ReqNodeNotAvail", "BadConstraints"):
            break  # it would pend forever
        time.sleep(1)
    info = job(slurm, job_id)
    subprocess.run(["scancel", "--full", job_id], env=slurm[1])
    daemon_log = Path(slurm[1]["SLURM_LOCAL_DIR"]) / "slurmd.log"
    raise AssertionError(f"job {job_id} still {info.get('JobState')} ({info.get('Reason')}) after {timeout} s\n"
                         + (log.read_text()[-3000:] if log.exists() else f"no {log}\n")
                         + daemon_log.read_text()[-2000:])


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip() and "loss" in json.loads(line))


@pytest.fixture(scope="module")
def uninterrupted(slurm):
    out = slurm[0] / "uninterrupted"
    job_id, log = submit(slurm, out)
    info = wait_done(slurm, job_id, log)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", log.read_text()[-3000:]
    return out, log


def test_sbatch_trains_the_tiny_config_to_completion(uninterrupted):
    out, log = uninterrupted
    r = rows(out)
    assert [x["step"] for x in r] == list(range(1, STEPS + 1))
    assert sum(x["loss"] for x in r[-10:]) < sum(x["loss"] for x in r[:10]) - 1.0  # it learned
    assert (out / "final" / "model.safetensors").is_file()
    assert f"exported {out / 'final'}" in log.read_text()


def run_preempted(slurm, uninterrupted, name: str, preempt) -> str:
    """Submit, let it train 3 steps, `preempt(job_id)`; the job must save, be requeued once, resume
    from that checkpoint and end like the uninterrupted job. Returns the job's output."""
    out = slurm[0] / name
    job_id, log = submit(slurm, out)
    deadline = time.monotonic() + 180
    while steps_logged(out) < 3:  # training, not starting up: the signal must find a step to stop at
        assert time.monotonic() < deadline and job(slurm, job_id).get("JobState") in ("PENDING", "RUNNING"), \
            log.read_text()[-3000:] if log.exists() else "no output"
        time.sleep(0.2)
    preempt(job_id)
    info = wait_done(slurm, job_id, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert info["Restarts"] == "1", text[-3000:]  # requeued once
    stopped = re.search(r"stopped by signal at step (\d+) \(SIGTERM\)", text)
    assert stopped and int(stopped.group(1)) < STEPS, text[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{stopped.group(1)}'} at step {stopped.group(1)}" in text
    assert rows(out) == rows(uninterrupted[0])
    wa, wb = final_weights(out), final_weights(uninterrupted[0])
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return text


def test_sigterm_to_the_batch_shell_saves_requeues_and_resumes_to_identical_weights(slurm, uninterrupted):
    """`scancel --signal=TERM -b` is what Slurm's `--signal=B:TERM@300` does before the time limit:
    the batch shell's trap passes SIGTERM to torchrun, the workers save, the trap requeues."""
    text = run_preempted(slurm, uninterrupted, "signalled", lambda job_id: subprocess.run(
        ["scancel", "--signal=TERM", "-b", job_id], env=slurm[1], check=True))
    assert "saved; requeueing job" in text


def test_preemption_by_a_higher_priority_job_saves_requeues_and_resumes_to_identical_weights(slurm, uninterrupted):
    """A job in the "urgent" partition needs both CPUs: Slurm preempts (PreemptMode=REQUEUE,
    GraceTime=60) by sending SIGTERM to the training step; the workers save, the script sees the
    job's PreemptTime and requeues; the urgent job runs, then the training resumes."""
    urgent = []

    def preempt(job_id):
        proc = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-c", "2", f"--output={slurm[0]}/urgent.out",
                               "--wrap", "sleep 1"], env=slurm[1], capture_output=True, text=True, check=True)
        urgent.append(proc.stdout.strip().split(";")[0])

    text = run_preempted(slurm, uninterrupted, "preempted", preempt)
    assert "preempted: requeueing job" in text
    assert job(slurm, urgent[0]).get("JobState") == "COMPLETED"

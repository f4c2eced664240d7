"""Elastic restarts under torchrun: a worker, then a whole node, dies by SIGKILL mid-run; torchrun
(`--max-restarts=1`) starts the workers again, they resume from the newest verified checkpoint
(resume=auto is on from the first start, as a cluster job's command line has it), and the run
ends exactly where an uninterrupted run ends: the same rows, bit-identical final weights."""

from __future__ import annotations

import time

import pytest
import torch

from tests.train_helpers import (
    agent_cmd,
    check,
    final_weights,
    free_port,
    rows,
    run_train,
    start_agent,
    stop_agents,
    tiny_assets,
    tiny_config,
    train_env,
    wait_agents,
)

pytestmark = pytest.mark.slow

# 2 workers x micro-batch 2 = the global batch 4; checkpoints at steps 4 and 8 (tiny_config).
OVERRIDES = ["batch.micro_batch_size=2", "resume=auto"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("elastic")
    assets = tiny_assets(tmp / "assets")
    return tmp, tiny_config(tmp / "tiny.yaml", assets, tmp / "cache")


@pytest.fixture(scope="module")
def uninterrupted(setup):
    tmp, cfg = setup
    out = tmp / "uninterrupted_w2"
    check(run_train(cfg, out, nproc=2, overrides=["batch.micro_batch_size=2"]))
    return out


def elastic_env(tmp, fault: str) -> dict[str, str]:
    env = train_env(fault)
    env["TRAIN_FAULT_ONCE"] = str(tmp / f"fired_{fault}")  # the restarted workers pass step 5 unharmed
    # torch >= 2.5 shares the rendezvous TCPStore with the workers by default, and keys of the first
    # attempt (rank 0's gloo/NCCL address) survive into the restart: the restarted workers then
    # connect to a dead rank 0 and fail (pytorch/pytorch#135712). A store per attempt avoids it.
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return env


def assert_same_as(out, reference) -> None:
    assert rows(out) == rows(reference)  # exact: every step, loss and grad norm
    wa, wb = final_weights(out), final_weights(reference)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_sigkilled_worker_is_restarted_and_resumes_to_identical_weights(setup, uninterrupted):
    """Rank 1 is SIGKILLed after step 5 (checkpoint at 4); rank 0 fails in its next collective;
    torchrun restarts both, which resume at step 4 and redo step 5."""
    tmp, cfg = setup
    out, log = tmp / "worker_killed", tmp / "worker_killed.log"
    agent = start_agent(agent_cmd(cfg, out, free_port(), nnodes=1, nproc=2, overrides=OVERRIDES, max_restarts=1),
                        log, elastic_env(tmp, "kill@5:r1"))
    assert wait_agents([agent], [log]) == [0], log.read_text()[-3000:]
    text = log.read_text()
    assert "failed (exitcode: -9) local_rank: 1" in text  # the kill happened ...
    assert f"resumed from {out / 'checkpoints' / 'step_4'} at step 4" in text  # ... and the restart resumed
    assert "shared rendezvous store" not in text  # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 was seen
    assert_same_as(out, uninterrupted)


def test_a_killed_node_rejoins_and_the_run_resumes_to_identical_weights(setup, uninterrupted):
    """Two agents ("nodes") of one worker each. After step 5, node 1 dies whole: its agent's process
    group and its worker, SIGKILL (fault kill_node). Node 0's worker fails in its next collective;
    its agent (--max-restarts=1) waits in the rendezvous for a second node; node 1's agent is
    started again with the same command, joins, and both workers resume from step 4."""
    tmp, cfg = setup
    out = tmp / "node_killed"
    env, logs = elastic_env(tmp, "kill_node@5:r1"), [tmp / "node0.log", tmp / "node1.log", tmp / "node1_again.log"]
    cmd = agent_cmd(cfg, out, free_port(), nnodes=2, nproc=1, overrides=OVERRIDES, max_restarts=1)
    agents = [start_agent(cmd, logs[0], env)]
    try:
        time.sleep(1)  # node 0's agent hosts the rendezvous store (the head node, as on a cluster)
        agents.append(start_agent(cmd, logs[1], env))
        assert wait_agents(agents[1:], logs[1:2]) == [-9]  # the node died (its agent was SIGKILLed)
        agents.append(start_agent(cmd, logs[2], env))
        assert wait_agents([agents[0], agents[2]], [logs[0], logs[2]]) == [0, 0]
    finally:
        stop_agents(agents)  # after a failed assertion: no agent left waiting in the rendezvous
    assert f"resumed from {out / 'checkpoints' / 'step_4'} at step 4" in logs[0].read_text()
    assert_same_as(out, uninterrupted)


def test_restarts_with_the_shared_rendezvous_store_are_warned_about():
    """TORCHELASTIC_USE_AGENT_STORE / _MAX_RESTARTS as torchrun 2.13 sets them for its workers."""
    from train.distributed import restart_store_warning

    shared = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "1"}
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in restart_store_warning(shared)
    assert restart_store_warning({**shared, "TORCHELASTIC_USE_AGENT_STORE": "False"}) is None
    assert restart_store_warning({**shared, "TORCHELASTIC_MAX_RESTARTS": "0"}) is None
    assert restart_store_warning({}) is None  # not under torchrun

"""Two nodes on one machine: two torchrun agents started independently (as each node of a
cluster starts its own), meeting at a c10d rendezvous, 2 gloo workers each. Oracle: one agent
with the same 4 workers and the same global batch; the losses and weights must agree to the
criterion of the 1-vs-2-process tests (fp32 reduction-order noise, nothing more)."""

from __future__ import annotations

import time

import pytest

from tests.train_helpers import (
    agent_cmd,
    assert_same_training,
    check,
    free_port,
    run_train,
    start_agent,
    stop_agents,
    tiny_assets,
    tiny_config,
    train_env,
    wait_agents,
)

pytestmark = pytest.mark.slow

# Micro-batch 1 x 4 workers = the global batch 4 of the other training tests.
OVERRIDES = ["batch.micro_batch_size=1", "checkpoint.every=0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    assets = tiny_assets(tmp / "assets")
    return tmp, tiny_config(tmp / "tiny.yaml", assets, tmp / "cache")


@pytest.fixture(scope="module")
def one_agent(setup):
    """The reference: a single torchrun with 4 workers, FSDP over all 4."""
    tmp, cfg = setup
    out = tmp / "one_agent_w4"
    proc = check(run_train(cfg, out, nproc=4, overrides=OVERRIDES))
    assert "mesh (1, 4)" in proc.stdout
    return out


def two_nodes(cfg, out, overrides: list[str]) -> str:
    """Agent 0 ("the head node") and agent 1, 2 workers each; returns agent 0's output."""
    port, env = free_port(), train_env()
    logs = [out.parent / f"{out.name}.node{i}.log" for i in (0, 1)]
    agents = []
    try:
        for log in logs:
            agents.append(start_agent(agent_cmd(cfg, out, port, nnodes=2, nproc=2, overrides=overrides), log, env))
            time.sleep(1)  # the head's agent hosts the rendezvous store, as on a cluster
        codes = wait_agents(agents, logs)
    finally:
        stop_agents(agents)  # none left waiting in the rendezvous if the other failed to start
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    return logs[0].read_text()


@pytest.mark.parametrize("fsdp, mesh", [("hybrid", "(2, 2)"), ("full", "(1, 4)")])
def test_two_agents_train_like_one_agent_with_the_same_workers(setup, one_agent, fsdp, mesh):
    """hybrid: no parallel.shard_size, so the shard size is the workers per node (LOCAL_WORLD_SIZE
    = 2), not the world (4): parameters sharded inside each node, replicated across the two.
    full: sharded over all 4 workers across both nodes."""
    tmp, cfg = setup
    out = tmp / f"two_nodes_{fsdp}"
    log = two_nodes(cfg, out, [*OVERRIDES, f"parallel.fsdp={fsdp}"])
    assert f"world 4 (mesh {mesh})" in log
    assert_same_training(one_agent, out, rtol=1e-5, atol=1e-6, weight_atol=2e-5)

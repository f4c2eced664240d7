"""`api: batch` against the loopback server's /files and /batches: N records at batch prices,
the same parse/filter/dedup as synchronous answers, and a kill -9 while a batch is in progress
resumed by polling that batch, never by buying a second one for the same prompts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_generate_cli import env, wait_for
from test_generate_fakeserver import FakeOpenAI
from test_generate_pipeline import assert_valid_alpaca, load, run

REPO = Path(__file__).resolve().parents[1]
BATCH = ["api=batch", "batch.poll_interval_s=0.01", "batch.requests_per_round=3"]
PRICED = ["model=priced", "prices.priced.input_per_1m=2", "prices.priced.output_per_1m=8",
          "prices.priced.cached_input_per_1m=1"]


def no_prompt_bought_twice(server: FakeOpenAI) -> bool:
    shas = [s for prompts in server.batch_prompts.values() for s in prompts]
    return len(shas) == len(set(shas))


def test_batch_mode_makes_n_records_at_half_price(tmp_path):
    with FakeOpenAI() as server:
        result = run(server, tmp_path, "num_instructions=30", *BATCH, *PRICED)
        assert server.requests == 0  # nothing went through the synchronous endpoints
        assert len(server.batches) >= 2 and no_prompt_bought_twice(server)
    assert_valid_alpaca(load(tmp_path), 30)
    assert result.stop_reason == "done"
    assert result.rejected["rouge_similar"] >= 1 and result.rejected["blacklist"] >= 1  # same filters
    billed = server.billed
    assert result.usage["prompt_tokens"] == billed["prompt"] and result.usage["completion_tokens"] == billed["completion"]
    assert result.usage["cost_usd"] == pytest.approx(0.5 * (billed["prompt"] * 2 + billed["completion"] * 8) / 1e6,
                                                     abs=1e-6)
    journal = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    submits = [r for r in journal if r["type"] == "batch_submit"]
    assert [r["batch_id"] for r in submits] == list(server.batches)


def test_rounds_sample_the_kept_pool_like_synchronous_rounds(tmp_path):
    # machine_ratio=1: every example after the first round is a generated instruction, so a
    # round's prompts must show instructions kept in earlier rounds.
    with FakeOpenAI() as server:
        run(server, tmp_path, "num_instructions=40", "machine_ratio=1", *BATCH)
        files = [f["data"] for f in server.files.values() if f["purpose"] == "batch"]
    kept = {r["instruction"] for r in load(tmp_path)}
    later = "".join(files[1:])
    assert any(instruction in later for instruction in kept)


def test_a_refused_batch_is_adapted_once_and_resubmitted(tmp_path):
    with FakeOpenAI(kind="reasoning") as server:
        result = run(server, tmp_path, "num_instructions=20", *BATCH, "request.temperature=0.7")
        rejected = list(server.rejected)
    assert result.stop_reason == "done"
    assert_valid_alpaca(load(tmp_path), 20)
    # round 1 was refused twice (3 requests each, free), then never again
    assert rejected == ["max_tokens"] * 3 + ["temperature"] * 3
    assert [{k: v for k, v in a.items() if k != "why"} for a in result.usage["adaptations"]] == [{"token_param": "max_completion_tokens"},
                                                       {"drop": "temperature"}, {"budget": 6144}]
    assert result.rejected["reasoning_exhausted"] == 1  # the all-reasoning answer was moved on from


def cli(out: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "generate", "--config", "configs/self_instruct.yaml", f"base_url={base_url}",
            f"output_dir={out}", "num_instructions=40", *BATCH, *extra]


@pytest.mark.slow
def test_kill_9_during_a_batch_then_rerun_buys_no_second_batch(tmp_path):
    with FakeOpenAI() as server:
        ref = subprocess.run(cli(tmp_path / "ref", server.base_url, "progress=false"), cwd=REPO, env=env(),
                             capture_output=True, text=True, timeout=120)
        assert ref.returncode == 0, ref.stderr
        ref_batches = len(server.batches)
    with FakeOpenAI() as server:
        out = tmp_path / "run"
        server.batch_hold = True  # the first batch stays in progress until released
        journal = out / "journal.jsonl"
        proc = subprocess.Popen(cli(out, server.base_url), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: journal.exists() and journal.read_text().count('"batch_submit"') == 1
                     and server.batches["batch_0"]["_polls"] >= 3)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
        assert "batch in_progress" in stderr  # the progress bar shows the batch state
        assert len(server.batches) == 1
        server.batch_hold = False
        final = subprocess.run(cli(out, server.base_url, "progress=false"), cwd=REPO, env=env(),
                               capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
        assert len(server.batches) == ref_batches and no_prompt_bought_twice(server)
    assert load(out) == load(tmp_path / "ref")
    assert json.loads(final.stdout)["cost_usd"] == json.loads(ref.stdout)["cost_usd"]


@pytest.mark.slow
def test_a_batch_created_but_never_journaled_is_found_by_its_file_not_bought_again(tmp_path):
    with FakeOpenAI() as server:
        server.batch_hold = True
        journal = tmp_path / "journal.jsonl"
        proc = subprocess.Popen(cli(tmp_path, server.base_url, "progress=false"), cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: journal.exists() and '"batch_submit"' in journal.read_text())
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        # as if the kill had come between batches.create and the journal line naming the batch
        lines = journal.read_text().splitlines(keepends=True)
        journal.write_text("".join(line for line in lines if '"batch_submit"' not in line))
        server.batch_hold = False
        final = subprocess.run(cli(tmp_path, server.base_url, "progress=false"), cwd=REPO, env=env(),
                               capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
        assert no_prompt_bought_twice(server)
    assert_valid_alpaca(load(tmp_path), 40)

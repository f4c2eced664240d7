"""`python -m generate` against what 2026 endpoints really accept and return, on loopback:
a reasoning model and a llama.cpp-like local server with nothing but base_url, model and
num_instructions set; the adaptation learnt once and kept across kill -9; exit statuses a
script can trust (0 only when done, 1 stopped by a budget, 2 refused before any request)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_generate_cli import env, one_line_error, wait_for
from test_generate_fakeserver import FakeOpenAI
from test_generate_pipeline import assert_valid_alpaca

REPO = Path(__file__).resolve().parents[1]


def bare_run(cwd: Path, *args: str, **kw):
    """No --config: the defaults, run from a fresh directory (its generate/ links to the package
    so the default seed file resolves; outputs land in cwd/runs/self_instruct)."""
    cwd.mkdir(parents=True, exist_ok=True)
    if not (cwd / "generate").exists():
        (cwd / "generate").symlink_to(REPO / "generate")
    return subprocess.run([sys.executable, "-m", "generate", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=180, **kw)


def outputs(cwd: Path) -> tuple[list[dict], list[dict]]:
    out = cwd / "runs" / "self_instruct"
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    return json.loads((out / "alpaca_data.json").read_text()), journal


def test_reasoning_model_with_the_default_config_completes(tmp_path):
    with FakeOpenAI(kind="reasoning") as server:
        proc = bare_run(tmp_path, f"base_url={server.base_url}", "model=o4-mini", "num_instructions=20")
        assert proc.returncode == 0, proc.stderr
        assert server.rejected == ["max_tokens"]  # adapted after one refusal, never again
        assert all("max_completion_tokens" in b and "stop" not in b for b in server.bodies[1:])
    records, journal = outputs(tmp_path)
    assert_valid_alpaca(records, 20)
    summary = json.loads(proc.stdout)
    assert summary["stop_reason"] == "done" and summary["errors"]["reasoning_exhausted"] == 1
    assert summary["reasoning_tokens"] == server.billed["reasoning"] and summary["cached_tokens"] == server.billed["cached"]
    assert summary["completion_tokens"] == server.billed["completion"]  # the empty answer is paid for, and counted
    assert [r["change"] for r in journal if r["type"] == "adapt"] == [{"token_param": "max_completion_tokens"},
                                                                      {"budget": 6144}]


def test_local_llama_cpp_server_with_the_default_config_completes(tmp_path):
    with FakeOpenAI(kind="local", n_ctx=2048) as server:
        proc = bare_run(tmp_path, f"base_url={server.base_url}", "model=local-gguf", "num_instructions=20")
        assert proc.returncode == 0, proc.stderr
    records, journal = outputs(tmp_path)
    assert_valid_alpaca(records, 20)
    summary = json.loads(proc.stdout)
    assert summary["priced"] is False and summary["cost_usd"] == 0
    assert "unpriced" in summary["price_note"]  # said once, in the summary
    assert summary["tokens_estimated_responses"] == sum(r["type"] == "response" for r in journal) > 0
    budgets = [r["change"]["budget"] for r in journal if r["type"] == "adapt"]
    assert budgets and all(b <= 2048 for b in budgets)  # the context error was read, not fatal


@pytest.mark.slow
def test_adaptation_survives_kill_9_and_no_answer_is_paid_twice(tmp_path):
    args = ["model=o4-mini", "num_instructions=40", "concurrency=2", "progress=false"]
    with FakeOpenAI(kind="reasoning") as server:
        ref = bare_run(tmp_path / "ref", f"base_url={server.base_url}", *args)
        assert ref.returncode == 0, ref.stderr
    with FakeOpenAI(kind="reasoning") as server:
        server.hold_after = 4  # 4 answers (the first one all reasoning), then nothing comes back
        run_dir = tmp_path / "run"
        bare_run(run_dir, "--help")  # creates the directory and its generate/ link
        journal = run_dir / "runs" / "self_instruct" / "journal.jsonl"
        proc = subprocess.Popen([sys.executable, "-m", "generate", f"base_url={server.base_url}", *args],
                                cwd=run_dir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def all_answers_journaled() -> bool:
            if server.served < 4 or not journal.exists():
                return False
            return sum('"type": "response"' in line for line in journal.read_text().splitlines()) == len(server.answered)

        try:
            wait_for(all_answers_journaled)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        server.hold_after = None
        server.released.set()
        final = bare_run(run_dir, f"base_url={server.base_url}", *args)
        assert final.returncode == 0, final.stderr
        assert server.rejected == ["max_tokens"]  # the resumed run started adapted
        assert len(server.answered) == len(set(server.answered))  # no prompt answered twice
    assert outputs(run_dir)[0] == outputs(tmp_path / "ref")[0]


def test_cost_cap_stops_a_priced_model_with_exit_1(tmp_path):
    with FakeOpenAI() as server:
        proc = subprocess.run([sys.executable, "-m", "generate", "--config", "configs/self_instruct.yaml",
                               f"base_url={server.base_url}", f"output_dir={tmp_path}", "num_instructions=1000",
                               "model=priced", "prices.priced.input_per_1m=1000", "max_cost_usd=0.5",
                               "concurrency=2", "progress=false"], cwd=REPO, env=env(), capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "max_cost_usd reached" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["stop_reason"].startswith("max_cost_usd reached") and summary["cost_usd"] >= 0.5
    assert len(json.loads((tmp_path / "alpaca_data.json").read_text())) == summary["kept"] > 0


def test_unpriced_model_on_a_paid_endpoint_is_refused_before_any_request(tmp_path):
    with FakeOpenAI() as server:
        proc = subprocess.run([sys.executable, "-m", "generate", "--config", "configs/self_instruct.yaml",
                               f"base_url={server.base_url}", "paid=true", "model=brand-new-model",
                               f"output_dir={tmp_path}"], cwd=REPO, env=env(), capture_output=True, text=True,
                              timeout=120)
        assert server.requests == 0
    line = one_line_error(proc)
    assert "brand-new-model" in line and "prices" in line and "max_cost_usd=null" in line


def test_request_budget_stop_is_exit_1_and_a_422_is_exit_2(tmp_path):
    with FakeOpenAI() as server:
        base = [sys.executable, "-m", "generate", "--config", "configs/self_instruct.yaml",
                f"base_url={server.base_url}", "progress=false", "concurrency=1"]
        proc = subprocess.run([*base, f"output_dir={tmp_path / 'a'}", "max_requests=1"], cwd=REPO, env=env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and json.loads(proc.stdout)["stop_reason"].startswith("max_requests")
        server.script = ["422"]
        before = server.requests
        proc = subprocess.run([*base, f"output_dir={tmp_path / 'b'}"], cwd=REPO, env=env(),
                              capture_output=True, text=True, timeout=120)
        assert server.requests == before + 1  # not retried
    assert "HTTP 422" in one_line_error(proc)

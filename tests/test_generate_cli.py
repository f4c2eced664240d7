"""`python -m generate` as a user runs it: one-line errors with exit status 2, the API key kept
out of every file and log, and kill -9 mid-run then a restart giving exactly the output of an
uninterrupted run against the same deterministic server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_generate_fakeserver import FakeOpenAI

REPO = Path(__file__).resolve().parents[1]
FAST = ["retry.backoff_base_s=0.001", "retry.backoff_max_s=0.01", "progress=false"]


def env(**extra: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    e["PYTHONPATH"] = str(REPO)
    e.update(extra)
    return e


def generate(*args: str, environ: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "generate", *args], cwd=REPO, env=environ or env(),
                          capture_output=True, text=True, timeout=120, **kw)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_no_api_key_and_no_base_url_says_how_to_set_them(tmp_path):
    line = one_line_error(generate("--config", "configs/self_instruct.yaml", f"output_dir={tmp_path}"))
    assert "OPENAI_API_KEY" in line and "base_url" in line
    assert not (tmp_path / "journal.jsonl").exists()


def test_unknown_config_key_names_the_closest_valid_key():
    line = one_line_error(generate("--config", "configs/self_instruct.yaml", "max_cost=3"))
    assert "configs/self_instruct.yaml" in line and "'max_cost'" in line and "'max_cost_usd'" in line
    line = one_line_error(generate("--config", "configs/self_instruct.yaml", "retry.max_retry=3"))
    assert "'retry.max_retries'" in line


def test_unknown_key_in_the_yaml_file_names_the_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("num_instruction: 5\n")
    line = one_line_error(generate("--config", str(cfg)))
    assert str(cfg) in line and "'num_instructions'" in line


def test_seed_record_missing_a_field_names_file_record_and_field(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}]}\n'
                     '{"instruction": "Say bye.", "instances": [{"input": ""}]}\n')
    line = one_line_error(generate("--config", "configs/self_instruct.yaml", f"seed_tasks={seeds}",
                                   "base_url=http://127.0.0.1:9/v1", f"output_dir={tmp_path / 'out'}"))
    assert str(seeds) in line and "line 2" in line and "'output'" in line


def test_malformed_seed_json_is_one_line(tmp_path):
    seeds = tmp_path / "seeds.json"
    seeds.write_text('[{"instruction": "x", ')
    line = one_line_error(generate("--config", "configs/self_instruct.yaml", f"seed_tasks={seeds}",
                                   "base_url=http://127.0.0.1:9/v1"))
    assert str(seeds) in line and "malformed JSON" in line


def test_api_key_is_used_but_never_written_or_logged(tmp_path):
    secret = "sk-test-SECRET-0123456789"
    with FakeOpenAI() as server:
        proc = generate("--config", "configs/self_instruct.yaml", f"base_url={server.base_url}",
                        f"output_dir={tmp_path}", "num_instructions=10", *FAST,
                        environ=env(OPENAI_API_KEY=secret))
        assert server.seen_auth and all(a == f"Bearer {secret}" for a in server.seen_auth)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kept"] == 10
    assert secret not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        assert secret not in path.read_text(encoding="utf-8"), path


def _closed_port() -> int:
    """A loopback port nothing listens on: bound, read, closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_stops_within_a_minute_naming_the_url(tmp_path):
    """The shipped retry settings (no FAST): each refused connection is a line on stderr as it
    happens, then one error line with the URL and the network error, exit 1, well within a minute."""
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    secret = "sk-never-print-me-0123456789"
    start = time.monotonic()
    proc = generate("--config", "configs/self_instruct.yaml", f"base_url={url}", "model=local",
                    "num_instructions=5", f"output_dir={tmp_path}", "progress=false",
                    environ=env(OPENAI_API_KEY=secret))
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert elapsed < 60
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and secret not in proc.stdout + proc.stderr
    # configs/self_instruct.yaml: max_connection_failures 4 = 3 retried attempts, then the stop
    assert len(lines) == 4
    for line in lines[:-1]:
        assert line.startswith(f"connection error: {url}: ConnectError: ") and "Connection refused" in line
    assert lines[-1].startswith(f"error: cannot connect to {url} (ConnectError: ") and "Connection refused" in lines[-1]
    assert "budget" not in lines[-1]
    assert json.loads(proc.stdout)["kept"] == 0


def test_dead_server_exits_1_with_kept_work_saved(tmp_path):
    with FakeOpenAI() as server:
        server.die_after = 3  # round 1 (2 requests) answered, then one answer in round 2
        proc = generate("--config", "configs/self_instruct.yaml", f"base_url={server.base_url}",
                        f"output_dir={tmp_path}", "num_instructions=50", "retry.max_retries=1",
                        "concurrency=2", *FAST)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "stopped early" in proc.stderr
    data = json.loads((tmp_path / "alpaca_data.json").read_text())
    assert len(data) > 0  # round 1's instructions
    journal = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "response" for r in journal) == 3  # every paid answer is on disk


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_mid_run_then_restart_equals_uninterrupted_run(tmp_path):
    args = ["--config", "configs/self_instruct.yaml", "num_instructions=60", "concurrency=2", *FAST]
    with FakeOpenAI(delay_s=0.05) as server:
        ref = generate(*args, f"base_url={server.base_url}", f"output_dir={tmp_path / 'ref'}")
        assert ref.returncode == 0, ref.stderr
        out = tmp_path / "run"
        run_args = [sys.executable, "-m", "generate", *args, f"base_url={server.base_url}", f"output_dir={out}"]
        kills = 0
        for kill_after in (2, 5, 9):  # three crashes at different points of the same run
            start = server.served
            proc = subprocess.Popen(run_args, cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                target = max(kill_after, start + 1)
                wait_for(lambda p=proc, n=target: server.served >= n or p.poll() is not None)
            finally:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    kills += 1
                proc.wait()
        assert kills >= 2  # the run really was killed mid-way
        final = generate(*args, f"base_url={server.base_url}", f"output_dir={out}")
    assert final.returncode == 0, final.stderr
    assert json.loads((out / "alpaca_data.json").read_text()) == json.loads((tmp_path / "ref" / "alpaca_data.json").read_text())
    ref_meta = json.loads((tmp_path / "ref" / "metadata.json").read_text())
    run_meta = json.loads((out / "metadata.json").read_text())
    assert run_meta["records"] == ref_meta["records"]
    assert run_meta["rejected"] == ref_meta["rejected"]

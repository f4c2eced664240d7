"""`python -m tools.eval judge` against a judge on a real HTTP server on loopback (tests/fake_judge.py)
whose biases are known: randomised order undoes a position bias, the length-controlled rate
undoes a length bias, unreadable verdicts are counted and never guessed, a kill -9 mid-run
then a rerun pays for no judgment twice and reports what an uninterrupted run reports, and bad
input stops with one line."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fake_judge import LENGTH_SCALE, FakeJudge

from evaluation.judge import main

REPO = Path(__file__).resolve().parents[1]
FAST = ["retry.backoff_base_s=0.001", "retry.backoff_max_s=0.01", "progress=false", "model=judge-m"]
PRICED = ["prices.judge-m.input_per_1m=1.0", "prices.judge-m.output_per_1m=2.0"]


def write_pairs(tmp: Path, model: list[str], reference: list[str], instructions: list[str] | None = None):
    instructions = instructions or [f"Task number {i}: describe item {i}." for i in range(len(model))]
    ref = tmp / "reference.json"
    ref.write_text(json.dumps([{"instruction": s, "input": "", "output": o, "generator": "ref"}
                               for s, o in zip(instructions, reference, strict=True)]))
    resp = tmp / "responses.jsonl"
    resp.write_text("".join(json.dumps({"instruction": s, "input": "", "response": o}) + "\n"
                            for s, o in zip(instructions, model, strict=True)))
    return str(resp), str(ref)


def text_of(length: int, word: str) -> str:
    return (word + " ") * (length // (len(word) + 1)) + "x" * (length % (len(word) + 1))


def judge(server, resp, ref, out, *extra) -> tuple[int, dict | None]:
    rc = main(["--responses", resp, "--reference", ref, f"base_url={server.base_url}",
               f"output_dir={out}", *FAST, *extra])
    report = out / "report.json"
    return rc, json.loads(report.read_text()) if report.exists() else None


def test_randomised_order_undoes_a_judge_that_always_picks_the_first(tmp_path):
    n = 200
    resp, ref = write_pairs(tmp_path, [f"model answer {i}" for i in range(n)], [f"reference {i}" for i in range(n)])
    with FakeJudge("first") as server:
        rc, report = judge(server, resp, ref, tmp_path / "out")
    assert rc == 0 and report["n"] == n and report["n_unparseable"] == 0
    # Binomial: the model wins exactly when shown first, a fair coin: SE = sqrt(0.25 / n) = 0.035
    assert abs(report["win_rate"] - 0.5) < 3 * math.sqrt(0.25 / n)
    # ...and the order is recomputable from the documented rule alone
    first = [random.Random(f"0:{i}").random() < 0.5 for i in range(n)]
    assert report["win_rate"] == round(sum(first) / n, 6)
    rows = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert [r["shown_first"] == "model" for r in rows] == first
    assert all(r["verdict"].endswith("**Output (a)**") for r in rows)
    assert [r["winner"] for r in rows] == ["model" if f else "reference" for f in first]


def test_length_control_undoes_a_judge_that_prefers_the_longer_output(tmp_path):
    """Equal quality, the model longer in most pairs: the judge prefers the longer output with
    probability sigmoid(d / 100 chars), so P(model wins | d = 0) = 0.5 is the truth. The bound is
    3 standard errors of that estimate, from the Fisher information of the true model on this
    design: SE(b) = sqrt(inv(X'WX)[0, 0]), W = p(1 - p), and dsigmoid/db = 1/4 at b = 0."""
    n = 300
    rng = random.Random(7)
    ref_len = [rng.randint(200, 600) for _ in range(n)]
    diff = [round(rng.gauss(150, 150)) for _ in range(n)]
    model_len = [max(20, r + d) for r, d in zip(ref_len, diff, strict=True)]
    diff = np.array(model_len) - np.array(ref_len)
    resp, ref = write_pairs(tmp_path, [text_of(m, "model") for m in model_len], [text_of(r, "ref") for r in ref_len])
    with FakeJudge("longer") as server:
        rc, report = judge(server, resp, ref, tmp_path / "out")
    assert rc == 0 and report["n"] == n
    x = diff / diff.std()
    p = 1 / (1 + np.exp(-diff / LENGTH_SCALE))
    design = np.column_stack([np.ones(n), x])
    se_b = math.sqrt(np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]))[0, 0])
    raw_se = math.sqrt(0.25 / n)
    assert report["win_rate"] > 0.5 + 5 * raw_se  # the raw rate is far off the truth
    assert abs(report["lc_win_rate"] - 0.5) < 3 * se_b / 4, (report["lc_win_rate"], se_b)
    assert report["length_control"]["slope"] > 0


def test_unreadable_verdicts_are_counted_and_left_out(tmp_path):
    n = 40
    instructions = [f"Task {i}: explain item {i}." + (" #garble" if i % 5 == 0 else "") for i in range(n)]
    resp, ref = write_pairs(tmp_path, [f"m{i}" for i in range(n)], [f"r{i}" for i in range(n)], instructions)
    with FakeJudge("first") as server:
        rc, report = judge(server, resp, ref, tmp_path / "out")
    assert rc == 0 and report["n_unparseable"] == 8 and report["n"] == 32
    kept = [i for i in range(n) if i % 5]
    first = [random.Random(f"0:{i}").random() < 0.5 for i in kept]
    assert report["win_rate"] == round(sum(first) / len(kept), 6)
    rows = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    garbled = [r for r in rows if "#garble" in r["instruction"]]
    assert len(garbled) == 8 and all(r["winner"] is None and r["preference"] is None for r in garbled)
    assert all(r["verdict"] for r in garbled)  # the raw answer is kept for the reader


def test_identical_outputs_are_a_tie_without_asking(tmp_path):
    resp, ref = write_pairs(tmp_path, ["same", "m1", "m2"], ["same", "r1", "r2"])
    with FakeJudge("first") as server:
        rc, report = judge(server, resp, ref, tmp_path / "out")
        assert sum(server.judged.values()) == 2
    assert rc == 0 and report["n_ties"] == 1 and report["n"] == 3


def test_unmatched_items_are_counted_in_one_line(tmp_path, capsys):
    resp, ref = write_pairs(tmp_path, ["m0", "m1", "m2"], ["r0", "r1", "r2"])
    lines = Path(resp).read_text().splitlines()
    Path(resp).write_text("\n".join(lines[:2] + [json.dumps({"instruction": "other", "response": "x"})]) + "\n")
    with FakeJudge("first") as server:
        rc, report = judge(server, resp, ref, tmp_path / "out")
    assert rc == 0 and report["n"] == 2 and report["n_unmatched"] == 2
    assert report["unmatched"] == {"responses_without_reference": 1, "references_without_response": 1}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: unmatched: 1 responses have no reference, 1 references have no response; 2 pairs are judged"]


def test_batch_api_judges_each_pair_once_at_half_price(tmp_path):
    n = 12
    resp, ref = write_pairs(tmp_path, [f"model {i}" for i in range(n)], [f"ref {i}" for i in range(n)])
    with FakeJudge("first") as chat_server:
        _, chat = judge(chat_server, resp, ref, tmp_path / "chat", *PRICED, "paid=true")
    with FakeJudge("first") as server:
        rc, report = judge(server, resp, ref, tmp_path / "batch", *PRICED, "paid=true", "api=batch",
                           "batch.poll_interval_s=0.01")
        assert len(server.batches) == 1 and sorted(server.judged.values()) == [1] * n
    assert rc == 0 and report["win_rate"] == chat["win_rate"] and report["n"] == n
    assert report["cost_usd"] == round(chat["cost_usd"] / 2, 6) > 0


def test_cost_cap_stops_between_rounds_and_keeps_the_work(tmp_path, capsys):
    n = 20
    resp, ref = write_pairs(tmp_path, [f"model {i}" for i in range(n)], [f"ref {i}" for i in range(n)])
    with FakeJudge("first") as server:
        rc, report = judge(server, resp, ref, tmp_path / "out", *PRICED, "paid=true", "concurrency=4",
                           "max_cost_usd=0.0000001")
        assert sum(server.judged.values()) == 4  # one round, then the cap
    assert rc == 1 and report["complete"] is False and report["n"] == 4 and report["n_pending"] == 16
    assert report["stop_reason"].startswith("max_cost_usd reached")
    assert capsys.readouterr().err.strip().startswith("stopped before every pair was judged: max_cost_usd")


# -- a kill -9 mid-run, and bad input: as a user runs it ------------------------------------------


def run_cli(*args: str, api_key: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = str(REPO)
    if api_key is not None:
        env["OPENAI_API_KEY"] = api_key
    return subprocess.Popen([sys.executable, "-m", "tools.eval", "judge", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_mid_run_then_rerun_pays_nothing_twice_and_reports_the_same(tmp_path):
    n = 30
    resp, ref = write_pairs(tmp_path, [f"model answer {i}" * (i % 4 + 1) for i in range(n)],
                            [f"reference {i}" for i in range(n)])
    common = ["--responses", resp, "--reference", ref, "--config", "configs/judge.yaml", *FAST, *PRICED,
              "concurrency=2", "paid=true", "max_cost_usd=10"]
    out = tmp_path / "killed"
    journal = out / "journal.jsonl"
    with FakeJudge("longer") as server:
        server.hold_after = 11  # later requests wait unanswered (unpaid) until the kill
        proc = run_cli(*common, f"base_url={server.base_url}", f"output_dir={out}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count('"response"') < 11):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert journal.read_text().count('"response"') == 11 and not (out / "report.json").exists()
        server.hold_after = None
        server.released.set()
        proc = run_cli(*common, f"base_url={server.base_url}", f"output_dir={out}")
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert "win rate" in stdout and "LC win rate" in stdout
        assert len(server.judged) == n and set(server.judged.values()) == {1}  # each pair paid once
    with FakeJudge("longer") as fresh:
        proc = run_cli(*common, f"base_url={fresh.base_url}", f"output_dir={tmp_path / 'whole'}")
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    killed = json.loads((out / "report.json").read_text())
    assert killed == json.loads((tmp_path / "whole" / "report.json").read_text())
    assert killed["cost_usd"] > 0 and killed["n"] == n
    assert (out / "judgments.jsonl").read_text() == (tmp_path / "whole" / "judgments.jsonl").read_text()


def one_line(proc: subprocess.Popen, status: int) -> str:
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    return stderr.strip()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    resp, ref = write_pairs(tmp_path, ["m0", "m1"], ["r0", "r1"])
    out = tmp_path / "out"
    base = [f"output_dir={out}", "base_url=http://127.0.0.1:9/v1", *FAST]

    def one_line_error(*args: str) -> str:
        assert main([*args, *base]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    missing = str(tmp_path / "nope.json")
    assert one_line_error("--responses", resp, "--reference", missing) == f"error: {missing}: no such reference file"
    (tmp_path / "o").mkdir()
    other, _ = write_pairs(tmp_path / "o", ["x"], ["y"], ["An unrelated task."])
    line = one_line_error("--responses", other, "--reference", ref)
    assert line.startswith(f"error: no response in {other} matches a reference in {ref}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "a", "response": "b"}) + "\n" + json.dumps({"instruction": "c"}) + "\n")
    line = one_line_error("--responses", str(bad), "--reference", ref)
    assert line == f"error: {bad}: line 2: field 'response': missing"
    line = one_line_error("--responses", resp, "--reference", ref, "max_cost=3")
    assert "'max_cost'" in line and "'max_cost_usd'" in line
    assert not out.exists()


def test_unreachable_judge_stops_with_one_line_naming_the_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resp, ref = write_pairs(tmp_path, ["m0", "m1"], ["r0", "r1"])
    url = f"http://127.0.0.1:{port}/v1"
    secret = "sk-never-print-me-0123456789"
    proc = run_cli("--responses", resp, "--reference", ref, f"base_url={url}", f"output_dir={tmp_path / 'out'}",
                   *FAST, "retry.max_connection_failures=1", api_key=secret)
    line = one_line(proc, status=2)
    assert line.startswith(f"error: cannot connect to {url} (ConnectError: ") and secret not in line
    assert not (tmp_path / "out" / "report.json").exists() and not (tmp_path / "out" / "judgments.jsonl").exists()


def test_kill_while_a_batch_runs_then_rerun_polls_the_same_job(tmp_path):
    n = 8
    resp, ref = write_pairs(tmp_path, [f"model {i}" for i in range(n)], [f"ref {i}" for i in range(n)])
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    args = ["--responses", resp, "--reference", ref, f"output_dir={out}", *FAST, "api=batch",
            "batch.poll_interval_s=0.01"]
    with FakeJudge("first") as server:
        server.batch_hold = True  # the job stays in progress until the kill
        proc = run_cli(*args, f"base_url={server.base_url}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (journal.exists() and '"batch_submit"' in journal.read_text()):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        server.batch_hold = False
        proc = run_cli(*args, f"base_url={server.base_url}")
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert len(server.batches) == 1 and sorted(server.judged.values()) == [1] * n
    assert json.loads((out / "report.json").read_text())["n"] == n

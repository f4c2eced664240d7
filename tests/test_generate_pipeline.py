"""End to end against a real loopback server speaking the OpenAI API, through the real openai
client: N valid Alpaca records with no near-duplicates, failures survived, a dead server ends
cleanly with the work saved, a crash resumes to exactly the uninterrupted output, Korean mode."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest
from rouge_score import rouge_scorer
from test_generate_fakeserver import FakeOpenAI

from generate.config import load_config
from generate.errors import UserError
from generate.pipeline import Generator
from generate.rouge import HangulTokenizer

REPO = Path(__file__).resolve().parents[1]
FAST = ["retry.backoff_base_s=0.001", "retry.backoff_max_s=0.01", "request.timeout_s=0.5",
        "progress=false", "concurrency=2"]


def run(server: FakeOpenAI, out: Path, *overrides: str, config: str = "configs/self_instruct.yaml"):
    cfg = load_config(REPO / config, [f"base_url={server.base_url}", f"output_dir={out}",
                                      f"seed_tasks={REPO}/{'generate/seeds/ko.jsonl' if 'ko' in config else 'generate/seeds/en.jsonl'}",
                                      *FAST, *overrides])
    return Generator(cfg, "sk-test").run()


def load(out: Path) -> list[dict]:
    return json.loads((out / "alpaca_data.json").read_text(encoding="utf-8"))


def assert_valid_alpaca(records: list[dict], n: int, tokenizer=None) -> None:
    assert len(records) == n
    for r in records:
        assert set(r) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"].strip() and r["output"].strip()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=tokenizer)
    for a, b in combinations([r["instruction"] for r in records], 2):
        assert scorer.score(a, b)["rougeL"].fmeasure <= 0.7, (a, b)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_generates_n_valid_distinct_instructions(tmp_path, api):
    with FakeOpenAI() as server:
        result = run(server, tmp_path, "num_instructions=30", f"api={api}")
    records = load(tmp_path)
    assert_valid_alpaca(records, 30)
    assert result.stop_reason == "done"
    # each response holds a copy of a prompt example and a picture task: both must be rejected
    assert result.rejected["rouge_similar"] >= 1 and result.rejected["blacklist"] >= 1
    seeds = {json.loads(line)["instruction"] for line in (REPO / "generate/seeds/en.jsonl").open()}
    assert not seeds & {r["instruction"] for r in records}
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert len(meta["records"]) == 30 and meta["stop_reason"] == "done"
    first = meta["records"][0]
    assert len(first["most_similar_instructions"]) == 10 and 0 <= first["avg_similarity_score"] <= 1


def test_failures_are_survived(tmp_path):
    with FakeOpenAI() as server:
        server.timeout_sleep_s = 0.8
        server.script = ["429", "500", "timeout", "malformed", "length"]
        result = run(server, tmp_path, "num_instructions=20", "concurrency=1")
    assert_valid_alpaca(load(tmp_path), 20)
    assert result.rejected["truncated"] == 1  # the cut-off last item of the "length" response
    assert result.usage["errors"] == {"RateLimitError": 1, "InternalServerError": 1, "APITimeoutError": 1,
                                      "MalformedResponse": 1}


def test_dead_server_stops_cleanly_and_resume_equals_uninterrupted_run(tmp_path):
    with FakeOpenAI() as server:
        run(server, tmp_path / "ref", "num_instructions=40")
        answers_needed = server.served
    with FakeOpenAI() as server:
        # concurrency 2: round 1 is answered, then one of round 2's two requests, then nothing
        server.die_after = 3
        result = run(server, tmp_path / "run", "num_instructions=40", "retry.max_retries=2")
        assert result.stop_reason.startswith("stopped early")
        saved = load(tmp_path / "run")
        assert 0 < len(saved) < 40 and saved == load(tmp_path / "ref")[:len(saved)]
        server.die_after = None  # the server comes back; the same command resumes
        result = run(server, tmp_path / "run", "num_instructions=40")
        # the answer that arrived before the outage came from the journal, not bought again
        assert server.served == answers_needed
    assert result.stop_reason == "done"
    assert load(tmp_path / "run") == load(tmp_path / "ref")


def test_torn_journal_line_is_repaired_on_resume(tmp_path):
    with FakeOpenAI() as server:
        run(server, tmp_path / "ref", "num_instructions=40")
        run(server, tmp_path / "run", "num_instructions=40", "max_requests=2")
        journal = tmp_path / "run" / "journal.jsonl"
        lines = journal.read_text(encoding="utf-8").splitlines(keepends=True)
        # a crash (kill -9) in the middle of writing a line
        with journal.open("a", encoding="utf-8") as f:
            f.write('{"type": "candidate", "batch": 2, "i": 0, "instruction": "Half wri')
        before = len(lines)
        result = run(server, tmp_path / "run", "num_instructions=40")
    assert result.stop_reason == "done"
    assert load(tmp_path / "run") == load(tmp_path / "ref")
    records = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    assert len(records) > before
    keys = [(r["batch"], r["i"]) for r in records if r["type"] == "candidate"]
    assert len(keys) == len(set(keys))  # nothing decided twice


def test_resume_refuses_different_settings(tmp_path):
    with FakeOpenAI() as server:
        run(server, tmp_path, "num_instructions=10")
        with pytest.raises(UserError, match="different settings.*seed"):
            run(server, tmp_path, "num_instructions=20", "seed=7")


def test_more_instructions_extend_a_finished_run(tmp_path):
    with FakeOpenAI() as server:
        run(server, tmp_path / "ref", "num_instructions=40")
        run(server, tmp_path / "run", "num_instructions=20")
        run(server, tmp_path / "run", "num_instructions=40")
    assert load(tmp_path / "run") == load(tmp_path / "ref")


def test_max_cost_stops_cleanly(tmp_path):
    with FakeOpenAI() as server:
        result = run(server, tmp_path, "num_instructions=1000", "model=priced",
                     "prices.priced.input_per_1m=1000", "max_cost_usd=0.5")
        assert server.served == 2  # one round of `concurrency` requests, then the budget is spent
    assert result.stop_reason.startswith("max_cost_usd reached")
    assert result.usage["cost_usd"] >= 0.5
    assert len(load(tmp_path)) == len(result.kept) > 0


def test_korean_mode_keeps_korean_and_rejects_korean_duplicates(tmp_path):
    with FakeOpenAI() as server:
        result = run(server, tmp_path, "num_instructions=25", "api=completions",
                     config="configs/self_instruct_ko.yaml")
    records = load(tmp_path)
    assert_valid_alpaca(records, 25, tokenizer=HangulTokenizer())
    assert all("\uac00" <= r["instruction"][0] <= "\ud7a3" for r in records)  # Korean-first, kept
    assert "non_ascii_start" not in result.rejected
    assert result.rejected["rouge_similar"] >= 1  # the repeated Korean seed instruction
    assert result.rejected["blacklist"] >= 1  # "이 사진을 보고 ..."


def test_journal_records_every_candidate_with_its_decision(tmp_path):
    with FakeOpenAI() as server:
        result = run(server, tmp_path, "num_instructions=10")
    records = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "header"
    cands = [r for r in records if r["type"] == "candidate"]
    kept = [r for r in cands if r["status"] == "kept"]
    assert len(kept) >= len(result.kept) == 10  # the output is the first N kept, in order
    assert [r["instruction"] for r in kept[:10]] == [k.task.instruction for k in result.kept]
    rejected = [r for r in cands if r["status"] == "rejected"]
    assert sum(result.rejected.values()) == len(rejected)
    assert all(r["reason"] for r in rejected)

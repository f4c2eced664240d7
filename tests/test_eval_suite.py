"""`make eval` end to end on a trained checkpoint, and the training run's own IFEval pass at its end
(`eval.ifeval`): responses in the data's order, the score of exactly those prompts, a summary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_helpers import ROOT, check, run_train, tiny_assets, tiny_config

IFEVAL = ROOT.parent / "shared" / "data" / "ifeval_input_data.jsonl"
pytestmark = pytest.mark.skipif(not IFEVAL.is_file(), reason="needs ../shared/data/ifeval_input_data.jsonl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run whose end includes the IFEval pass over 12 of IFEval's prompts."""
    root = tmp_path_factory.mktemp("eval_suite")
    subset = root / "ifeval12.jsonl"
    subset.write_text("".join(IFEVAL.read_text(encoding="utf-8").splitlines(keepends=True)[:12]))
    cfg = tiny_config(root / "cfg.yaml", tiny_assets(root / "assets"), root / "cache")
    out = root / "run"
    proc = check(run_train(cfg, out, overrides=["max_steps=4", f"eval.ifeval={subset}", "eval.max_new_tokens=8"]))
    return out, subset, proc


def _records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_training_run_scores_ifeval_at_its_end(trained):
    out, subset, proc = trained
    data = _records(subset)
    responses = _records(out / "eval" / "ifeval_responses.jsonl")
    assert [r["prompt"] for r in responses] == [d["prompt"] for d in data]  # every prompt, in order
    assert [r["key"] for r in responses] == [d["key"] for d in data]
    report = json.loads((out / "eval" / "ifeval.json").read_text())
    assert [p["prompt"] for p in report["prompts"]] == [d["prompt"] for d in data]
    assert [len(p["strict"]) for p in report["prompts"]] == [len(d["instruction_id_list"]) for d in data]
    # Prompt-level strict = the share of prompts whose every instruction passed, from the verdicts.
    assert report["prompt_level_strict_acc"] == sum(all(p["strict"]) for p in report["prompts"]) / len(data)
    assert "IFEval prompt-level strict accuracy" in proc.stdout


def test_make_eval_writes_the_summary_under_the_run(trained, tmp_path):
    out, subset, _ = trained
    proc = subprocess.run([sys.executable, "-m", "tools.eval", "all", "--ckpt", str(out / "final"),
                           "--ifeval-data", str(subset), "--out", str(tmp_path / "eval"), "--max-new-tokens", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "ifeval.json").read_text())
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert f"| IFEval | prompt_level_strict_acc | {100 * report['prompt_level_strict_acc']:.2f} |" in summary
    # The rerun finds every response done and generates nothing again (the journal is gone).
    again = subprocess.run([sys.executable, "-m", "tools.eval", "all", "--ckpt", str(out / "final"),
                            "--ifeval-data", str(subset), "--out", str(tmp_path / "eval"), "--max-new-tokens", "8"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and json.loads((tmp_path / "eval" / "ifeval.json").read_text()) == report
    assert "using the finished" in again.stdout


def test_a_judge_without_a_reference_is_refused_in_one_line(trained, tmp_path):
    out, subset, _ = trained
    proc = subprocess.run([sys.executable, "-m", "tools.eval", "all", "--ckpt", str(out / "final"),
                           "--ifeval-data", str(subset), "--judge-config", "configs/judge.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: the judge needs both --reference and --judge-config"

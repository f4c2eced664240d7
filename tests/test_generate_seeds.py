"""Seed tasks (the project's own, self-instruct's 175, plain Alpaca JSON) and prompt building."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

from generate.config import load_config
from generate.encode import build_prompt
from generate.filters import filter_reason
from generate.pipeline import Generator, Kept
from generate.rouge import rouge_l_f, tokenize
from generate.seeds import Task, load_seed_tasks

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_project_seeds_are_many_valid_and_distinct(lang):
    tasks = load_seed_tasks(REPO / "generate" / "seeds" / f"{lang}.jsonl")
    assert len(tasks) >= 40
    assert all(filter_reason(t, lang) is None for t in tasks)
    toks = [tokenize(t.instruction) for t in tasks]
    assert max(rouge_l_f(a, b) for a, b in combinations(toks, 2)) <= 0.7


def test_korean_seeds_are_korean():
    tasks = load_seed_tasks(REPO / "generate" / "seeds" / "ko.jsonl")
    assert all(any("\uac00" <= ch <= "\ud7a3" for ch in t.instruction) for t in tasks)


def test_self_instruct_seed_file_loads():
    path = SHARED / "seed_tasks.jsonl"
    if not path.exists():
        pytest.skip("shared data not present")
    tasks = load_seed_tasks(path)
    assert len(tasks) == 175
    assert tasks[0].instruction.startswith("Is there anything I can eat for a breakfast")


def test_plain_alpaca_json_loads(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": " Add 2 and 3. ", "input": "", "output": "5"}]))
    assert load_seed_tasks(path) == [Task("Add 2 and 3.", "", "5")]


def test_prompt_lists_examples_and_opens_the_next_item():
    template = "Write {num_tasks} tasks.\n\n{examples}{next}. Instruction:\n"
    examples = [Task("Add {x} and 3.", "x = 2", "5"), Task("Name a colour.", "", "Blue.")]
    assert build_prompt(template, examples, "en", 20) == (
        "Write 20 tasks.\n\n"
        "1. Instruction: Add {x} and 3.\nInput: x = 2\nOutput: 5\n\n"
        "2. Instruction: Name a colour.\nInput: <noinput>\nOutput: Blue.\n\n"
        "3. Instruction:")


@pytest.mark.parametrize("lang, words", [("en", ["<noinput>", "image", "100 words", "verb"]),
                                         ("ko", ["<입력 없음>", "이미지", "100단어", "동사"])])
def test_shipped_prompts_carry_alpacas_requirements(lang, words):
    text = (REPO / "generate" / "prompts" / f"{lang}.txt").read_text(encoding="utf-8")
    for word in words:
        assert word in text
    assert "{examples}" in text and "{next}" in text and "{num_tasks}" in text


def test_machine_ratio_draws_examples_from_generated_instructions(tmp_path):
    config = load_config(REPO / "configs" / "self_instruct.yaml",
                         [f"seed_tasks={REPO}/generate/seeds/en.jsonl", "base_url=http://127.0.0.1:9/v1",
                          "machine_ratio=1.0", "concurrency=2", f"output_dir={tmp_path}"])
    gen = Generator(config, "unused")
    made = [Task(f"Generated task number {i} about rivers.", "", "ok") for i in range(5)]
    gen.kept = [Kept(t, batch=0) for t in made] + [Kept(Task("Kept in round two.", "", "ok"), batch=2)]
    prompt = gen._prompt(2)  # round 2 starts at batch 2: only batch < 2 instructions may appear
    assert sum(t.instruction in prompt for t in made) == 3
    assert "Kept in round two." not in prompt
    assert gen._prompt(2) == prompt  # the same batch always gets the same prompt
    config.machine_ratio = 0.0
    assert not any(t.instruction in gen._prompt(3) for t in made)

"""The synthetic tasks behind `make train`: deterministic, varied, correctly answered, and with an
evaluation set the model never trained on."""

import json
import re

import pytest

from data import synthetic
from data.synthetic import (
    FAMILIES,
    TINY_FAMILIES,
    generate_heldout,
    generate_train,
    is_heldout,
    make_record,
    record_key,
)

HANGUL = re.compile("[\uac00-\ud7a3]")


def test_same_seed_same_records_other_seed_other_records():
    assert generate_train(300, seed=3) == generate_train(300, seed=3)
    assert generate_heldout(4, seed=3) == generate_heldout(4, seed=3)
    assert generate_train(300, seed=3) != generate_train(300, seed=4)


def test_at_least_eight_families_each_phrased_in_english_and_korean_with_and_without_input():
    assert len(FAMILIES) >= 8
    assert len(TINY_FAMILIES) >= 8 and set(TINY_FAMILIES) <= set(FAMILIES)  # what `make train` uses
    for name, fam in FAMILIES.items():
        assert set(fam.phrasings) == {"en", "ko"}, name
        for lang, phrasings in fam.phrasings.items():
            assert len(phrasings) >= 2, (name, lang)
        all_phrasings = fam.phrasings["en"] + fam.phrasings["ko"]
        assert any(inp is None for _, inp in all_phrasings), f"{name}: no phrasing without input"
        assert any(inp is not None for _, inp in all_phrasings), f"{name}: no phrasing with input"
        assert all(HANGUL.search(instr) for instr, _ in fam.phrasings["ko"]), name
        assert not any(HANGUL.search(instr) for instr, _ in fam.phrasings["en"]), name


def test_training_set_covers_every_family_in_both_languages_and_both_prompt_shapes():
    records = generate_train(2000, seed=0)
    assert {r["family"] for r in records} == set(FAMILIES)
    for name in FAMILIES:
        langs = {r["lang"] for r in records if r["family"] == name}
        assert langs == {"en", "ko"}, name
    assert any(r["input"] for r in records) and any(not r["input"] for r in records)
    assert any(HANGUL.search(r["instruction"]) for r in records)
    for r in records:  # what the Alpaca loader requires
        assert isinstance(r["instruction"], str) and r["instruction"]
        assert isinstance(r["output"], str) and r["output"]
        assert isinstance(r["input"], str)


def test_heldout_prompts_never_appear_in_training():
    train = generate_train(12_000, seed=0)
    held = generate_heldout(16, seed=0)
    train_prompts = {(r["instruction"], r["input"]) for r in train}
    held_prompts = [(r["instruction"], r["input"]) for r in held]
    assert len(held) >= 8 * len(FAMILIES)  # every family is evaluated, most with 16 prompts
    assert {r["family"] for r in held} == set(FAMILIES)
    assert len(set(held_prompts)) == len(held_prompts)  # no duplicate evaluation prompts
    assert not train_prompts & set(held_prompts)


def test_heldout_rule_is_the_documented_hash_bucket():
    # sha1 of the key, mod 10 == 0; checked here against hashlib directly.
    import hashlib

    key = record_key("add", "en", 0, (3, 4))
    assert key == '["add", "en", 0, [3, 4]]'
    assert is_heldout(key) == (int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10 == 0)
    fraction = sum(is_heldout(record_key("sort", "en", 0, (i, j, k)))
                   for i in range(10) for j in range(10) for k in range(10)) / 1000
    assert 0.07 < fraction < 0.13


@pytest.mark.parametrize("family, lang, phrasing, args, instruction, inp, output", [
    ("reverse", "en", 0, ("cloud", "tiger", "bread"), "Reverse the order of these words.",
     "cloud tiger bread", "bread tiger cloud"),
    ("reverse", "ko", 1, ("강", "빵", "집", "말"), "단어의 순서를 뒤집으세요: 강 빵 집 말", "", "말 집 빵 강"),
    ("sort", "en", 1, (7, 3, 9, 3), "Sort these numbers in ascending order: 7 3 9 3", "", "3 3 7 9"),
    ("add", "en", 0, (7, 8), "What is 7 plus 8?", "", "15"),
    ("add", "ko", 1, (9, 0), "두 수를 더하세요.", "9 0", "9"),
    ("subtract", "en", 2, (9, 4), "Compute 9 - 4.", "", "5"),
    ("uppercase", "en", 0, ("lemon",), "Convert the word to uppercase.", "lemon", "LEMON"),
    ("lowercase", "en", 1, ("HORSE",), "Write HORSE in small letters.", "", "horse"),
    ("count", "en", 1, ("apple", "river", "stone", "cloud"), "Count the words: apple river stone cloud", "", "4"),
    ("first", "ko", 0, ("바다", "돌", "빛"), "목록의 첫 번째 단어는 무엇입니까?", "바다 돌 빛", "바다"),
    ("last", "en", 1, ("music", "green", "house"), "Give the last word: music green house", "", "house"),
    ("repeat", "ko", 0, ("빵", 3), "3번 반복해서 쓰세요: 빵", "", "빵 빵 빵"),
    ("repeat", "en", 1, ("stone", 2), "Write the word 2 times.", "stone", "stone stone"),
    ("antonym", "en", 0, ("cold",), "What is the opposite of cold?", "", "hot"),
    ("antonym", "ko", 1, ("작다",), "다음 단어의 반대말을 쓰세요.", "작다", "크다"),
    ("spell", "en", 0, ("stone",), "Spell the word with dashes between the letters.", "stone", "s-t-o-n-e"),
    ("spell", "ko", 1, ("호랑이",), "한 글자씩 대시로 구분해 쓰세요: 호랑이", "", "호-랑-이"),
    ("max", "en", 0, (2, 8, 5), "What is the largest number in the list?", "2 8 5", "8"),
    ("min", "ko", 1, (6, 1, 4, 1), "가장 작은 수를 찾으세요: 6 1 4 1", "", "1"),
])
def test_hand_checked_records(family, lang, phrasing, args, instruction, inp, output):
    assert make_record(family, lang, phrasing, args) == {"instruction": instruction, "input": inp, "output": output}


def _solve_from_text(record: dict) -> str | None:
    """An independent solver that reads the task back from the record's text (list tasks that
    carry their list in `input`), so generated answers are checked without the generator."""
    family, items = record["family"], record["input"].split()
    if not items or family not in {"reverse", "sort", "count", "first", "last", "max", "min"}:
        return None
    return {
        "reverse": lambda: " ".join(items[::-1]),
        "sort": lambda: " ".join(sorted(items, key=int)),
        "count": lambda: str(len(items)),
        "first": lambda: items[0],
        "last": lambda: items[-1],
        "max": lambda: str(max(map(int, items))),
        "min": lambda: str(min(map(int, items))),
    }[family]()


def test_generated_answers_agree_with_an_independent_solver():
    checked = 0
    for record in generate_train(3000, seed=1) + generate_heldout(16, seed=1):
        expected = _solve_from_text(record)
        if expected is not None:
            assert record["output"] == expected, record
            checked += 1
        if record["family"] == "add" and record["input"]:
            a, b = map(int, record["input"].split())
            assert record["output"] == str(a + b)
        if record["family"] == "uppercase" and record["input"]:
            assert record["output"] == record["input"].upper()
    assert checked > 500


def test_build_tiny_assets_writes_loadable_files_and_reuses_them(tmp_path):
    paths = synthetic.build_tiny_assets(tmp_path, seed=0, n_train=600, heldout_per_family=3, vocab_size=700)
    assert set(paths) == {"train", "heldout", "tokenizer"}
    train = json.loads(open(paths["train"], encoding="utf-8").read())
    held = json.loads(open(paths["heldout"], encoding="utf-8").read())
    assert len(train) == 600 and 0 < len(held) <= 3 * len(TINY_FAMILIES)
    assert train == generate_train(600, seed=0, families=TINY_FAMILIES)  # the default mix
    assert {r["family"] for r in train} == {r["family"] for r in held} == set(TINY_FAMILIES)
    assert {r["lang"] for r in train} == {"en", "ko"}
    mtime = {k: (tmp_path / p).stat().st_mtime_ns for k, p in paths.items()}
    again = synthetic.build_tiny_assets(tmp_path, seed=0, n_train=600, heldout_per_family=3, vocab_size=700)
    assert again == paths
    assert {k: (tmp_path / p).stat().st_mtime_ns for k, p in again.items()} == mtime  # not rewritten
    other = synthetic.build_tiny_assets(tmp_path, seed=1, n_train=600, heldout_per_family=3, vocab_size=700)
    assert json.loads(open(other["train"], encoding="utf-8").read()) == generate_train(
        600, seed=1, families=TINY_FAMILIES)


def test_task_files_cli_writes_only_the_named_families_and_refuses_unknown_ones(tmp_path):
    """`python -m data.synthetic` (make train-lora's data): the families asked for, held-out keys
    only in the held-out file; an unknown family is one line and exit status 2."""
    import json
    import subprocess
    import sys

    from tests.train_helpers import ROOT

    run = lambda *a: subprocess.run([sys.executable, "-m", "data.synthetic", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    proc = run(str(tmp_path), "--families", "sort,spell", "--n-train", "200", "--heldout-per-family", "4")
    assert proc.returncode == 0, proc.stderr
    train = json.loads((tmp_path / "train.json").read_text())
    held = json.loads((tmp_path / "heldout.json").read_text())
    assert len(train) == 200 and {r["family"] for r in train} == {"sort", "spell"}
    assert {r["family"] for r in held} == {"sort", "spell"} and len(held) <= 8
    train_prompts = {(r["instruction"], r["input"]) for r in train}
    assert not any((r["instruction"], r["input"]) in train_prompts for r in held)
    bad = run(str(tmp_path / "x"), "--families", "sort,fly")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "fly" in bad.stderr

"""Bad data and bad data config: one line naming the file, record and field; exit status 2; no
traceback. Run through the CLI as a subprocess, as a user would meet them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.alpaca import DataError, read_records
from data.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]
TOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "llama2_tokenizer.model"
GOOD = {"instruction": "Say hi.", "output": "Hi."}

BAD = [  # (file name, content, what the one line must say)
    ("a.json", [{"instruction": "x"}], "record 0: field 'output': missing"),
    ("a.json", [GOOD, {"output": "y"}], "record 1: field 'instruction': missing"),
    ("a.json", [GOOD, GOOD, {"instruction": "  ", "output": "y"}], "record 2: field 'instruction': empty"),
    ("a.json", [{"instruction": "x", "output": ""}], "record 0: field 'output': empty"),
    ("a.json", [{"instruction": "x", "output": 5}], "record 0: field 'output': expected a string, got integer"),
    ("a.json", [{"instruction": ["x"], "output": "y"}], "record 0: field 'instruction': expected a string, got list"),
    ("a.json", [{"instruction": "x", "input": 3, "output": "y"}], "record 0: field 'input': expected a string, got integer"),
    ("a.json", [{"instruction": "x", "input": None, "output": "y"}], "record 0: field 'input': expected a string, got null"),
    ("a.json", [GOOD, "just text"], "record 1: expected an object with instruction/input/output, got string"),
    ("a.json", '[{"instruction": "x", "output": "y"},\n', "invalid JSON at line 2"),
    ("a.jsonl", json.dumps(GOOD) + "\n{not json}\n", "line 2: invalid JSON"),
    ("a.jsonl", json.dumps(GOOD) + "\n\n" + json.dumps({"instruction": "x"}) + "\n", "line 3: field 'output': missing"),
    ("a.json", "", "empty file"),
    ("a.json", json.dumps({"data": [GOOD]}, indent=1), "expected a JSON list of records or JSON Lines, got one object"),
]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tools.data_stats", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("name", "content", "message"), BAD)
def test_bad_record_exits_2_with_one_line_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    out = _run("--data", str(path), "--tokenizer", str(TOK), "--cache-dir", str(tmp_path / "cache"))
    assert out.returncode == 2
    assert out.stdout == "" and "Traceback" not in out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {path}: ") and message in line
    assert not (tmp_path / "cache").exists()  # nothing written


def test_missing_data_file_exits_2(tmp_path):
    out = _run("--data", str(tmp_path / "nope.json"), "--tokenizer", str(TOK))
    assert out.returncode == 2 and out.stderr.strip() == f"error: {tmp_path / 'nope.json'}: no such file"


@pytest.mark.skipif(not TOK.is_file(), reason="shared llama2 tokenizer absent")
def test_skip_invalid_skips_and_counts(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [GOOD, {"instruction": "x"}, GOOD, {"instruction": "x", "output": 1}, GOOD]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _run("--data", str(path), "--tokenizer", str(TOK), "--cache-dir", "", "--skip-invalid")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert (stats["records"], stats["skipped"], stats["examples"]) == (5, 2, 3)


def test_skipped_records_are_reported_by_line(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([GOOD, {"instruction": "x"}, GOOD]))
    records, indices, skipped = read_records(path, skip_invalid=True)
    assert indices == [0, 2] and skipped == [f"{path}: record 1: field 'output': missing"]


@pytest.mark.parametrize(("cfg", "message"), [
    ({"paths": ["a.json"], "max_length": 512}, "data.max_length: unknown key"),
    ({"paths": []}, "data.paths: no data files given"),
    ({"paths": "a.json", "source": "web"}, "data.source: expected one of files, synthetic, got 'web'"),
    ({"paths": ["a.json", "b.json"], "weights": [1.0]}, "data.weights: 1 weights for 2 paths"),
    ({"paths": ["a.json"], "weights": [-1.0]}, "data.weights: expected non-negative"),
    ({"paths": ["a.json"], "template": "klingon"}, "data.template: unknown template 'klingon'"),
    ({"paths": ["a.json"], "packing": True, "pack_len": 256}, "data.pack_len: 256 cannot hold"),
    ({"paths": ["a.json"], "max_len": "512"}, "data.max_len: expected a positive integer"),
])
def test_bad_data_config_names_the_key(cfg, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        DataConfig.from_dict(cfg)


def test_too_little_data_for_one_step_is_a_clear_error(tmp_path):
    from test_data_masking import CharTokenizer

    from data.loader import AlpacaLoader

    path = tmp_path / "three.json"
    path.write_text(json.dumps([GOOD] * 3))
    loader = AlpacaLoader(DataConfig(paths=[str(path)], cache_dir=None), CharTokenizer(), micro_batch_size=2,
                          world_size=2, rank=1)
    with pytest.raises(DataError, match="3 examples cannot fill one optimizer step of 4 examples"):
        loader.steps_per_epoch()
    assert sum(b.num_targets for b in loader.one_pass()) == len("Hi.") + 1  # rank 1's one example

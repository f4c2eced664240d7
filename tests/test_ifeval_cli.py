"""`python -m tools.eval ifeval`: the reference implementation's published numbers on PaLM 2's
responses, and the command line's handling of bad and partial input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.ifeval.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
DATA, RESPONSES = SHARED / "ifeval_input_data.jsonl", SHARED / "ifeval_responses_text_bison.jsonl"
needs_shared = pytest.mark.skipif(not (DATA.exists() and RESPONSES.exists()), reason="shared IFEval data absent")

# google-research's scorer on the 156 text-bison responses whose prompt is in the current data,
# run with a regex sentence splitter in place of NLTK's punkt (percent).
REFERENCE = {
    "prompt_level_strict_acc": 63.46,
    "inst_level_strict_acc": 69.90,
    "prompt_level_loose_acc": 66.03,
    "inst_level_loose_acc": 72.82,
}

RECORD = {"key": 1, "prompt": "Say hi without commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


def _write(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@needs_shared
def test_text_bison_reproduces_the_reference_numbers(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["--responses", str(RESPONSES), "--data", str(DATA), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_prompts"] == 156 and report["unmatched_responses"] == 385
    for key, reference in REFERENCE.items():
        assert abs(100 * report[key] - reference) <= 1.0, (key, 100 * report[key], reference)
    assert len(report["prompts"]) == 156
    first = report["prompts"][0]
    assert set(first) == {"prompt", "instruction_id_list", "strict", "loose"}
    assert len(first["strict"]) == len(first["loose"]) == len(first["instruction_id_list"])
    assert "385 responses match no prompt" in capsys.readouterr().out


@needs_shared
def test_require_all_refuses_partial_responses(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["--responses", str(RESPONSES), "--data", str(DATA), "--out", str(out), "--require-all"]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "385 responses match no prompt" in err


def test_small_file_scores_and_writes_the_report(tmp_path):
    data = _write(tmp_path / "data.jsonl", [RECORD])
    responses = _write(tmp_path / "r.jsonl", [{"prompt": RECORD["prompt"], "response": "Hi there"}])
    out = tmp_path / "sub" / "report.json"
    assert main(["--responses", str(responses), "--data", str(data), "--out", str(out), "--require-all"]) == 0
    report = json.loads(out.read_text())
    assert report["prompt_level_strict_acc"] == 1.0 and report["per_instruction"] == {"punctuation:no_comma": 1.0}
    assert report["prompts"] == [{**{k: RECORD[k] for k in ("prompt", "instruction_id_list")}, "strict": [True], "loose": [True]}]
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temp file left behind


@pytest.mark.parametrize(
    "data_records, response_records, message",
    [
        ([RECORD], [{"prompt": "another prompt", "response": "x"}], "no response answers a prompt"),
        ([RECORD], ["{not json"], "r.jsonl:1: not valid JSON"),
        ([RECORD], [{"prompt": RECORD["prompt"]}], "r.jsonl:1: field 'response' must be a string"),
        ([RECORD, {**RECORD, "kwargs": [{"num_words": 3}]}], [{"prompt": RECORD["prompt"], "response": "x"}],
         "data.jsonl:2: field 'kwargs[0]' (punctuation:no_comma): unexpected kwarg 'num_words'"),
        ([{**RECORD, "instruction_id_list": ["keywords:nope"]}], [{"prompt": RECORD["prompt"], "response": "x"}],
         "data.jsonl:1: field 'instruction_id_list[0]': unknown instruction 'keywords:nope'"),
        ([RECORD], [{"prompt": RECORD["prompt"], "response": "a"}, {"prompt": RECORD["prompt"], "response": "b"}],
         "r.jsonl:2: field 'prompt' is answered twice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, data_records, response_records, message):
    data = _write(tmp_path / "data.jsonl", data_records)
    responses = _write(tmp_path / "r.jsonl", response_records)
    out = tmp_path / "report.json"
    assert main(["--responses", str(responses), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_missing_file_is_exit_2(tmp_path, capsys):
    assert main(["--responses", str(tmp_path / "none.jsonl"), "--data", str(tmp_path / "no.jsonl"), "--out", str(tmp_path / "o.json")]) == 2
    assert "cannot read" in capsys.readouterr().err

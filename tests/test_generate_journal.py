"""The journal's crash repair, on hand-written files: what a kill -9 can leave behind."""

from __future__ import annotations

import json

import pytest

from generate.errors import UserError
from generate.journal import Journal

HEADER = {"seed": 0, "lang": "en"}


def write(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def test_unfinished_batch_keeps_its_response_and_drops_its_decisions(tmp_path):
    path = tmp_path / "journal.jsonl"
    write(path, [
        {"type": "header", "settings": HEADER},
        {"type": "response", "batch": 0, "text": "a"},
        {"type": "candidate", "batch": 0, "i": 0, "status": "kept"},
        {"type": "batch_end", "batch": 0},
        {"type": "response", "batch": 1, "text": "b"},
        {"type": "candidate", "batch": 1, "i": 0, "status": "kept"},
    ], tail='{"type": "candidate", "batch": 1, "i"')  # torn mid-line
    journal = Journal(path)
    replay = journal.open(HEADER)
    journal.close()
    assert list(replay.batches) == [0] and len(replay.batches[0]) == 3
    assert replay.pending_responses == {1: {"type": "response", "batch": 1, "text": "b"}}
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["type"], r.get("batch")) for r in lines] == [
        ("header", None), ("response", 0), ("candidate", 0), ("batch_end", 0), ("response", 1)]


def test_complete_last_line_without_newline_is_treated_as_torn(tmp_path):
    path = tmp_path / "journal.jsonl"
    write(path, [{"type": "header", "settings": HEADER}], tail='{"type": "batch_end", "batch": 0}')
    replay = Journal(path).open(HEADER)
    assert replay.batches == {}


def test_garbled_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text(json.dumps({"type": "header", "settings": HEADER}) + "\nnot json\n"
                    + json.dumps({"type": "batch_end", "batch": 0}) + "\n")
    with pytest.raises(UserError, match=r"journal.jsonl line 2: malformed"):
        Journal(path).open(HEADER)
    assert "not json" in path.read_text()  # nothing is rewritten or lost


def test_different_settings_are_refused_and_named(tmp_path):
    path = tmp_path / "journal.jsonl"
    write(path, [{"type": "header", "settings": HEADER}])
    with pytest.raises(UserError, match=r"different settings \(lang\)"):
        Journal(path).open({"seed": 0, "lang": "ko"})

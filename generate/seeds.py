"""Seed tasks: self-instruct's `seed_tasks.jsonl` format, or a plain Alpaca JSON list.

Why both: the 175 human-written self-instruct seeds are JSONL with `instances`, while a
researcher extending an existing dataset has Alpaca JSON. Both become `Task` records; a bad
record is reported as one line naming the file, the record and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from generate.errors import UserError


@dataclass(frozen=True)
class Task:
    """One instruction with one example input/output (the Alpaca record)."""

    instruction: str
    input: str
    output: str

    def to_alpaca(self) -> dict:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def _field(record: object, name: str, where: str) -> str:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if name not in record:
        raise UserError(f"{where}: missing field '{name}'")
    value = record[name]
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def _from_seed_record(record: object, where: str) -> Task:
    instruction = _field(record, "instruction", where)
    instances = record.get("instances")
    if not isinstance(instances, list) or not instances:
        raise UserError(f"{where}: field 'instances' must be a non-empty list")
    # self-instruct seeds keep one instance each; the first is the example shown to the model.
    first = instances[0]
    return Task(instruction.strip(), _field(first, "input", f"{where} instances[0]").strip(),
                _field(first, "output", f"{where} instances[0]").strip())


def _from_alpaca_record(record: object, where: str) -> Task:
    return Task(_field(record, "instruction", where).strip(), _field(record, "input", where).strip(),
                _field(record, "output", where).strip())


def load_seed_tasks(path: str | Path) -> list[Task]:
    """Load seeds; `.jsonl` is self-instruct format (or Alpaca records one per line), `.json` a list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read seed tasks ({e.strerror})") from None
    tasks: list[Task] = []
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: malformed JSON ({e.msg})") from None
            has_instances = isinstance(record, dict) and "instances" in record
            tasks.append(_from_seed_record(record, where) if has_instances
                         else _from_alpaca_record(record, where))
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
        if not isinstance(records, list):
            raise UserError(f"{path}: expected a JSON list of {{instruction, input, output}} records")
        tasks = [_from_alpaca_record(r, f"{path} record {i}") for i, r in enumerate(records)]
    if not tasks:
        raise UserError(f"{path}: no seed tasks found")
    return tasks

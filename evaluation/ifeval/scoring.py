"""IFEval scoring: records checked, responses matched to prompts, strict and loose accuracies."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from evaluation.ifeval.checks_content import CHECKERS as _CONTENT
from evaluation.ifeval.checks_format import CHECKERS as _FORMAT
from evaluation.ifeval.spec import KwargError

CHECKERS = {**_CONTENT, **_FORMAT}


class IFEvalInputError(ValueError):
    """Bad input; the message is one line naming the file, the record and the field."""


def check_record(record, where: str) -> list[dict]:
    """The bound kwargs of a data record's instructions, or IFEvalInputError naming the bad field."""
    if not isinstance(record, dict):
        raise IFEvalInputError(f"{where}: a record must be a JSON object")
    prompt, ids, kwargs = record.get("prompt"), record.get("instruction_id_list"), record.get("kwargs")
    if not isinstance(prompt, str) or not prompt.strip():
        raise IFEvalInputError(f"{where}: field 'prompt' must be a non-empty string")
    if not isinstance(ids, list) or not ids:
        raise IFEvalInputError(f"{where}: field 'instruction_id_list' must be a non-empty list")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise IFEvalInputError(f"{where}: field 'kwargs' must be a list of {len(ids)} objects, one per instruction")
    bound = []
    for i, (instruction, args) in enumerate(zip(ids, kwargs, strict=True)):
        if instruction not in CHECKERS:
            raise IFEvalInputError(f"{where}: field 'instruction_id_list[{i}]': unknown instruction {instruction!r}")
        try:
            bound.append(CHECKERS[instruction].bind(args))
        except KwargError as err:
            raise IFEvalInputError(f"{where}: field 'kwargs[{i}]' ({instruction}): {err}") from None
    return bound


def loose_variants(response: str) -> list[str]:
    """The paper's 8 loose variants: as is, without its first line, its last line or both, each with `*` removed."""
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return trimmed + [variant.replace("*", "") for variant in trimmed]


def verdicts(record: dict, response: str, bound: list[dict] | None = None) -> tuple[list[bool], list[bool]]:
    """Strict and loose verdicts, one per instruction of `record`; an empty response follows nothing."""
    bound = check_record(record, "record") if bound is None else bound
    variants = [v for v in loose_variants(response) if v.strip()]
    strict, loose = [], []
    for instruction, kwargs in zip(record["instruction_id_list"], bound, strict=True):
        check = CHECKERS[instruction].check
        strict.append(bool(response.strip()) and check(response, **kwargs))
        loose.append(any(check(variant, **kwargs) for variant in variants))
    return strict, loose


def _accuracy(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def _where(name: str, record: dict, index: int) -> str:
    return f"{name}:{record['_line']}" if isinstance(record, dict) and "_line" in record else f"{name} record {index + 1}"


def score(responses: list[dict], data: list[dict], *, responses_name="responses", data_name="data") -> dict:
    """Scores responses (`prompt`, `response`) against the data records they answer, matched by prompt.

    Responses that answer no prompt of the data are counted under `unmatched_responses` and left
    out; data prompts with no response are counted under `missing_responses`. Bad input raises
    IFEvalInputError naming the record (its file line when it came from `read_jsonl`).
    """
    by_prompt = {}
    for i, record in enumerate(data):
        bound = check_record(record, _where(data_name, record, i))
        if record["prompt"] in by_prompt:
            raise IFEvalInputError(f"{_where(data_name, record, i)}: field 'prompt' repeats an earlier record's prompt")
        by_prompt[record["prompt"]] = (record, bound)
    prompts, unmatched, answered = [], 0, set()
    for i, response in enumerate(responses):
        where = _where(responses_name, response, i)
        for field in ("prompt", "response"):
            if not isinstance(response, dict) or not isinstance(response.get(field), str):
                raise IFEvalInputError(f"{where}: field {field!r} must be a string")
        if response["prompt"] not in by_prompt:
            unmatched += 1
            continue
        if response["prompt"] in answered:
            raise IFEvalInputError(f"{where}: field 'prompt' is answered twice (an earlier line has the same prompt)")
        answered.add(response["prompt"])
        record, bound = by_prompt[response["prompt"]]
        strict, loose = verdicts(record, response["response"], bound)
        prompts.append(
            {"prompt": record["prompt"], "instruction_id_list": record["instruction_id_list"], "strict": strict, "loose": loose}
        )
    per_strict, per_loose = defaultdict(list), defaultdict(list)
    for p in prompts:
        for instruction, s, lo in zip(p["instruction_id_list"], p["strict"], p["loose"], strict=True):
            per_strict[instruction].append(s)
            per_loose[instruction].append(lo)
    return {
        "prompt_level_strict_acc": _accuracy(all(p["strict"]) for p in prompts),
        "inst_level_strict_acc": _accuracy(s for p in prompts for s in p["strict"]),
        "prompt_level_loose_acc": _accuracy(all(p["loose"]) for p in prompts),
        "inst_level_loose_acc": _accuracy(s for p in prompts for s in p["loose"]),
        "n_prompts": len(prompts),
        "n_instructions": sum(len(p["strict"]) for p in prompts),
        "unmatched_responses": unmatched,
        "missing_responses": len(by_prompt) - len(answered),
        "per_instruction": {k: _accuracy(v) for k, v in sorted(per_strict.items())},
        "per_instruction_loose": {k: _accuracy(v) for k, v in sorted(per_loose.items())},
        "prompts": prompts,
    }


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """The records of a JSONL file, each an object with the `required` string fields, else IFEvalInputError."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise IFEvalInputError(f"{path}: cannot read: {err}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise IFEvalInputError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise IFEvalInputError(f"{path}:{number}: a record must be a JSON object")
        for field in required:
            if not isinstance(record.get(field), str):
                raise IFEvalInputError(f"{path}:{number}: field {field!r} must be a string")
        record["_line"] = number
        records.append(record)
    if not records:
        raise IFEvalInputError(f"{path}: no records")
    return records

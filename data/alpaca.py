"""Alpaca records: load, validate, tokenize with the prompt masked.

This is where Alpaca's correctness lives: a prompt token left unmasked or a missing EOS
silently trains a worse model, so the conventions are few and fixed (docs/DATA.md):

    seq    = [BOS] + encode(prompt) + encode(output) + [EOS], cut to max_len
    tokens = seq[:-1]
    labels = seq[1:], with every label whose target is a prompt token set to IGNORE_INDEX

so labels[t] is the target for logits[t] and nobody downstream shifts again. Prompt and output
are encoded separately and the id lists concatenated, so the prompt/response boundary is exact
and the unmasked labels decode to exactly `output` + EOS (Stanford encodes prompt and
prompt+output separately and masks by the prompt's length, which can be off by one token where
sentencepiece merges across the boundary). The targets are the same ones Stanford trains on
for a 512-token cut: its 512 inputs give 511 predictions, ours give the same 511.

Chat templates (data/prompts.py, "llama3_chat") differ in two ways: the template's control tokens
(`<|start_header_id|>`, `<|eot_id|>`, ...) become their ids while the fields are encoded as text,
and the response ends with the template's "response_end" (`<|eot_id|>`) instead of EOS:

    seq = [BOS] + <user turn> + <assistant header> + encode(output) + [<|eot_id|>]

so the trained labels are exactly the assistant's content and its end-of-turn token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.prompts import format_prompt, get_template, template_name

IGNORE_INDEX = -100


class DataError(ValueError):
    """A problem with the user's data or data config, as one printable line (CLIs exit 2)."""


_JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}


def _type_name(v: Any) -> str:
    """The JSON name of a parsed value's type, as the user wrote it in the file."""
    return "null" if v is None else _JSON_TYPES.get(type(v), type(v).__name__)


def check_record(rec: Any) -> str | None:
    """What is wrong with one record ("field 'output': missing"), or None if it is valid."""
    if not isinstance(rec, dict):
        return f"expected an object with instruction/input/output, got {_type_name(rec)}"
    for field in ("instruction", "output"):
        if field not in rec:
            return f"field '{field}': missing"
        if not isinstance(rec[field], str):
            return f"field '{field}': expected a string, got {_type_name(rec[field])}"
        if not rec[field].strip():
            return f"field '{field}': empty"
    if "input" in rec and not isinstance(rec["input"], str):
        return f"field 'input': expected a string, got {_type_name(rec['input'])}"
    return None


def _parses_as_one_value(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def parse_records(text: str, path: str) -> list[tuple[str, Any]]:
    """Split a file's text into (label, raw record) pairs: a JSON list ("record 7", 0-based
    index) or JSON Lines ("line 8", 1-based, as editors count). Malformed JSON raises DataError."""
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path}: empty file, expected a JSON list or JSON Lines of records")
    if stripped[0] == "[" and not path.endswith(".jsonl"):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        return [(f"record {i}", rec) for i, rec in enumerate(items)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            if not out and _parses_as_one_value(text):  # e.g. a pretty-printed {"data": [...]}
                raise DataError(f"{path}: expected a JSON list of records or JSON Lines, got one "
                                f"{_type_name(json.loads(text))}") from None
            raise DataError(f"{path}: line {n}: invalid JSON at column {e.colno}: {e.msg}") from None
    return out


def read_records(path: str | Path, skip_invalid: bool = False, text: str | None = None
                 ) -> tuple[list[dict], list[int], list[str]]:
    """Load and validate a file: (valid records, their index in the file, one message per
    skipped record). The first invalid record raises DataError unless skip_invalid."""
    path = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read: {e}") from None
    records, indices, skipped = [], [], []
    for i, (label, rec) in enumerate(parse_records(text, path)):
        problem = check_record(rec)
        if problem is None:
            records.append(rec)
            indices.append(i)
        elif skip_invalid:
            skipped.append(f"{path}: {label}: {problem}")
        else:
            raise DataError(f"{path}: {label}: {problem}")
    if not records:
        raise DataError(f"{path}: no valid records")
    return records, indices, skipped


def load_records(path: str | Path, skip_invalid: bool = False) -> list[dict]:
    """The valid records of a JSON list or JSONL file (see read_records for the skip count)."""
    return read_records(path, skip_invalid)[0]


_CONTROL_TOKEN = re.compile(r"(<\|[A-Za-z0-9_]+\|>)")


def encode_template_text(tokenizer, text: str, template) -> list[int]:
    """Text written by a template (never by a user): its control tokens become their ids, the
    text between them is encoded as text."""
    ids: list[int] = []
    specials = tokenizer.special_ids
    for i, part in enumerate(_CONTROL_TOKEN.split(text)):
        if i % 2 == 0:
            ids += tokenizer.encode(part) if part else []
        elif part in specials:
            ids.append(specials[part])
        else:
            raise DataError(f"template {template_name(template)!r} needs the control token {part}, which "
                            f"tokenizer {tokenizer.path} does not have (use the model's own tokenizer)")
    return ids


def _encode_chat(tokenizer, text: str, fields: Mapping[str, str], template) -> list[int]:
    """Split the template text at its control tokens *before* substituting the fields, so a
    field that contains "<|eot_id|>" stays text; each stretch between control tokens (e.g. the
    whole user message) is then encoded as one text, as Meta's and HF's chat formats do."""
    ids: list[int] = []
    for i, part in enumerate(_CONTROL_TOKEN.split(text)):
        if i % 2 == 0:
            ids += tokenizer.encode(part.format_map(fields)) if part else []
        else:
            ids += encode_template_text(tokenizer, part, template)
    return ids


def encode_prompt(tokenizer, record: Mapping[str, str], template: str | Mapping[str, str] = "alpaca"
                  ) -> list[int]:
    """[BOS] + the templated prompt: the prefix training puts before every response, and so the
    exact prefix chat and evaluation must feed the model."""
    t = get_template(template)
    if "response_end" not in t:
        return [tokenizer.bos_id] + tokenizer.encode(format_prompt(record, template))
    fields = {"instruction": record["instruction"], "input": record.get("input") or ""}
    key = "prompt_input" if fields["input"] != "" else "prompt_no_input"
    return [tokenizer.bos_id] + _encode_chat(tokenizer, t[key], fields, template)


def response_end_ids(tokenizer, template: str | Mapping[str, str] = "alpaca") -> list[int]:
    """What follows a response: [EOS], or a chat template's end of turn (Llama 3: <|eot_id|>)."""
    t = get_template(template)
    if "response_end" not in t:
        return [tokenizer.eos_id]
    return encode_template_text(tokenizer, t["response_end"], template)


def encode_example(tokenizer, record: Mapping[str, str], template: str | Mapping[str, str] = "alpaca"
                   ) -> tuple[list[int], int]:
    """The untruncated sequence [BOS] + prompt + output + [EOS] and its prompt length (with BOS)."""
    prompt = encode_prompt(tokenizer, record, template)
    return prompt + tokenizer.encode(record["output"]) + response_end_ids(tokenizer, template), len(prompt)


def labels_from_seq(seq: list[int], prompt_len: int) -> tuple[list[int], list[int]]:
    """(tokens, labels) from a sequence and its prompt length: shift by one, mask the targets
    that are prompt tokens. seq[1:prompt_len] are prompt targets, i.e. labels[:prompt_len - 1]."""
    tokens, labels = list(seq[:-1]), list(seq[1:])
    n_masked = min(prompt_len - 1, len(labels))
    labels[:n_masked] = [IGNORE_INDEX] * n_masked
    return tokens, labels


def tokenize_example(tokenizer, record: Mapping[str, str], template: str | Mapping[str, str] = "alpaca",
                     max_len: int = 512) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels), both of length min(len(seq), max_len) - 1, or None when the prompt
    alone (with BOS) reaches max_len: such a row has no target and must not be trained on."""
    seq, prompt_len = encode_example(tokenizer, record, template)
    if prompt_len >= max_len:
        return None
    return labels_from_seq(seq[:max_len], prompt_len)

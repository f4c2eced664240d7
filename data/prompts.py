"""Prompt templates, kept as data so a new language is a new dict entry, not a new code path.

The "alpaca" entry is Stanford Alpaca's PROMPT_DICT verbatim. Both variants end in
"### Response:" with no trailing newline: the response tokens are encoded separately and
sentencepiece's dummy prefix gives them their leading space, exactly as at inference time
(tools/chat.py formats the same prompt and lets the model continue it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

TEMPLATES: dict[str, dict[str, str]] = {
    "alpaca": {
        "prompt_input": (
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
        ),
        "prompt_no_input": (
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:"
        ),
    },
    # The same structure in Korean (the phrasing used by Korean Alpaca derivatives), for the
    # Korean self-instruct data that generate/ can produce.
    "korean": {
        "prompt_input": (
            "아래는 작업을 설명하는 명령어와 추가 맥락을 제공하는 입력이 짝을 이루는 예제입니다. "
            "요청을 적절히 완료하는 응답을 작성하세요.\n\n"
            "### 명령어:\n{instruction}\n\n### 입력:\n{input}\n\n### 응답:"
        ),
        "prompt_no_input": (
            "아래는 작업을 설명하는 명령어입니다. "
            "요청을 적절히 완료하는 응답을 작성하세요.\n\n"
            "### 명령어:\n{instruction}\n\n### 응답:"
        ),
    },
}

_KEYS = ("prompt_input", "prompt_no_input")


def get_template(template: str | Mapping[str, str]) -> dict[str, str]:
    """Resolve a template name (a key of TEMPLATES, or a path to a JSON file holding the two
    keys) to its dict, so configs can name one without code changes. Raises ValueError."""
    if isinstance(template, Mapping):
        found = dict(template)
        where = "template"
    elif template in TEMPLATES:
        return TEMPLATES[template]
    elif str(template).endswith(".json") and Path(template).is_file():
        try:
            found = json.loads(Path(template).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{template}: cannot read template: {e}") from None
        where = str(template)
    else:
        raise ValueError(f"unknown template {template!r} (known: {', '.join(TEMPLATES)}, or a .json file)")
    if not isinstance(found, dict) or any(not isinstance(found.get(k), str) for k in _KEYS):
        raise ValueError(f"{where}: a template needs string fields {', '.join(_KEYS)}")
    return {k: found[k] for k in _KEYS}


def template_name(template: str | Mapping[str, str]) -> str:
    """A short printable name for logs and cache keys."""
    return template if isinstance(template, str) else "custom"


def format_prompt(record: Mapping[str, str], template: str | Mapping[str, str] = "alpaca") -> str:
    """The prompt for one record, as Stanford's train.py builds it: the with-input variant when
    `input` is a non-empty string, otherwise the no-input variant."""
    t = get_template(template)
    fields = {"instruction": record["instruction"], "input": record.get("input") or ""}
    key = "prompt_input" if fields["input"] != "" else "prompt_no_input"
    return t[key].format_map(fields)

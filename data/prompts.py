"""Prompt templates, kept as data so a new language is a new dict entry, not a new code path.

The "alpaca" entry is Stanford Alpaca's PROMPT_DICT verbatim. Both variants end in
"### Response:" with no trailing newline: the response tokens are encoded separately and
sentencepiece's dummy prefix gives them their leading space, exactly as at inference time
(tools/chat.py formats the same prompt and lets the model continue it).

A template with a "response_end" key is a chat template ("llama3_chat"): its text holds control
tokens such as `<|eot_id|>`, which data/alpaca.py maps to their ids (only the template's own text
can produce them; the fields are always encoded as text), and the response is followed by
"response_end" instead of EOS.
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
    # Meta's Llama 3 / 3.1 instruct format (llama_models ChatFormat): the instruction (and input,
    # after a blank line) as the user turn, then the assistant header the response follows. The
    # response ends with <|eot_id|>, the token Llama 3 instruct models end a turn with. No system
    # turn: Meta's format adds none unless asked (HF's 3.1 chat template adds a dated one).
    "llama3_chat": {
        "prompt_input": (
            "<|start_header_id|>user<|end_header_id|>\n\n{instruction}\n\n{input}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        "prompt_no_input": (
            "<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        "response_end": "<|eot_id|>",
    },
}

_KEYS = ("prompt_input", "prompt_no_input")
_OPTIONAL_KEYS = ("response_end",)


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
    if any(k in found and not isinstance(found[k], str) for k in _OPTIONAL_KEYS):
        raise ValueError(f"{where}: 'response_end' must be a string")
    return {k: found[k] for k in _KEYS + _OPTIONAL_KEYS if k in found}


def is_chat_template(template: str | Mapping[str, str]) -> bool:
    """True when the template writes control tokens and ends responses with "response_end"."""
    return "response_end" in get_template(template)


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

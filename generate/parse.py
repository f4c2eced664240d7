"""Turns a model's numbered task list back into (instruction, input, output) records.

Models do not follow the format perfectly, so this tolerates what they really return: the
list cut off mid-item when `finish_reason == "length"` (the last item is dropped, as it may be
incomplete), extra whitespace and blank lines, full-width colons, `###` separators, Korean or
English field labels, a missing `Input:` line (= no input), and a response that starts inside
the first item because the prompt already opened it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from generate.seeds import Task

_COLON = r"\s*[:：]"
_NUM = r"(\d+)\s*[.)．]\s*"
# An item starts at a line "N. Instruction:" (or "N. 지시:" / "N. 지시문:").
_ITEM = re.compile(rf"^[ \t]*{_NUM}(?:Instruction|지시문|지시){_COLON}", re.MULTILINE | re.IGNORECASE)
# Input/Output labels at the start of a line, optionally numbered like Alpaca's "3. Input:".
_INPUT = re.compile(rf"^[ \t]*(?:\d+\s*[.)．]\s*)?(?:Input|입력){_COLON}", re.MULTILINE | re.IGNORECASE)
_OUTPUT = re.compile(rf"^[ \t]*(?:\d+\s*[.)．]\s*)?(?:Output|출력){_COLON}", re.MULTILINE | re.IGNORECASE)
_NOINPUT = {"<noinput>", "<no input>", "<입력 없음>", "<입력없음>", "없음", "none", "n/a"}


@dataclass
class Parsed:
    tasks: list[Task] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> count


def _clean(text: str) -> str:
    text = text.replace("###", "")
    # Collapse runs of spaces/tabs inside lines, keep line breaks (outputs can be lists or code).
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.strip().splitlines()]
    return "\n".join(lines).strip()


def _split_item(body: str) -> tuple[str, str, str]:
    out_m = _OUTPUT.search(body)
    head, output = (body[:out_m.start()], body[out_m.end():]) if out_m else (body, "")
    in_m = _INPUT.search(head)
    instruction, inp = (head[:in_m.start()], head[in_m.end():]) if in_m else (head, "")
    inp = _clean(inp)
    if inp.lower() in _NOINPUT:
        inp = ""
    return _clean(instruction), inp, _clean(output)


def parse_response(text: str, finish_reason: str | None, next_number: int) -> Parsed:
    """Parse one response. `next_number` is the item the prompt left open (k + 1)."""
    result = Parsed()
    if not _ITEM.match(text.lstrip("\n")):
        # The prompt ends with "N. Instruction:", so the reply usually starts inside item N.
        text = f"{next_number}. Instruction: {text.lstrip()}"
    starts = list(_ITEM.finditer(text))
    for k, m in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(text)
        if k == len(starts) - 1 and finish_reason == "length":
            result.dropped["truncated"] += 1
            continue
        instruction, inp, output = _split_item(text[m.end():end])
        if not instruction:
            result.dropped["malformed"] += 1
            continue
        result.tasks.append(Task(instruction, inp, output))
    return result

"""Builds one request prompt: the template, then a few example tasks, then the next item's label.

Why the prompt ends with the next item's open label: a completions model simply continues the
list, and a chat model reads it as "go on from here"; the same text serves both APIs, so the
two modes generate from identical prompts.
"""

from __future__ import annotations

from generate.seeds import Task

# Field labels by language. The parser accepts both sets whatever the mode.
LABELS = {
    "en": ("Instruction", "Input", "Output", "<noinput>"),
    "ko": ("지시", "입력", "출력", "<입력 없음>"),
}


def render_task(number: int, task: Task, lang: str) -> str:
    instruction, inp, out, noinput = LABELS[lang]
    return (f"{number}. {instruction}: {task.instruction}\n"
            f"{inp}: {task.input if task.input else noinput}\n"
            f"{out}: {task.output}\n\n")


def build_prompt(template: str, examples: list[Task], lang: str, num_tasks: int) -> str:
    """Fill `{num_tasks}`, `{next}` and `{examples}` (plain replacement: examples may hold braces)."""
    rendered = "".join(render_task(i, t, lang) for i, t in enumerate(examples, 1))
    return (template.replace("{num_tasks}", str(num_tasks))
            .replace("{next}", str(len(examples) + 1))
            .replace("{examples}", rendered)).rstrip("\n")

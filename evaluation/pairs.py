"""The judge's inputs and its one question: the reference set and the model's responses matched
into pairs, the order each pair is shown in, the prompt, and reading the verdict.

Why the order is a pure function of (seed, pair index): anyone can recompute which output was
shown first from the report alone, and a resumed run asks exactly the questions the first one did.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from data.alpaca import DataError, parse_records, read_records
from generate.errors import UserError

DEFAULT_PROMPT = Path(__file__).resolve().parent / "prompts" / "judge.txt"
PLACEHOLDERS = ("instruction", "output_a", "output_b")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
# The verdict line: "Output (a)", optionally in bold, quotes or backticks, with a final period.
_VERDICT_RE = re.compile(r"^[\s*_`\"']*output\s*\(\s*([ab])\s*\)[\s*_`\"'.]*$", re.IGNORECASE)


@dataclass
class Pair:
    index: int  # position among the matched pairs, in reference-file order
    instruction: str
    input: str
    model: str  # the model's response
    reference: str  # the reference output


def _key(instruction: str, inp: str) -> tuple[str, str]:
    return instruction.strip(), inp.strip()


def _read(path: str, label: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except FileNotFoundError:
        raise UserError(f"{path}: no such {label} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read {label} file: {e}") from None


def load_references(path: str) -> list[dict]:
    """`{instruction, input?, output}` records (AlpacaEval's set, or any model's outputs)."""
    text = _read(path, "reference")
    try:
        records, indices, _ = read_records(path, text=text)
        labels = [label for label, _ in parse_records(text, path)]
    except DataError as e:
        raise UserError(str(e)) from None
    return _unique(records, [labels[i] for i in indices], path)


def load_responses(path: str) -> list[dict]:
    """Lines with `instruction`, `input`? and `response`, as `python -m tools.eval generate` writes."""
    try:
        raw = parse_records(_read(path, "responses"), path)
    except DataError as e:
        raise UserError(str(e)) from None
    records, labels = [], []
    for label, rec in raw:
        if not isinstance(rec, dict):
            raise UserError(f"{path}: {label}: expected an object with instruction/input/response")
        for field, required in (("instruction", True), ("response", True), ("input", False)):
            if field not in rec:
                if required:
                    raise UserError(f"{path}: {label}: field '{field}': missing")
                continue
            if not isinstance(rec[field], str):
                raise UserError(f"{path}: {label}: field '{field}': expected a string")
        records.append(rec)
        labels.append(label)
    if not records:
        raise UserError(f"{path}: no responses")
    return _unique(records, labels, path)


def _unique(records: list[dict], labels: list[str], path: str) -> list[dict]:
    """A key twice would make the match ambiguous: say where."""
    seen: dict[tuple[str, str], str] = {}
    for rec, label in zip(records, labels, strict=True):
        key = _key(rec["instruction"], rec.get("input", ""))
        if key in seen:
            raise UserError(f"{path}: {label}: same instruction and input as {seen[key]}")
        seen[key] = label
    return records


def match(references: list[dict], responses: list[dict]) -> tuple[list[Pair], int, int]:
    """Pairs in reference order; (pairs, responses without a reference, references without a response)."""
    by_key = {_key(r["instruction"], r.get("input", "")): r for r in responses}
    pairs, used = [], set()
    for ref in references:
        key = _key(ref["instruction"], ref.get("input", ""))
        resp = by_key.get(key)
        if resp is None:
            continue
        used.add(key)
        pairs.append(Pair(len(pairs), ref["instruction"], ref.get("input", ""), resp["response"], ref["output"]))
    return pairs, len(by_key) - len(used), len(references) - len(pairs)


def model_first(seed: int, index: int) -> bool:
    """Whether pair `index` shows the model's output as (a): a fair coin seeded by (seed, index)."""
    return random.Random(f"{seed}:{index}").random() < 0.5


def load_template(path: str | Path | None) -> str:
    path = Path(path) if path else DEFAULT_PROMPT
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read judge prompt ({e.strerror})") from None
    for name in PLACEHOLDERS:
        if template.count("{" + name + "}") != 1:
            raise UserError(f"{path}: the judge prompt must contain {{{name}}} exactly once")
    return template


def build_prompt(template: str, pair: Pair, first_is_model: bool) -> str:
    """The template filled in one pass, so an output that itself contains "{output_b}" stays text."""
    instruction = pair.instruction + (f"\n\n{pair.input}" if pair.input.strip() else "")
    a, b = (pair.model, pair.reference) if first_is_model else (pair.reference, pair.model)
    values = {"instruction": instruction, "output_a": a, "output_b": b}
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def parse_verdict(text: str) -> str | None:
    """"a" or "b" from the last non-empty line, or None: an answer we cannot read is never guessed."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    m = _VERDICT_RE.match(lines[-1])
    return m.group(1).lower() if m else None

"""Held-out exact match: does the model answer an unseen instruction exactly, and then stop?

Why exact match: the tiny default's tasks have one short correct answer each, so a greedy
decode either reproduces it and emits EOS, or it does not. Loss alone cannot show that a model
stops: a response that is right and then rambles scores 0 here, because generation only ends
at EOS (or `max_new_tokens`) and the whole decoded response is compared.

Decoding goes through `model.sampling.generate` (greedy, KV cache), the same path
`tools.chat` uses, so this also checks the cache against what training learned.

    python -m train.evaluate --ckpt runs/tiny/final --data runs/tiny/assets/heldout.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from model.sampling import generate
from model.tokenizer import Tokenizer


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Alpaca-format records from a JSON list or a JSONL file."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def prompt_ids(tokenizer: Tokenizer, record: dict[str, Any], template: str) -> list[int]:
    """BOS + the templated prompt: exactly the prefix training put before each response."""
    from data.prompts import format_prompt  # the data pipeline's templates, the single source

    return [tokenizer.bos_id] + tokenizer.encode(format_prompt(record, template))


def respond(model: torch.nn.Module, tokenizer: Tokenizer, record: dict[str, Any], template: str = "alpaca",
            max_new_tokens: int = 32) -> str:
    """The greedy response to one record, decoded, stopping at EOS."""
    ids = generate(model, prompt_ids(tokenizer, record, template), max_new_tokens, temperature=0.0,
                   eos_id=tokenizer.eos_id)
    return tokenizer.decode(ids)


def evaluate_records(model: torch.nn.Module, tokenizer: Tokenizer, records: list[dict[str, Any]] | str | Path,
                     template: str = "alpaca", max_new_tokens: int = 32) -> dict[str, Any]:
    """Accuracy plus a per-family breakdown and the misses, for reading what failed.

    A record counts as correct when the decoded response, stripped of surrounding whitespace,
    equals `output` stripped. Records without a `family` key are grouped under "all".
    """
    if isinstance(records, (str, Path)):
        records = load_records(records)
    if not records:
        raise ValueError("no records to evaluate")
    was_training = model.training
    model.eval()
    per_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # family -> [correct, total]
    misses = []
    for record in records:
        got = respond(model, tokenizer, record, template, max_new_tokens).strip()
        ok = got == record["output"].strip()
        tally = per_family[record.get("family", "all")]
        tally[0] += ok
        tally[1] += 1
        if not ok:
            misses.append({"instruction": record["instruction"], "input": record.get("input", ""),
                           "expected": record["output"], "got": got})
    model.train(was_training)
    correct = sum(c for c, _ in per_family.values())
    return {
        "accuracy": correct / len(records),
        "n": len(records),
        "per_family": {k: round(c / n, 4) for k, (c, n) in sorted(per_family.items())},
        "misses": misses,
    }


def exact_match(model: torch.nn.Module, tokenizer: Tokenizer, records: list[dict[str, Any]] | str | Path,
                template: str = "alpaca", max_new_tokens: int = 32) -> float:
    """Fraction of records whose greedy response (to EOS) equals `output` exactly."""
    return evaluate_records(model, tokenizer, records, template, max_new_tokens)["accuracy"]


def format_result(accuracy: float, n: int) -> str:
    """The one line `make train` ends with (the train loop prints it; kept here so it is one string)."""
    return f"exact-match accuracy on {n} held-out prompts: {accuracy:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Greedy exact-match accuracy of a checkpoint on Alpaca records.")
    parser.add_argument("--ckpt", required=True, help="project checkpoint directory (config.json, safetensors)")
    parser.add_argument("--data", required=True, help="Alpaca-format JSON/JSONL with the expected outputs")
    parser.add_argument("--tokenizer", help="tokenizer.model (default: the one inside --ckpt)")
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--limit", type=int, help="evaluate only the first N records")
    parser.add_argument("--show-misses", type=int, default=5, help="print up to N wrong answers")
    args = parser.parse_args(argv)

    from model.checkpoint import load_model

    tok_path = Path(args.tokenizer) if args.tokenizer else Path(args.ckpt) / "tokenizer.model"
    for path, what in ((Path(args.ckpt), "checkpoint"), (Path(args.data), "data file"), (tok_path, "tokenizer")):
        if not path.exists():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 2
    try:
        records = load_records(args.data)
    except json.JSONDecodeError as e:
        print(f"error: {args.data} is not valid JSON/JSONL: {e}", file=sys.stderr)
        return 2
    records = records[: args.limit] if args.limit else records
    bad = next((i for i, r in enumerate(records)
                if not isinstance(r, dict) or not isinstance(r.get("instruction"), str)
                or not isinstance(r.get("output"), str)), None)
    if bad is not None:
        print(f"error: {args.data}: record {bad} needs string 'instruction' and 'output'", file=sys.stderr)
        return 2
    model = load_model(args.ckpt)
    result = evaluate_records(model, Tokenizer(tok_path), records, args.template, args.max_new_tokens)
    for miss in result["misses"][: args.show_misses]:
        print(f"miss: {miss['instruction']!r} {miss['input']!r} -> {miss['got']!r} (want {miss['expected']!r})")
    print(json.dumps({"per_family": result["per_family"]}, ensure_ascii=False))
    print(format_result(result["accuracy"], result["n"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

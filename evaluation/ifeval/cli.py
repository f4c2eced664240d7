"""`python -m tools.eval ifeval`: score a JSONL of responses on IFEval's verifiable instructions."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from evaluation.ifeval.scoring import IFEvalInputError, read_jsonl, score

_HEADLINE = (
    ("prompt-level strict", "prompt_level_strict_acc"),
    ("instruction-level strict", "inst_level_strict_acc"),
    ("prompt-level loose", "prompt_level_loose_acc"),
    ("instruction-level loose", "inst_level_loose_acc"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.eval ifeval",
        description="Score responses on IFEval's verifiable instructions (Zhou et al. 2023), strict and loose, "
        "at prompt and instruction level. Responses are matched to data records by their prompt text.",
        epilog="Exit status: 0 scored; 2 bad input (a missing or malformed file or record, no response "
        "matching any prompt, or with --require-all an unmatched response or an unanswered prompt).",
    )
    parser.add_argument("--responses", required=True, type=Path, help="JSONL, one {prompt, response} a line")
    parser.add_argument("--data", required=True, type=Path, help="IFEval input data JSONL {key, prompt, instruction_id_list, kwargs}")
    parser.add_argument("--out", required=True, type=Path, help="where to write the JSON report")
    parser.add_argument(
        "--require-all", action="store_true", help="every response must answer a data prompt and every prompt must have one"
    )
    return parser


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def format_table(report: dict) -> str:
    rows = [f"IFEval: {report['n_prompts']} prompts, {report['n_instructions']} instructions"]
    rows += [f"  {label:<26}{100 * report[key]:6.2f}" for label, key in _HEADLINE]
    rows.append(f"  {'instruction':<46}{'strict':>7}{'loose':>7}")
    for instruction, strict in report["per_instruction"].items():
        loose = report["per_instruction_loose"][instruction]
        rows.append(f"  {instruction:<46}{100 * strict:7.1f}{100 * loose:7.1f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        data = read_jsonl(args.data, ("prompt",))
        responses = read_jsonl(args.responses, ("prompt", "response"))
        report = score(responses, data, responses_name=str(args.responses), data_name=str(args.data))
        if report["n_prompts"] == 0:
            raise IFEvalInputError(f"{args.responses}: no response answers a prompt of {args.data}")
        if args.require_all and (report["unmatched_responses"] or report["missing_responses"]):
            raise IFEvalInputError(
                f"{args.responses}: --require-all: {report['unmatched_responses']} responses match no prompt of "
                f"{args.data} and {report['missing_responses']} of its prompts have no response"
            )
    except IFEvalInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if report["unmatched_responses"] or report["missing_responses"]:
        print(
            f"note: {report['unmatched_responses']} responses match no prompt of {args.data} and are left out; "
            f"{report['missing_responses']} of its prompts have no response"
        )
    print(format_table(report))
    try:
        write_json_atomic(args.out, report)
    except OSError as err:
        print(f"error: {args.out}: cannot write: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0

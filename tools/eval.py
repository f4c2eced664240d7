"""`python -m tools.eval COMMAND ...`: evaluate a checkpoint or any model's responses.

    generate   responses of a checkpoint to Alpaca or IFEval prompts, batched, resumable (JSONL)
    ifeval     score responses on IFEval's verifiable instructions (strict and loose)
    judge      pairwise comparison against reference outputs by an LLM judge (win rates)
    all        the three for one checkpoint, into <run>/eval/ with a summary table (make eval)

Each command has its own --help. Exit status: 0 done; 1 the work stopped early (e.g. the judge's
budget); 2 bad input (a missing or malformed file, a checkpoint that does not load, no match).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"generate": "evaluation.generation", "ifeval": "evaluation.ifeval.cli", "judge": "evaluation.judge",
            "all": "evaluation.suite"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m tools.eval {" + ",".join(COMMANDS) + "} ...\n" + __doc__.split("\n", 1)[1].rstrip())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

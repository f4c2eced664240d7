"""`python -m tools.eval all` (`make eval`): the whole evaluation of one checkpoint, resumable.

    1. responses to IFEval's prompts (generation is journaled: a rerun continues where it stopped)
    2. IFEval scored offline
    3. with --reference and --judge-config: responses to the reference instructions, then the
       pairwise judge against the reference outputs

Everything goes under `<run>/eval/` (the checkpoint's run directory, or --out): the responses,
`ifeval.json`, the judge's directory, and `summary.md`, a table of the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from evaluation import generation, judge
from evaluation.ifeval import cli as ifeval_cli

IFEVAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ifeval_input_data.jsonl"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _respond(ckpt: str, data: str, responses: Path, gen_args: list[str]) -> int:
    """Generate unless a finished responses file for every record of `data` is already there
    (a rerun of `make eval` then only scores); an unfinished one resumes from its journal."""
    if responses.is_file():
        text = Path(data).read_text(encoding="utf-8")
        is_list = text.lstrip().startswith("[")  # a JSON list, else JSON Lines
        try:
            n_data = len(json.loads(text)) if is_list else sum(1 for line in text.splitlines() if line.strip())
        except ValueError:  # malformed: generation names the record in its one-line error
            n_data = -1
        n_done = sum(1 for line in responses.read_text(encoding="utf-8").splitlines() if line.strip())
        if n_done == n_data:
            print(f"using the finished {responses} (delete it to generate again)")
            return 0
    return generation.main(["--ckpt", ckpt, "--data", data, "--out", str(responses), *gen_args])


def run_ifeval(ckpt: str, data: str, out: Path, gen_args: list[str]) -> dict | None:
    """Responses of `ckpt` to the IFEval prompts in `data`, scored; the report, or None on failure."""
    responses = out / "ifeval_responses.jsonl"
    if _respond(ckpt, data, responses, gen_args) != 0:
        return None
    report = out / "ifeval.json"
    if ifeval_cli.main(["--responses", str(responses), "--data", data, "--out", str(report)]) != 0:
        return None
    return json.loads(report.read_text(encoding="utf-8"))


def summary(ckpt: str, ifeval: dict | None, judged: dict | None) -> str:
    lines = [f"# Evaluation of {ckpt}", "", "| benchmark | metric | value |", "|---|---|---|"]
    if ifeval is not None:
        for key in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                    "inst_level_loose_acc"):
            lines.append(f"| IFEval | {key} | {100 * ifeval[key]:.2f} |")
    if judged is not None:
        se = judged.get("win_rate_se")
        lines.append(f"| pairwise judge | win rate | {100 * judged['win_rate']:.2f}"
                     + (f" ± {100 * se:.2f} |" if se is not None else " |"))
        lines.append(f"| pairwise judge | length-controlled win rate | {100 * judged['lc_win_rate']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.eval all", description=__doc__.splitlines()[0],
        epilog="Exit status: 0 done; 1 a step stopped early (its work kept; rerun to continue); "
               "2 bad input (a checkpoint that does not load, a missing or malformed file).")
    p.add_argument("--ckpt", required=True, help="an exported checkpoint (e.g. runs/tiny/final)")
    p.add_argument("--ifeval-data", default=str(IFEVAL_DATA), help="IFEval's input_data.jsonl")
    p.add_argument("--reference", default=None, help="instructions with reference outputs (JSON/JSONL)")
    p.add_argument("--judge-config", default=None, help="the judge's YAML (configs/judge.yaml)")
    p.add_argument("--out", default=None, help="output directory (default: <ckpt>/../eval)")
    p.add_argument("--batch-size", default="16")
    p.add_argument("--max-new-tokens", default="256")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    ns = p.parse_args(argv)
    if not Path(ns.ckpt).is_dir():
        print(f"error: --ckpt {ns.ckpt}: not a checkpoint directory", file=sys.stderr)
        return 2
    if not Path(ns.ifeval_data).is_file():
        print(f"error: --ifeval-data {ns.ifeval_data}: file not found (IFEval's input_data.jsonl)", file=sys.stderr)
        return 2
    if (ns.reference is None) != (ns.judge_config is None):
        print("error: the judge needs both --reference and --judge-config", file=sys.stderr)
        return 2
    out = Path(ns.out) if ns.out else Path(ns.ckpt).resolve().parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    gen_args = ["--batch-size", ns.batch_size, "--max-new-tokens", ns.max_new_tokens]
    gen_args += (["--device", ns.device] if ns.device else []) + (["--dtype", ns.dtype] if ns.dtype else [])

    ifeval = run_ifeval(ns.ckpt, ns.ifeval_data, out, gen_args)
    if ifeval is None:
        return 2
    judged = None
    if ns.reference is not None:
        responses = out / "reference_responses.jsonl"
        if _respond(ns.ckpt, ns.reference, responses, gen_args) != 0:
            return 2
        judge_dir = out / "judge"
        rc = judge.main(["--responses", str(responses), "--reference", ns.reference, "--config", ns.judge_config,
                         f"output_dir={judge_dir}"])
        if rc != 0:
            return rc
        judged = json.loads((judge_dir / "report.json").read_text(encoding="utf-8"))
    _write_atomic(out / "summary.md", summary(ns.ckpt, ifeval, judged))
    print(f"wrote {out / 'summary.md'}")
    return 0

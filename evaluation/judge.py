"""Pairwise judge, AlpacaEval-style: win rates of a model's responses against reference outputs.

For each instruction an LLM judge picks the better of the model's response and the reference
output; the report has the win rate and the length-controlled win rate. The judge is any chat model behind the openai client (OpenAI, vLLM, llama.cpp), reached through
the generator's client: bounded retries, request shapes adapted to the server, reasoning models,
dated prices and the cost cap, the Batch API (api=batch) and the resume journal. Each pair shows
the two outputs in an order drawn from (seed, pair index); a verdict that cannot be read is
counted as unparseable and left out of the rates, never guessed. Identical outputs are a tie
(0.5) without asking. Outputs in output_dir: journal.jsonl (resume: run the same command again;
nothing is paid for twice), judgments.jsonl and report.json (both written atomically).

Exit status: 0 done; 1 stopped early (cost cap, budget, a server that went down; work kept); 2 bad
input (files, config, a judge that cannot be reached at all)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from evaluation.judge_config import JudgeConfig, load_judge_config
from evaluation.pairs import (
    Pair,
    build_prompt,
    load_references,
    load_responses,
    load_template,
    match,
    model_first,
    parse_verdict,
)
from evaluation.winrate import L2_PENALTY, length_controlled, win_rate
from generate.client import ModelClient
from generate.config import api_key
from generate.endpoint import Completion
from generate.errors import StopRun, Unreachable, UserError
from generate.journal import Journal, atomic_write_text
from generate.pricing import check_priced, cost_usd, price_for

ORDER_RULE = "model shown first iff random.Random(f'{seed}:{index}').random() < 0.5"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Judge:
    """One judge run over matched pairs; `run()` resumes from the journal in output_dir."""

    def __init__(self, config: JudgeConfig, api_key: str, pairs: list[Pair], unmatched: tuple[int, int]) -> None:
        self.config = config
        self.pairs = pairs
        self.unmatched = unmatched  # (responses without a reference, references without a response)
        self.out = Path(config.output_dir)
        self.template = load_template(config.prompt_file)
        self.price_note = check_priced(config)  # a paid, capped judge without a price stops here
        self.price = price_for(config)
        self.client = ModelClient(config, api_key, on_adapt=self._on_adapt)
        self.prompts = {p.index: build_prompt(self.template, p, model_first(config.seed, p.index)) for p in pairs}
        self.answers: dict[int, Completion] = {}
        self.tokens = {"prompt": 0, "completion": 0, "cached": 0, "reasoning": 0}
        self.responses = 0  # judge answers paid for, resumed ones included (max_requests counts these)
        self.journal: Journal | None = None
        self.adaptations: list[dict] = []
        self.bar = None
        self.batch_state = ""  # shown in the progress bar while a batch runs

    # -- journal and accounting ------------------------------------------------------------------

    def _header(self) -> dict:
        """The settings that decide the verdicts; a resume must match them."""
        c, r = self.config, self.config.request
        return {"command": "judge", "model": c.model, "api": c.api, "seed": c.seed,
                "prompt_sha256": _sha(self.template),
                "sampling": [r.temperature, r.top_p, r.stop, r.reasoning_effort]}

    def _on_adapt(self, change: dict, why: str) -> None:
        """Journal a change of request shape so a resumed run starts adapted."""
        if self.journal is not None:
            self.journal.append({"type": "adapt", "change": change, "why": why}, sync=True)
        self.adaptations.append({**change, "why": why})

    def _count(self, comp: Completion) -> None:
        self.responses += 1
        for name, n in comp.tokens().items():
            self.tokens[name] += n

    def record(self, index: int, comp: Completion) -> None:
        """Journal an answer the moment it arrives: it has been paid for."""
        self._count(comp)
        self.answers[index] = comp
        self.journal.append({"type": "response", "batch": index, "prompt_sha256": _sha(self.prompts[index]),
                             **comp.to_record()})
        self.journal.append({"type": "batch_end", "batch": index}, sync=True)
        self._show()

    def cost_usd(self) -> float:
        discount = self.config.batch.discount if self.config.api == "batch" else 1.0
        return cost_usd(self.price, self.tokens, discount)

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.n = len(self.answers)
            state = f" {self.batch_state}" if self.batch_state else ""
            self.bar.set_postfix_str(f"cost=${self.cost_usd():.4f}{state}")

    # -- the loop --------------------------------------------------------------------------------

    def _stop_reason(self) -> str | None:
        c = self.config
        if c.max_cost_usd is not None and self.cost_usd() >= c.max_cost_usd:
            return f"max_cost_usd reached (${self.cost_usd():.4f} >= ${c.max_cost_usd})"
        if c.max_requests is not None and self.responses >= c.max_requests:
            return f"max_requests reached ({c.max_requests})"
        return None

    def run(self) -> tuple[str | None, bool]:
        """Judge every pair not yet judged; (stop reason or None when all are judged, unreachable)."""
        self.out.mkdir(parents=True, exist_ok=True)
        journal = self.journal = Journal(self.out / "journal.jsonl")
        replay = journal.open(self._header())
        self.client.replay_adaptations(replay.run_records)
        saved = [r for b in sorted(replay.batches) for r in replay.batches[b] if r["type"] == "response"]
        saved += [replay.pending_responses[b] for b in sorted(replay.pending_responses)]
        by_sha = {}
        for rec in saved:  # every saved answer was paid for, so all count towards the cost
            self._count(Completion.from_record(rec))
            by_sha[rec.get("prompt_sha256")] = rec
        todo = {}
        for pair in self.pairs:
            rec = by_sha.get(_sha(self.prompts[pair.index]))
            if rec is not None:
                self.answers[pair.index] = Completion.from_record(rec)
            elif pair.model != pair.reference:
                todo[pair.index] = self.prompts[pair.index]
        if self.config.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.answers) + len(todo), desc="judged", file=sys.stderr, dynamic_ncols=True)
            self._show()
        stop, unreachable = None, False
        try:
            stop = self._run_batch(todo, replay) if self.config.api == "batch" else self._run_sync(todo)
        except Unreachable as e:
            stop, unreachable = str(e), True
        except StopRun as e:
            stop = f"stopped early: {e}"
        finally:
            journal.close()
            if self.bar is not None:
                self.bar.close()
            if not unreachable:  # a judge that cannot be reached is bad input: no report of nothing
                self.write_outputs(stop)
        return stop, unreachable

    def _run_sync(self, todo: dict[int, str]) -> str | None:
        """Rounds of `concurrency` requests; the stop conditions are checked between rounds."""
        c = self.config
        items = sorted(todo.items())
        with ThreadPoolExecutor(max_workers=c.concurrency) as pool:
            while items:
                if (stop := self._stop_reason()) is not None:
                    return stop
                n = c.concurrency if c.max_requests is None else min(c.concurrency, c.max_requests - self.responses)
                chunk, items = items[:n], items[n:]
                futures = {pool.submit(self.client.complete, prompt): i for i, prompt in chunk}
                error = None
                for fut in as_completed(futures):
                    try:
                        self.record(futures[fut], fut.result())
                    except StopRun as e:
                        error = error or e
                if error is not None:
                    raise error
        return None

    def _run_batch(self, todo: dict[int, str], replay) -> str | None:
        """One Batch API job for what the money and max_requests allow (a journaled job is polled again)."""
        from generate.batch import answer_prompts

        c = self.config
        items = sorted(todo.items())
        stop = None
        if c.max_requests is not None and len(items) > c.max_requests - self.responses:
            items, stop = items[:max(c.max_requests - self.responses, 0)], f"max_requests reached ({c.max_requests})"
        if c.max_cost_usd is not None and self.price is not None and items:
            budget = self.client.endpoint.current_budget()
            worst = max(cost_usd(self.price, {"prompt": len(p) // 4, "completion": budget}, c.batch.discount)
                        for _, p in items)
            affordable = max(math.floor((c.max_cost_usd - self.cost_usd()) / worst), 0) if worst > 0 else len(items)
            if affordable < len(items):
                items, stop = items[:affordable], f"max_cost_usd would be exceeded (${c.max_cost_usd} at most)"
        if not items:
            return stop or self._stop_reason()
        answers = answer_prompts(self, replay, dict(items))
        for i in sorted(answers):
            self.record(i, answers[i])
        failed = len(items) - len(answers)
        if failed:
            return f"{failed} batch requests failed; run again to send them anew"
        return stop

    # -- results ---------------------------------------------------------------------------------

    def judgments(self) -> list[dict]:
        """One record per judged pair, in pair order; pairs still waiting for the judge are absent."""
        rows = []
        for pair in self.pairs:
            first_is_model = model_first(self.config.seed, pair.index)
            row = {"index": pair.index, "instruction": pair.instruction, "input": pair.input,
                   "shown_first": "model" if first_is_model else "reference",
                   "len_model": len(pair.model), "len_reference": len(pair.reference)}
            if pair.model == pair.reference:
                rows.append({**row, "verdict": None, "winner": "tie", "preference": 0.5})
                continue
            comp = self.answers.get(pair.index)
            if comp is None:
                continue
            shown = parse_verdict(comp.text)
            winner = None if shown is None else ("model" if (shown == "a") == first_is_model else "reference")
            preference = None if winner is None else float(winner == "model")
            rows.append({**row, "verdict": comp.text, "winner": winner, "preference": preference})
        return rows

    def report(self, rows: list[dict], stop: str | None) -> dict:
        judged = [r for r in rows if r["preference"] is not None]
        prefs = [r["preference"] for r in judged]
        rate, se = win_rate(prefs)
        lc = length_controlled(prefs, [r["len_model"] for r in judged], [r["len_reference"] for r in judged])
        c = self.config

        def r6(x):
            return None if x is None else round(x, 6)

        return {
            "judge_model": c.model, "api": c.api, "seed": c.seed, "order": ORDER_RULE,
            "n": len(judged), "n_pairs": len(self.pairs), "n_unparseable": len(rows) - len(judged),
            "n_ties": sum(r["winner"] == "tie" for r in rows), "n_pending": len(self.pairs) - len(rows),
            "n_unmatched": sum(self.unmatched),
            "unmatched": {"responses_without_reference": self.unmatched[0],
                          "references_without_response": self.unmatched[1]},
            "win_rate": r6(rate), "win_rate_se": r6(se), "lc_win_rate": r6(lc and lc.win_rate),
            "length_control": None if lc is None else {
                "feature": "(len(model) - len(reference)) / sd, in characters", "length_sd_chars": r6(lc.length_sd),
                "intercept": r6(lc.intercept), "slope": r6(lc.slope), "l2_on_slope": L2_PENALTY},
            "mean_len_model": r6(sum(r["len_model"] for r in judged) / len(judged)) if judged else None,
            "mean_len_reference": r6(sum(r["len_reference"] for r in judged) / len(judged)) if judged else None,
            "cost_usd": round(self.cost_usd(), 6), "priced": self.price is not None, "tokens": dict(self.tokens),
            "complete": stop is None, "stop_reason": stop or "done",
        }

    def write_outputs(self, stop: str | None) -> dict:
        rows = self.judgments()
        atomic_write_text(self.out / "judgments.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.result = self.report(rows, stop)
        atomic_write_text(self.out / "report.json", json.dumps(self.result, ensure_ascii=False, indent=2) + "\n")
        return self.result


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(report: dict) -> str:
    se = "" if report["win_rate_se"] is None else f" ± {_pct(report['win_rate_se'])}"
    rows = [("judge", f"{report['judge_model']} ({report['api']}, seed {report['seed']})"),
            ("pairs judged", f"{report['n']} of {report['n_pairs']} (ties {report['n_ties']}, unparseable "
                             f"{report['n_unparseable']}, pending {report['n_pending']}, unmatched {report['n_unmatched']})"),
            ("win rate", _pct(report["win_rate"]) + se),
            ("LC win rate", _pct(report["lc_win_rate"])),
            ("cost", f"${report['cost_usd']:.4f}" + ("" if report["priced"] else " (unpriced)"))]
    return "\n".join(f"{k:<14}{v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.eval judge", description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 done; 1 stopped early (cost cap, budget, a server "
                                            "that went down; work kept); 2 bad input (files, config, a judge "
                                            "that cannot be reached at all)")
    parser.add_argument("--responses", required=True, help="JSONL of {instruction, input?, response}")
    parser.add_argument("--reference", required=True, help="JSON or JSONL of {instruction, input?, output}")
    parser.add_argument("--config", default=None, help="YAML config (see configs/judge.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. model=gpt-4.1-mini")
    args = parser.parse_args(argv)
    try:
        config = load_judge_config(args.config, args.overrides)
        references = load_references(args.reference)
        responses = load_responses(args.responses)
        pairs, no_ref, no_resp = match(references, responses)
        if not pairs:
            raise UserError(f"no response in {args.responses} matches a reference in {args.reference} "
                            f"(matched by instruction and input)")
        judge = Judge(config, api_key(config, "python -m tools.eval judge ..."), pairs, (no_ref, no_resp))
        if no_ref or no_resp:
            print(f"note: unmatched: {no_ref} responses have no reference, {no_resp} references have no "
                  f"response; {len(pairs)} pairs are judged", file=sys.stderr)
        stop, unreachable = judge.run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: judgments so far are saved; run the same command again to resume", file=sys.stderr)
        return 130
    if unreachable:  # the URL or the server is wrong: bad input, as a missing file is
        print(f"error: {stop}", file=sys.stderr)
        return 2
    print(table(judge.result))
    if stop is None:
        return 0
    else:
        print(f"stopped before every pair was judged: {stop}; judgments so far are in {config.output_dir}; "
              f"run again (with a larger budget if one stopped it) to resume", file=sys.stderr)
    return 1


"""The self-instruct loop: prompt -> model -> parse -> filter -> ROUGE-L dedup -> Alpaca JSON.

Requests go out in rounds of `concurrency` batches (`batch.requests_per_round` with the Batch
API, see generate/batch.py). Every prompt of a round is built from the state at the start of the
round (batch b's examples come from an RNG seeded with (seed, b) and
from the instructions kept before b's round), and responses are decided in batch order. So the
output depends only on the seed and the server's answers, not on which request finished first,
and a run resumed from its journal after a crash ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from generate.client import ModelClient
from generate.config import GenerateConfig, config_to_dict
from generate.dedup import RougeDedup
from generate.encode import build_prompt
from generate.endpoint import Completion
from generate.errors import StopRun, Unreachable, UserError
from generate.filters import filter_reason
from generate.journal import Journal, atomic_write_text
from generate.parse import Parsed, parse_response
from generate.pricing import check_priced, cost_usd, price_for
from generate.seeds import Task, load_seed_tasks


@dataclass
class Kept:
    task: Task
    batch: int
    most_similar: list = field(default_factory=list)  # [[instruction, score], ...]
    avg_similarity: float = 0.0


@dataclass
class RunResult:
    kept: list[Kept]
    rejected: Counter
    stop_reason: str
    usage: dict
    unreachable: bool = False  # the server never answered: stop_reason names the URL and the error


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Generator:
    """One run; `run()` resumes from the journal in `output_dir` when there is one."""

    def __init__(self, config: GenerateConfig, api_key: str, client: ModelClient | None = None) -> None:
        self.config = config
        self.out = Path(config.output_dir)
        self.seeds = load_seed_tasks(config.seed_tasks)
        try:
            self.template = config.prompt_path().read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"{config.prompt_path()}: cannot read prompt template ({e.strerror})") from None
        # Before anything is sent: a paid, capped run must know its price (UserError otherwise).
        self.price_note = check_priced(config)
        self.price = price_for(config)
        self.client = client or ModelClient(config, api_key)
        self.client.on_adapt = self._on_adapt
        self.journal: Journal | None = None
        self.adaptations: list[dict] = []
        self.dedup = RougeDedup(config.dedup.threshold, config.dedup.workers, config.dedup.top_k,
                                config.dedup.avg_sample)
        self.kept: list[Kept] = []
        self.rejected: Counter = Counter()
        self.tokens = {"prompt": 0, "completion": 0, "cached": 0, "reasoning": 0}
        self.estimated = 0  # responses whose token counts are estimates (the server sent no usage)
        self.bar = None
        self.batch_state = ""  # shown in the progress bar in batch mode

    # -- prompts -------------------------------------------------------------------------------

    def _header(self) -> dict:
        """Settings that determine the output; a resume must match them."""
        c = self.config
        settings = {
            "lang": c.lang, "api": c.api, "model": c.model, "seed": c.seed,
            "seed_tasks_sha256": _sha(json.dumps([t.to_alpaca() for t in self.seeds], ensure_ascii=False)),
            "prompt_sha256": _sha(self.template), "num_prompt_instructions": c.num_prompt_instructions,
            "tasks_per_request": c.tasks_per_request, "machine_ratio": c.machine_ratio,
            "round_size": c.round_size(), "threshold": c.dedup.threshold,
            "filters": config_to_dict(c)["filters"],
            "sampling": [c.request.temperature, c.request.top_p, c.request.stop, c.request.reasoning_effort],
        }
        return json.loads(json.dumps(settings))

    def _prompt(self, batch: int, round_start: int | None = None) -> str:
        c = self.config
        rng = random.Random(f"{c.seed}:{batch}")
        if round_start is None:
            round_start = batch - batch % c.round_size()
        machine = [k.task for k in self.kept if k.batch < round_start]
        n_machine = sum(rng.random() < c.machine_ratio for _ in range(c.num_prompt_instructions))
        n_machine = min(n_machine, len(machine))
        n_seed = min(c.num_prompt_instructions - n_machine, len(self.seeds))
        examples = rng.sample(self.seeds, n_seed) + rng.sample(machine, n_machine)
        rng.shuffle(examples)
        return build_prompt(self.template, examples, c.lang, c.tasks_per_request)

    # -- deciding ------------------------------------------------------------------------------

    def _decide(self, batch: int, completion: Completion, next_number: int, journal: Journal) -> None:
        """Parse, filter and dedup one response; every candidate is journaled as it is decided."""
        c = self.config
        if completion.empty_reason:  # paid for, but the whole budget went to reasoning
            parsed = Parsed()
            parsed.dropped[completion.empty_reason] += 1
        else:
            parsed = parse_response(completion.text, completion.finish_reason, next_number)
        self.rejected.update(parsed.dropped)
        for i, task in enumerate(parsed.tasks):
            record = {"type": "candidate", "batch": batch, "i": i, **task.to_alpaca()}
            reason = filter_reason(task, c.lang, c.filters.min_words, c.filters.max_words,
                                   c.filters.require_hangul)
            decision = None
            if reason is None:
                decision = self.dedup.check(task.instruction)
                if not decision.accepted:
                    reason = "rouge_similar"
                    record.update(score=round(decision.score, 6), similar_to=self.dedup.texts[decision.match])
            if reason is not None:
                self.rejected[reason] += 1
                journal.append({**record, "status": "rejected", "reason": reason})
                continue
            similar = [[self.dedup.texts[j], round(s, 6)] for j, s in decision.most_similar]
            avg = round(decision.avg_similarity, 6)
            self.dedup.add(task.instruction, decision.tokens)
            self.kept.append(Kept(task, batch, similar, avg))
            journal.append({**record, "status": "kept", "most_similar": similar, "avg_similarity": avg})
        journal.append({"type": "batch_end", "batch": batch, "dropped": dict(parsed.dropped)}, sync=True)

    def _replay_batch(self, batch: int, lines: list[dict]) -> None:
        """Restore a completed batch from the journal without recomputing it."""
        for rec in lines:
            if rec["type"] == "response":
                self._count(Completion.from_record(rec))
            elif rec["type"] == "candidate" and rec["status"] == "kept":
                task = Task(rec["instruction"], rec["input"], rec["output"])
                self.dedup.add(task.instruction)
                self.kept.append(Kept(task, batch, rec["most_similar"], rec["avg_similarity"]))
            elif rec["type"] == "candidate":
                self.rejected[rec["reason"]] += 1
            elif rec["type"] == "batch_end":
                self.rejected.update(rec.get("dropped", {}))

    # -- accounting ----------------------------------------------------------------------------

    def _count(self, comp: Completion) -> None:
        for name, n in comp.tokens().items():
            self.tokens[name] += n
        self.estimated += int(comp.estimated)

    def record_response(self, batch: int, prompt: str, comp: Completion) -> None:
        """Count and journal one answer the moment it arrives: it has been paid for."""
        self._count(comp)
        self.journal.append({"type": "response", "batch": batch, "prompt_sha256": _sha(prompt),
                             **comp.to_record()})

    def _on_adapt(self, change: dict, why: str) -> None:
        """The request shape changed (server's 400, context size, reasoning budget): journal it
        so a resumed run starts adapted; the summary lists this run's adaptations. (Not printed
        as it happens: a run that then fails must still end with exactly one line on stderr.)"""
        if self.journal is not None:
            self.journal.append({"type": "adapt", "change": change, "why": why}, sync=True)
        self.adaptations.append({**change, "why": why})

    def cost_usd(self) -> float:
        discount = self.config.batch.discount if self.config.api == "batch" else 1.0
        return cost_usd(self.price, self.tokens, discount)

    def _show(self) -> None:
        if self.bar is None:
            return
        self.bar.n = min(len(self.kept), self.config.num_instructions)
        reasons = ",".join(f"{k}={v}" for k, v in self.rejected.most_common())
        state = f" {self.batch_state}" if self.batch_state else ""
        self.bar.set_postfix_str(f"rejected[{reasons}] tokens={self.tokens['prompt'] + self.tokens['completion']} "
                                 f"cost=${self.cost_usd():.4f}{state}")

    # -- the loop ------------------------------------------------------------------------------

    def _stop_reason(self, batch: int, stalled: int) -> str | None:
        c = self.config
        if len(self.kept) >= c.num_instructions:
            return "done"
        if c.max_cost_usd is not None and self.cost_usd() >= c.max_cost_usd:
            return f"max_cost_usd reached (${self.cost_usd():.4f} >= ${c.max_cost_usd})"
        if c.max_requests is not None and batch >= c.max_requests:
            return f"max_requests reached ({c.max_requests})"
        if stalled >= c.stall_rounds:
            return f"no instruction kept in {stalled} rounds in a row"
        return None

    def run(self) -> RunResult:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        journal = self.journal = Journal(self.out / "journal.jsonl")
        replay = journal.open(self._header())
        self.client.replay_adaptations(replay.run_records)
        for seed in self.seeds:  # seeds are in the dedup pool from the start, as in Alpaca
            self.dedup.add(seed.instruction)
        for b in sorted(replay.batches):
            self._replay_batch(b, replay.batches[b])
        if c.progress:
            self.bar = tqdm(total=c.num_instructions, desc="kept", file=sys.stderr, dynamic_ncols=True)
            self._show()
        stop, unreachable = None, False
        try:
            if c.api == "batch":
                from generate.batch import run_batch_rounds

                stop = run_batch_rounds(self, replay)
            else:
                stop = self._run_sync(len(replay.batches), replay.pending_responses)
        except Unreachable as e:
            stop, unreachable = str(e), True
        except StopRun as e:
            stop = f"stopped early: {e}"
        finally:
            journal.close()
            self.dedup.close()
            if self.bar is not None:
                self._show()
                self.bar.close()
            self.write_outputs(stop or "interrupted")
        this_run = self.client.usage.as_dict()
        # Requests/retries/errors are this invocation's; tokens and cost include resumed work.
        usage = {**this_run, **{f"{k}_tokens": v for k, v in self.tokens.items()},
                 "tokens_estimated_responses": self.estimated,
                 "cost_usd": round(self.cost_usd(), 6), "priced": self.price is not None,
                 "adaptations": self.adaptations}
        if self.price_note:  # said once, here (local server, or a deliberately uncapped run)
            usage["price_note"] = self.price_note
        return RunResult(self.kept[:c.num_instructions], self.rejected, stop, usage, unreachable)

    def _run_sync(self, batch: int, pending: dict[int, dict]) -> str:
        """Rounds of `concurrency` concurrent requests until a stop reason; returns it."""
        c = self.config
        stalled, error = 0, None
        pool = ThreadPoolExecutor(max_workers=c.concurrency)
        try:
            while (stop := self._stop_reason(batch, stalled)) is None:
                round_end = batch - batch % c.concurrency + c.concurrency
                prompts = {b: self._prompt(b) for b in range(batch, round_end)}
                kept_before = len(self.kept)
                completions: dict[int, Completion] = {}
                futures = {}
                for b, prompt in prompts.items():
                    saved = pending.pop(b, None)
                    if saved is not None and saved.get("prompt_sha256") == _sha(prompt):
                        completions[b] = Completion.from_record(saved)
                    else:
                        futures[pool.submit(self.client.complete, prompt)] = b
                not_done = set(futures)
                while not_done:
                    done, not_done = wait(not_done, return_when="FIRST_COMPLETED")
                    for fut in done:
                        b = futures[fut]
                        try:
                            completions[b] = fut.result()
                        except StopRun as e:
                            error = error or e
                            continue
                        self.record_response(b, prompts[b], completions[b])
                        self._show()
                # Decide in batch order, up to the first batch whose request failed.
                for b in range(batch, round_end):
                    if b not in completions:
                        break
                    self._decide(b, completions[b], c.num_prompt_instructions + 1, self.journal)
                    batch = b + 1
                    self._show()
                if error is not None:
                    raise error
                stalled = stalled + 1 if len(self.kept) == kept_before else 0
            return stop
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def write_outputs(self, stop_reason: str) -> None:
        """alpaca_data.json (the first num_instructions kept, in order) and metadata.json, both
        written atomically so a reader never sees half a file."""
        kept = self.kept[:self.config.num_instructions]
        data = [k.task.to_alpaca() for k in kept]
        atomic_write_text(self.out / "alpaca_data.json", json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        meta = {
            "stop_reason": stop_reason,
            "kept": len(data), "kept_total": len(self.kept), "rejected": dict(self.rejected),
            "tokens": dict(self.tokens), "tokens_estimated_responses": self.estimated,
            "cost_usd": round(self.cost_usd(), 6), "priced": self.price is not None,
            "config": config_to_dict(self.config),
            "records": [{"instruction": k.task.instruction, "most_similar_instructions": dict(k.most_similar),
                         "avg_similarity_score": k.avg_similarity} for k in kept],
        }
        atomic_write_text(self.out / "metadata.json", json.dumps(meta, ensure_ascii=False, indent=2) + "\n")

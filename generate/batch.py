"""`api: batch`: the run's requests as OpenAI Batch jobs, at half the synchronous price.

A round is `batch.requests_per_round` prompts (fewer when fewer will do: the round is sized from
the instructions still needed, the request budget and the money left), built from the pool kept
before the round, exactly as the synchronous mode builds a round of `concurrency` prompts. The
round goes out as one JSONL file and one batch; the run polls it, downloads the answers, and
passes them through the same journal, parse, filter and dedup as synchronous answers.

Why the ids are journaled before anything waits: a batch is paid for when it runs, not when the
client reads it. The file id is journaled after the upload and the batch id right after the
create, so a run killed while a batch is in flight resumes by polling that batch; a kill between
the create and the journal line is covered by looking the batch up by its input file.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable

import openai

from generate.endpoint import DROPPABLE, Completion, completion_from_body, error_text, unsupported_parameter
from generate.errors import StopRun, UserError
from generate.pricing import cost_usd

ENDPOINT = "/v1/chat/completions"
_DONE = ("completed", "failed", "expired", "cancelled")


def _custom_id(batch: int) -> str:
    return f"request-{batch}"


class _Refused(Exception):
    """Every request of a batch was refused (4xx): nothing was paid; maybe a shape to adapt."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class BatchJobs:
    """The Batch API calls, each with the client's bounded retries for transient errors."""

    def __init__(self, sdk: openai.OpenAI, config, sleep: Callable[[float], None] = time.sleep) -> None:
        self.sdk = sdk
        self.config = config
        self.sleep = sleep

    def call(self, what: str, fn, *args, **kwargs):
        rc = self.config.retry
        for attempt in range(rc.max_retries + 1):
            try:
                return fn(*args, **kwargs)
            except openai.AuthenticationError:
                raise UserError(f"the server rejected the API key (HTTP 401); set a valid "
                                f"{self.config.api_key_env} in the environment") from None
            except openai.APIStatusError as e:
                if e.status_code < 500 and e.status_code not in (408, 409, 429):
                    raise UserError(f"Batch API {what} rejected (HTTP {e.status_code}): {error_text(e)}") from None
                last = f"HTTP {e.status_code}: {error_text(e)}"
            except openai.APIConnectionError as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < rc.max_retries:
                self.sleep(min(rc.backoff_base_s * 2 ** attempt, rc.backoff_max_s))
        raise StopRun(f"Batch API {what} failed {rc.max_retries + 1} times (last error: {last})")

    def upload(self, name: str, lines: list[dict]) -> str:
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
        return self.call("file upload", self.sdk.files.create, file=(name, data, "application/jsonl"),
                         purpose="batch").id

    def find(self, file_id: str) -> str | None:
        """A batch already created from this file (a crash hit between create and journal)."""
        page = self.call("list", self.sdk.batches.list, limit=100)
        return next((b.id for b in page.data if b.input_file_id == file_id), None)

    def create(self, file_id: str, round_start: int) -> str:
        return self.call("create", self.sdk.batches.create, input_file_id=file_id, endpoint=ENDPOINT,
                         completion_window=self.config.batch.completion_window,
                         metadata={"generate_round_start": str(round_start)}).id

    def retrieve(self, batch_id: str):
        return self.call("poll", self.sdk.batches.retrieve, batch_id)

    def lines(self, file_id: str | None) -> list[dict]:
        if not file_id:
            return []
        text = self.call("download", self.sdk.files.content, file_id).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _round_requests(gen, batch: int) -> int:
    """How many prompts the next round needs: at most requests_per_round, no more than the
    request budget allows, no more than the money left pays for at the full token budget, and
    about 1.25x what the kept-per-request rate so far says is still needed."""
    c = gen.config
    n = c.batch.requests_per_round
    if c.max_requests is not None:
        n = min(n, c.max_requests - batch)
    if batch > 0 and gen.kept:
        rate = len(gen.kept) / batch
        n = min(n, math.ceil(1.25 * (c.num_instructions - len(gen.kept)) / rate))
    if c.max_cost_usd is not None and gen.price is not None:
        worst = cost_usd(gen.price, {"prompt": len(gen._prompt(batch, batch)) // 4,
                                     "completion": gen.client.endpoint.current_budget()}, c.batch.discount)
        if worst > 0:
            n = min(n, math.floor((c.max_cost_usd - gen.cost_usd()) / worst))
    return max(n, 1)


def _collect(jobs: BatchJobs, gen, batch_id: str, prompts: dict[int, str]) -> dict[int, Completion]:
    """Poll until the batch ends; its answers by request index (failed requests are absent)."""
    while True:
        job = jobs.retrieve(batch_id)
        counts = job.request_counts
        done = f"{counts.completed + counts.failed}/{counts.total}" if counts else ""
        gen.batch_state = f"batch {job.status} {done}".strip()
        gen._show()
        if job.status in _DONE:
            break
        jobs.sleep(gen.config.batch.poll_interval_s)
    if job.status == "failed":
        errors = getattr(getattr(job, "errors", None), "data", None) or []
        why = "; ".join(f"{e.code}: {e.message}" for e in errors) or "no reason given"
        raise UserError(f"batch {batch_id} failed: {why}")
    answers: dict[int, Completion] = {}
    refusals: list[str] = []
    index = {_custom_id(b): b for b in prompts}
    for line in jobs.lines(job.output_file_id) + jobs.lines(getattr(job, "error_file_id", None)):
        b = index.get(line.get("custom_id"))
        response = line.get("response") or {}
        body = response.get("body") or {}
        if b is None:
            continue
        if response.get("status_code") == 200 and not line.get("error"):
            try:
                answers[b] = completion_from_body(body, True, prompts[b])
            except (KeyError, IndexError, TypeError, ValueError):
                pass  # a malformed answer: the request counts as failed
        elif 400 <= (response.get("status_code") or 0) < 500 and response.get("status_code") != 429:
            err = body.get("error") if isinstance(body.get("error"), dict) else {}
            refusals.append((str(err.get("message") or body), unsupported_parameter(str(err.get("message")), err)))
    if not answers and refusals and len(refusals) == len(index):
        # The same request shape was refused throughout: adapt it, or it is a user error.
        raise _Refused(f"every request of batch {batch_id} was rejected: {refusals[0][0]}", refusals[0][1])
    return answers


def _answers(jobs: BatchJobs, gen, sub: dict, start: int, end: int, prompts: dict[int, str],
             submits: list[dict]) -> dict[int, Completion]:
    """The round's answers; a batch refused for an unsupported parameter is adapted to (once per
    parameter, journaled like a synchronous adaptation) and submitted again: refusals cost nothing."""
    endpoint = gen.client.endpoint
    for _ in range(len(DROPPABLE) + 2):
        try:
            return _collect(jobs, gen, sub["batch_id"], prompts)
        except _Refused as refused:
            sent = endpoint.body(prompts[start])
            if refused.param is None:
                raise UserError(refused.message) from None
            change = endpoint.adapt_unsupported(refused.param, sent) if refused.param in sent else {}
            if change is None:
                raise UserError(refused.message) from None
            if change:
                endpoint.apply(change)
                gen._on_adapt(change, refused.message)
            sub = _submit(jobs, gen, start, end, prompts, None)
            submits.append(sub)
    raise UserError(f"batches for requests {start}-{end - 1} kept being refused")


def _raise_budget_if_reasoning_ate_it(gen, answers: dict[int, Completion]) -> None:
    """Answers that were all reasoning are moved on from (a batch cannot be retried cheaply);
    the next rounds get a larger budget, within request.max_tokens_limit."""
    if any(a.empty_reason == "reasoning_exhausted" for a in answers.values()):
        endpoint, limit = gen.client.endpoint, gen.config.request.budget_limit()
        budget = endpoint.current_budget()
        change = endpoint.set_budget(min(limit, budget * 2))
        if change:
            endpoint.apply(change)
            gen._on_adapt(change, f"a batch answer spent its whole budget of {budget} tokens on reasoning")


def run_batch_rounds(gen, replay) -> str:
    """The batch-mode loop of `Generator.run`; returns the stop reason."""
    c = gen.config
    jobs = BatchJobs(gen.client.sdk, c, gen.client._sleep)
    submits = [r for r in replay.run_records if r["type"] == "batch_submit"]
    files = {r["round_start"]: r for r in replay.run_records if r["type"] == "batch_file"}
    pending = replay.pending_responses
    batch, stalled = len(replay.batches), 0
    while (stop := gen._stop_reason(batch, stalled)) is None:
        # The latest batch for this round (an earlier one may have been refused and adapted).
        sub = next((r for r in reversed(submits) if r["batches"][0] <= batch < r["batches"][1]), None)
        start, end = sub["batches"] if sub else (batch, batch + _round_requests(gen, batch))
        prompts = {b: gen._prompt(b, round_start=start) for b in range(start, end)}
        completions: dict[int, Completion] = {}
        for b in range(batch, end):
            saved = pending.pop(b, None)
            if saved is not None and saved.get("prompt_sha256") == _sha(prompts[b]):
                completions[b] = Completion.from_record(saved)
        if len(completions) < end - batch:
            if sub is None:
                sub = _submit(jobs, gen, start, end, prompts, files.get(start))
                submits.append(sub)
            answers = _answers(jobs, gen, sub, start, end, prompts, submits)
            _raise_budget_if_reasoning_ate_it(gen, answers)
            for _ in answers:
                gen.client.usage.add()  # answered requests of this invocation, as in synchronous mode
            for b in range(batch, end):
                if b not in completions:
                    completions[b] = answers.get(b) or Completion("", None, 0, 0, empty_reason="batch_request_failed")
                    gen.record_response(b, prompts[b], completions[b])
        gen.batch_state = ""
        kept_before = len(gen.kept)
        for b in range(batch, end):
            gen._decide(b, completions[b], c.num_prompt_instructions + 1, gen.journal)
            batch = b + 1
            gen._show()
        stalled = stalled + 1 if len(gen.kept) == kept_before else 0
    return stop


def answer_prompts(gen, replay, prompts: dict[int, str]) -> dict[int, Completion]:
    """Fixed prompts (ones that do not depend on earlier answers, such as the judge's), answered
    through the Batch API: a job an earlier run journaled for some of them is polled and read
    again rather than paid for twice, the rest go out as one new job. Failed requests are absent.
    `gen` provides what `run_batch_rounds` uses: config, client, journal, batch_state, _show, _on_adapt."""
    jobs = BatchJobs(gen.client.sdk, gen.config, gen.client._sleep)
    submits = [r for r in replay.run_records if r["type"] == "batch_submit"]
    files = {r["round_start"]: r for r in replay.run_records if r["type"] == "batch_file"}
    answers: dict[int, Completion] = {}
    for sub in list(submits):
        requests = sub.get("requests", range(*sub["batches"]))
        mine = {b: prompts[b] for b, s in zip(requests, sub["prompt_sha256"], strict=True)
                if b in prompts and b not in answers and _sha(prompts[b]) == s}
        if mine:
            answers.update(_answers(jobs, gen, sub, min(mine), max(mine) + 1, mine, submits))
    rest = {b: p for b, p in prompts.items() if b not in answers}
    if rest:
        start, end = min(rest), max(rest) + 1
        uploaded = files.get(start)
        if uploaded and any(r["file_id"] == uploaded["file_id"] for r in submits):
            uploaded = None  # that file's job was read above: its failed requests need a new one
        sub = _submit(jobs, gen, start, end, rest, uploaded)
        submits.append(sub)
        answers.update(_answers(jobs, gen, sub, start, end, rest, submits))
    gen.batch_state = ""
    _raise_budget_if_reasoning_ate_it(gen, answers)
    for _ in answers:
        gen.client.usage.add()
    return answers


def _submit(jobs: BatchJobs, gen, start: int, end: int, prompts: dict[int, str], uploaded: dict | None) -> dict:
    """Upload the round's JSONL (unless an earlier run did) and create its batch, journaling both ids."""
    if uploaded is not None:
        file_id = uploaded["file_id"]
        batch_id = jobs.find(file_id)
    else:
        lines = [{"custom_id": _custom_id(b), "method": "POST", "url": ENDPOINT,
                  "body": gen.client.endpoint.body(prompts[b])} for b in sorted(prompts)]
        file_id = jobs.upload(f"round-{start}.jsonl", lines)
        gen.journal.append({"type": "batch_file", "round_start": start, "file_id": file_id}, sync=True)
        batch_id = None
    if batch_id is None:
        batch_id = jobs.create(file_id, start)
    record = {"type": "batch_submit", "batches": [start, end], "file_id": file_id, "batch_id": batch_id,
              "requests": sorted(prompts), "prompt_sha256": [_sha(prompts[b]) for b in sorted(prompts)]}
    gen.journal.append(record, sync=True)
    return record


def _sha(text: str) -> str:  # the same digest as the pipeline's response records
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

"""The model client: openai>=1 chat or legacy completions, with bounded, polite retries.

Why our own retry loop instead of the SDK's: the budget must be explicit and finite (Alpaca's
loop retried forever), `Retry-After` must be honoured, a context-length error must shrink the
token budget instead of failing the same way again, a parameter the server rejects must be
adapted once instead of retried, and every attempt must be counted for the cost report. The
SDK's retries are therefore switched off (`max_retries=0`).

What is transient (retried with backoff): 429, 408, 409, 5xx, timeouts, connection errors and
malformed bodies. Connection errors are printed to stderr as they happen (the URL without
credentials or query, and the network error), because a silent retry loop looks like a hang. Until
the server has answered once, `retry.max_connection_failures` failed connections in a row stop the
run (`Unreachable`, exit 1): a wrong URL or a server that is not up should fail in seconds, not
after the whole retry budget of every request. What is not (one line, exit 2, no retry): 401/403/404 and any other 4xx that
is neither a context-length error nor an unsupported parameter we can adapt to (a 422 from a
validating server is a bad request, not bad luck).

Thread-safe: one `ModelClient` is shared by the request threads of the pipeline.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable

import openai
from tqdm import tqdm

from generate.config import GenerateConfig
from generate.endpoint import (
    Completion,
    Endpoint,
    completion_from_body,
    error_text,
    fitting_budget,
    is_context_error,
    unsupported_parameter,
)
from generate.errors import StopRun, Unreachable, UserError
from generate.pricing import public_url
from generate.ratelimit import RateLimiter

__all__ = ["Completion", "ModelClient", "Usage"]
_TRANSIENT_4XX = (408, 409, 429)


class Usage:
    """This invocation's requests, retries and errors by kind (tokens are counted by the pipeline)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.errors: dict[str, int] = {}

    def add(self) -> None:
        with self._lock:
            self.requests += 1

    def add_error(self, kind: str, retry: bool = True) -> None:
        with self._lock:
            self.retries += int(retry)
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict:
        return {"requests": self.requests, "retries": self.retries, "errors": dict(self.errors)}


def _retry_after(error: Exception) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms` or `retry-after`), if it said."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000.0
        if headers.get("retry-after") is not None:
            return float(headers["retry-after"])
    except ValueError:  # an HTTP date; the exponential backoff is a fine substitute
        return None
    return None


def _network_error(error: Exception) -> str:
    """The network layer's own words ("ConnectError: [Errno 111] Connection refused"); the SDK's
    message alone is just "Connection error."."""
    cause = error.__cause__ or error.__context__
    return f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(error).__name__}: {error}"


def _is_connect_failure(error: Exception) -> bool:
    """No HTTP exchange happened (refused, reset, DNS, connect timeout), as opposed to a slow answer."""
    if isinstance(error, openai.APITimeoutError):
        return type(error.__cause__).__name__ == "ConnectTimeout"
    return isinstance(error, openai.APIConnectionError)


def _stderr_line(line: str) -> None:
    tqdm.write(line, file=sys.stderr)  # through tqdm so a progress bar on stderr is redrawn, not torn


class ModelClient:
    """Sends one prompt, returns one `Completion`, or raises StopRun/UserError; never loops forever.

    `on_adapt(change, why)` is called once per adaptation of the request shape (the pipeline
    journals it); `endpoint` may be shared with the batch runner."""

    def __init__(self, config: GenerateConfig, api_key: str,
                 sleep: Callable[[float], None] = time.sleep, endpoint: Endpoint | None = None,
                 on_adapt: Callable[[dict, str], None] | None = None,
                 report: Callable[[str], None] = _stderr_line) -> None:
        self.config = config
        self.usage = Usage()
        self.endpoint = endpoint or Endpoint(config)
        self.on_adapt = on_adapt or (lambda change, why: None)
        self._sleep = sleep
        self._jitter = random.Random(config.seed)  # jitter only spreads retries; never affects output
        self._limiter = RateLimiter(config.rate_limit.requests_per_minute,
                                    config.rate_limit.tokens_per_minute)
        self.sdk = openai.OpenAI(api_key=api_key, base_url=config.base_url, max_retries=0)
        self._probe = threading.Lock()
        self._learned = threading.Event()
        self._report = report
        self.url = public_url(config.base_url)
        self._reached = False  # the server has sent at least one HTTP response
        self._gave_up: StopRun | None = None  # the first request's failure, shared by the others

    @property
    def max_tokens(self) -> int:
        return self.endpoint.current_budget()

    def replay_adaptations(self, run_records: list[dict]) -> None:
        """Re-apply what an earlier run learnt about the server (its journal's `adapt` records), so
        a resumed run never pays to learn it again."""
        for rec in run_records:
            if rec["type"] == "adapt":
                self.endpoint.apply(rec["change"])

    def _adapt(self, change: dict | None, why: str) -> None:
        if change:
            self.endpoint.apply(change)
            self.on_adapt(change, why)

    def _call(self, prompt: str, body: dict) -> Completion:
        timeout = self.config.request.timeout_for(body.get("max_tokens") or body.get("max_completion_tokens"))
        api = self.sdk.chat.completions if self.endpoint.chat else self.sdk.completions
        connect = min(timeout, self.config.request.connect_timeout_s)
        raw = api.with_raw_response.create(**body, timeout=openai.Timeout(timeout, connect=connect))
        return completion_from_body(json.loads(raw.http_response.text), self.endpoint.chat, prompt)

    def _backoff(self, attempt: int, error: Exception) -> float:
        rc = self.config.retry
        wait = _retry_after(error)
        if wait is None:
            wait = rc.backoff_base_s * (2 ** attempt) * (0.5 + self._jitter.random())
        return min(max(wait, 0.0), rc.backoff_max_s)

    def _client_error(self, e: openai.APIStatusError, body: dict) -> str:
        """Handle a 4xx/5xx that is not transient: adapt and return a note, or raise UserError."""
        status, message = e.status_code, error_text(e)
        if status == 401:
            raise UserError(f"the server rejected the API key (HTTP 401); set a valid "
                            f"{self.config.api_key_env} in the environment")
        if status == 403:
            raise UserError(f"permission denied by the server (HTTP 403): {message}")
        if status == 404:
            raise UserError(f"model '{self.config.model}' or endpoint not found at "
                            f"{self.config.base_url or 'api.openai.com'} (HTTP 404)")
        if is_context_error(message, e.body):
            new = fitting_budget(message, e.body, body.get("max_tokens") or body.get("max_completion_tokens"))
            if new < 64:
                raise UserError("the prompt alone fills the model's context; lower "
                                "num_prompt_instructions or use a longer-context model")
            self._adapt(self.endpoint.set_budget(min(new, self.endpoint.current_budget())),
                        f"context length (HTTP {status}): {message}")
            self.usage.add_error("context_length")
            return f"context length exceeded (budget now {new})"
        param = unsupported_parameter(message, e.body)
        change = self.endpoint.adapt_unsupported(param, body) if param else None
        if change is None:
            raise UserError(f"the server rejected the request (HTTP {status}): {message}")
        self._adapt(change, f"HTTP {status}: {message}")
        self.usage.add_error("unsupported_parameter", retry=False)
        return f"adapted to the server ({change})"

    def complete(self, prompt: str) -> Completion:
        """One prompt, answered. Until one request has succeeded, requests go one at a time: the
        first answer teaches the request shape (an unsupported parameter, the context size) to
        all, so a concurrent run learns it once instead of once per thread."""
        if not self._learned.is_set():
            with self._probe:
                if self._gave_up is not None:  # else each waiting thread would spend the budget again
                    raise self._gave_up
                if not self._learned.is_set():
                    try:
                        completion = self._complete(prompt)
                    except StopRun as e:
                        self._gave_up = e
                        raise
                    self._learned.set()
                    return completion
        return self._complete(prompt)

    def _complete(self, prompt: str) -> Completion:
        """One prompt with at most `retry.max_retries` transient retries; StopRun when they are spent.

        Adaptations (context shrink, parameter switch, budget raise) are bounded by themselves
        (each changes the request), and by a hard cap on the loop as a second net."""
        attempts = self.config.retry.max_retries + 1
        failures, connect_failures, last, paid = 0, 0, "no attempt made", None
        for _ in range(attempts + 16):
            body = self.endpoint.body(prompt)
            budget = body.get("max_tokens") or body.get("max_completion_tokens")
            self._limiter.acquire(len(prompt) // 4 + budget)
            try:
                completion = self._call(prompt, body)
            except openai.APIStatusError as e:
                self._reached = True
                if e.status_code < 500 and e.status_code not in _TRANSIENT_4XX or is_context_error(error_text(e), e.body):
                    last = self._client_error(e, body)
                    continue
                kind, error, last = type(e).__name__, e, f"{type(e).__name__}: {error_text(e)}"
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                kind, error, last = type(e).__name__, e, f"{type(e).__name__}: {e}"
            except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError,
                    IndexError, KeyError) as e:
                kind, error, last = "MalformedResponse", e, f"malformed response ({type(e).__name__})"
            else:
                self._reached = True
                self.usage.add()
                if paid is not None:  # earlier answers to this prompt that were paid for and empty
                    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
                        setattr(completion, name, getattr(completion, name) + getattr(paid, name))
                    completion.estimated = completion.estimated or paid.estimated
                if completion.empty_reason == "reasoning_exhausted":
                    limit = self.config.request.budget_limit()
                    self.usage.add_error("reasoning_exhausted", retry=budget < limit)
                    if budget < limit:
                        # Not a blind retry: the same prompt with a larger budget, up to the limit.
                        new = min(limit, budget * 2)
                        self._adapt(self.endpoint.set_budget(max(new, self.endpoint.current_budget())),
                                    f"the whole budget of {budget} tokens went to reasoning")
                        paid = completion
                        continue
                return completion
            failures += 1
            self.usage.add_error(kind)
            if _is_connect_failure(error):
                connect_failures += 1
                cap = self.config.retry.max_connection_failures
                if not self._reached and connect_failures >= min(cap, attempts):
                    raise Unreachable(f"cannot connect to {self.url} ({_network_error(error)}) after "
                                      f"{connect_failures} attempts; is the server up and base_url right?")
            if failures >= attempts:
                if _is_connect_failure(error):
                    self._report(f"connection error: {self.url}: {_network_error(error)}; giving up")
                break
            wait = self._backoff(failures - 1, error)
            if _is_connect_failure(error):
                self._report(f"connection error: {self.url}: {_network_error(error)}; "
                             f"retry {failures} of {attempts - 1} in {wait:.1f} s")
            self._sleep(wait)
        raise StopRun(f"request failed {failures} times, giving up (last error: {last})")

"""The model client: openai>=1 chat or legacy completions, with bounded, polite retries.

Why our own retry loop instead of the SDK's: the budget must be explicit and finite (Alpaca's
loop retried forever), `Retry-After` must be honoured, a context-length error must shrink
`max_tokens` instead of failing the same way again, and every attempt must be counted for the
cost report. The SDK's retries are therefore switched off (`max_retries=0`).

Thread-safe: one `ModelClient` is shared by the request threads of the pipeline.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import openai

from generate.config import GenerateConfig
from generate.errors import StopRun, UserError
from generate.ratelimit import RateLimiter

_CONTEXT_RE = re.compile(r"context[ _]length|maximum context|too many tokens|context window", re.I)


@dataclass
class Completion:
    """One successful response, already reduced to what the pipeline needs."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class Usage:
    """Running totals of tokens, requests and estimated cost (price table from the config)."""

    def __init__(self, config: GenerateConfig) -> None:
        self._lock = threading.Lock()
        self.price = config.prices.get(config.model)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.requests = 0
        self.retries = 0
        self.errors: dict[str, int] = {}

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def add_error(self, kind: str) -> None:
        with self._lock:
            self.retries += 1
            self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def cost_usd(self) -> float:
        if self.price is None:
            return 0.0
        return (self.prompt_tokens * self.price.input_per_1m
                + self.completion_tokens * self.price.output_per_1m) / 1e6

    def as_dict(self) -> dict:
        return {"requests": self.requests, "retries": self.retries, "errors": dict(self.errors),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": round(self.cost_usd, 6), "priced": self.price is not None}


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


def _shrunk_max_tokens(message: str, current: int) -> int:
    """A max_tokens that fits, from "maximum context length is L ... P in the messages"."""
    limit = re.search(r"(?:maximum context length|context length) is (\d+)", message)
    prompt = re.search(r"(\d+) (?:tokens )?in the (?:messages|prompt)", message)
    if limit and prompt:
        return min(current - 1, int(limit.group(1)) - int(prompt.group(1)) - 16)
    return current // 2


class ModelClient:
    """Sends one prompt, returns one `Completion`, or raises StopRun/UserError; never loops."""

    def __init__(self, config: GenerateConfig, api_key: str,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.usage = Usage(config)
        self.max_tokens = config.request.max_tokens
        self._lock = threading.Lock()
        self._sleep = sleep
        self._jitter = random.Random(config.seed)  # jitter only spreads retries; never affects output
        self._limiter = RateLimiter(config.rate_limit.requests_per_minute,
                                    config.rate_limit.tokens_per_minute)
        self._sdk = openai.OpenAI(api_key=api_key, base_url=config.base_url, max_retries=0,
                                  timeout=config.request.timeout_s)

    def _call(self, prompt: str, max_tokens: int) -> Completion:
        r = self.config.request
        common = dict(model=self.config.model, temperature=r.temperature, top_p=r.top_p,
                      max_tokens=max_tokens, stop=r.stop or None, n=1)
        if self.config.api == "chat":
            resp = self._sdk.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
            choice = resp.choices[0]
            text = choice.message.content
        else:
            resp = self._sdk.completions.create(prompt=prompt, **common)
            choice = resp.choices[0]
            text = choice.text
        if not isinstance(text, str):
            raise ValueError("response has no text")
        usage = getattr(resp, "usage", None)
        # Servers that omit usage still cost something: estimate ~4 characters per token.
        pt = getattr(usage, "prompt_tokens", None) or len(prompt) // 4
        ct = getattr(usage, "completion_tokens", None) or len(text) // 4
        return Completion(text, choice.finish_reason, int(pt), int(ct))

    def _backoff(self, attempt: int, error: Exception) -> float:
        rc = self.config.retry
        wait = _retry_after(error)
        if wait is None:
            wait = rc.backoff_base_s * (2 ** attempt) * (0.5 + self._jitter.random())
        return min(max(wait, 0.0), rc.backoff_max_s)

    def complete(self, prompt: str) -> Completion:
        """One request with at most `retry.max_retries` retries; StopRun when the budget is spent."""
        attempts = self.config.retry.max_retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            with self._lock:
                max_tokens = self.max_tokens
            self._limiter.acquire(len(prompt) // 4 + max_tokens)
            try:
                completion = self._call(prompt, max_tokens)
            except openai.AuthenticationError:
                raise UserError(f"the server rejected the API key (HTTP 401); set a valid "
                                f"{self.config.api_key_env} in the environment") from None
            except openai.PermissionDeniedError as e:
                raise UserError(f"permission denied by the server (HTTP 403): {e.message}") from None
            except openai.NotFoundError:
                raise UserError(f"model '{self.config.model}' or endpoint not found at "
                                f"{self.config.base_url or 'api.openai.com'} (HTTP 404)") from None
            except openai.BadRequestError as e:
                if not _CONTEXT_RE.search(str(e.message)):
                    raise UserError(f"the server rejected the request (HTTP 400): {e.message}") from None
                new = _shrunk_max_tokens(str(e.message), max_tokens)
                if new < 64:
                    raise UserError("the prompt alone fills the model's context; lower "
                                    "num_prompt_instructions or use a longer-context model") from None
                with self._lock:
                    self.max_tokens = min(self.max_tokens, new)
                self.usage.add_error("context_length")
                last = f"context length exceeded (max_tokens now {new})"
                continue  # retry at once with the smaller budget
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError, openai.APIStatusError) as e:
                kind, error = type(e).__name__, e
                last = f"{kind}: {getattr(e, 'message', e)}"
            except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError,
                    IndexError, KeyError) as e:
                kind, error = "MalformedResponse", e
                last = f"malformed response ({type(e).__name__})"
            else:
                self.usage.add(completion.prompt_tokens, completion.completion_tokens)
                return completion
            self.usage.add_error(kind)
            if attempt + 1 < attempts:
                self._sleep(self._backoff(attempt, error))
        raise StopRun(f"request failed {attempts} times, giving up (last error: {last})")

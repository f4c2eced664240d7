"""The model client against a real HTTP server on loopback, through the real openai package:
every transient failure is retried within a finite budget, Retry-After is obeyed, a
context-length error shrinks max_tokens, and a bad key or a dead server ends with one message."""

from __future__ import annotations

import pytest
from test_generate_fakeserver import FakeOpenAI

from generate.client import ModelClient
from generate.config import load_config
from generate.errors import StopRun, UserError
from generate.ratelimit import RateLimiter

PROMPT = "1. Instruction: Name a colour.\nInput: <noinput>\nOutput: Blue.\n\n2. Instruction:"


@pytest.fixture
def server():
    with FakeOpenAI(tasks_per_response=4) as s:
        s.timeout_sleep_s = 0.5
        yield s


def make_client(base_url: str, *overrides: str, sleeps: list | None = None) -> ModelClient:
    config = load_config(None, [f"base_url={base_url}", "retry.backoff_base_s=0.001",
                                "retry.backoff_max_s=0.01", "request.timeout_s=0.25", *overrides])
    sleep = sleeps.append if sleeps is not None else (lambda s: None)
    return ModelClient(config, "sk-test", sleep=sleep)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_transient_failures_are_survived_and_counted(server, api):
    server.script = ["429", "500", "timeout", "malformed", "no_choices"]
    client = make_client(server.base_url, f"api={api}")
    completion = client.complete(PROMPT)
    assert completion.finish_reason == "stop"
    assert completion.text.count("Output:") == 4
    usage = client.usage.as_dict()
    assert usage["requests"] == 1 and usage["retries"] == 5
    assert usage["errors"] == {"RateLimitError": 1, "InternalServerError": 1, "APITimeoutError": 1,
                               "MalformedResponse": 2}
    assert server.requests == 6


def test_retry_after_header_sets_the_wait(server):
    server.script = ["429"]
    sleeps: list[float] = []
    client = make_client(server.base_url, "retry.backoff_max_s=5", sleeps=sleeps)
    client.complete(PROMPT)
    assert sleeps == [0.05]  # the fake server sends Retry-After: 0.05


def test_backoff_grows_exponentially_and_is_capped(server):
    server.script = ["500"] * 5
    sleeps: list[float] = []
    client = make_client(server.base_url, "retry.backoff_base_s=1", "retry.backoff_max_s=6", sleeps=sleeps)
    client.complete(PROMPT)
    # base * 2**attempt * jitter in [0.5, 1.5), capped at 6
    for attempt, wait in enumerate(sleeps):
        assert min(0.5 * 2 ** attempt, 6) <= wait <= min(1.5 * 2 ** attempt, 6)
    assert sleeps[-1] == 6


def test_retry_budget_is_finite(server):
    server.script = ["500"] * 100
    client = make_client(server.base_url, "retry.max_retries=3")
    with pytest.raises(StopRun, match="failed 4 times"):
        client.complete(PROMPT)
    assert server.requests == 4


def test_dead_server_stops_cleanly():
    with FakeOpenAI() as s:
        url = s.base_url
    client = make_client(url, "retry.max_retries=2")
    with pytest.raises(StopRun, match="APIConnectionError"):
        client.complete(PROMPT)


def test_context_length_error_shrinks_max_tokens(server):
    server.script = ["context"]
    client = make_client(server.base_url, "request.max_tokens=4000")
    client.complete(PROMPT)
    # "maximum context length is 4096 ... 1000 in the messages": 4096 - 1000 - 16 margin
    assert client.max_tokens == 3080
    assert client.usage.errors == {"context_length": 1}


def test_rejected_api_key_is_a_user_error_and_the_key_is_not_shown(server):
    server.script = ["401"]
    client = make_client(server.base_url)
    with pytest.raises(UserError) as info:
        client.complete(PROMPT)
    assert "OPENAI_API_KEY" in str(info.value) and "sk-test" not in str(info.value)
    assert server.seen_auth == ["Bearer sk-test"]


def test_cost_uses_the_price_table(server):
    client = make_client(server.base_url, "model=priced", "prices.priced.input_per_1m=2",
                         "prices.priced.output_per_1m=10")
    c = client.complete(PROMPT)
    expected = (c.prompt_tokens * 2 + c.completion_tokens * 10) / 1e6
    assert c.prompt_tokens == len(PROMPT) // 4  # what the fake server reports
    assert client.usage.cost_usd == pytest.approx(expected)


def test_rate_limiter_paces_requests_per_minute():
    now = [0.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    limiter = RateLimiter(requests_per_minute=60, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.acquire()  # the bucket starts full: 60 requests at once are fine
    assert waits == []
    limiter = RateLimiter(requests_per_minute=2, clock=lambda: now[0], sleep=sleep)
    limiter.acquire()
    limiter.acquire()
    limiter.acquire()  # third request within the minute waits 30 s (2 per minute)
    assert waits == [pytest.approx(30.0)]


def test_rate_limiter_paces_tokens_per_minute():
    now = [0.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    limiter = RateLimiter(tokens_per_minute=1000, clock=lambda: now[0], sleep=sleep)
    limiter.acquire(800)
    limiter.acquire(500)  # 200 left; 300 more needed at 1000/min = 18 s
    assert waits == [pytest.approx(18.0)]

"""The model client against a real HTTP server on loopback, through the real openai package:
every transient failure is retried within a finite budget, Retry-After is obeyed, a
context-length error (in the wording of OpenAI, vLLM, llama.cpp and TGI) sets the budget that
fits, a reasoning model's refusals are adapted to once, and a bad key, a 422 or a dead server
ends with one message."""

from __future__ import annotations

import pytest
from server_errors import (
    LLAMA_CPP_CONTEXT,
    OPENAI_CONTEXT,
    OPENAI_MAX_TOKENS_UNSUPPORTED,
    TGI_CONTEXT,
    VLLM_CONTEXT,
    VLLM_CONTEXT_MID,
)
from test_generate_fakeserver import FakeOpenAI

from generate.client import ModelClient
from generate.config import RequestConfig, load_config
from generate.endpoint import fitting_budget, is_context_error, unsupported_parameter
from generate.errors import StopRun, Unreachable, UserError
from generate.ratelimit import RateLimiter

PROMPT = "1. Instruction: Name a colour.\nInput: <noinput>\nOutput: Blue.\n\n2. Instruction:"


@pytest.fixture
def server():
    with FakeOpenAI(tasks_per_response=4) as s:
        s.timeout_sleep_s = 0.5
        yield s


def make_client(base_url: str, *overrides: str, sleeps: list | None = None,
                adaptations: list | None = None, reports: list | None = None) -> ModelClient:
    config = load_config(None, [f"base_url={base_url}", "retry.backoff_base_s=0.001",
                                "retry.backoff_max_s=0.01", "request.timeout_s=0.25", *overrides])
    sleep = sleeps.append if sleeps is not None else (lambda s: None)
    on_adapt = (lambda change, why: adaptations.append(change)) if adaptations is not None else None
    if reports is None:
        return ModelClient(config, "sk-test", sleep=sleep, on_adapt=on_adapt)
    return ModelClient(config, "sk-test", sleep=sleep, on_adapt=on_adapt, report=reports.append)


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
    with pytest.raises(StopRun, match="Connection refused"):
        client.complete(PROMPT)
    assert client.usage.errors == {"APIConnectionError": 3}


def test_a_server_that_never_answered_stops_after_max_connection_failures_and_each_is_reported():
    with FakeOpenAI() as s:  # started and stopped: its port is closed now
        url = s.base_url
    reports: list[str] = []
    client = make_client(url.replace("http://", "http://user:sk-secret@"), "retry.max_retries=6",
                         "retry.max_connection_failures=3", reports=reports)
    with pytest.raises(Unreachable) as info:
        client.complete(PROMPT)
    assert str(info.value).startswith(f"cannot connect to {url} (ConnectError: ") and "after 3 attempts" in str(info.value)
    assert client.usage.errors == {"APIConnectionError": 3}  # 3 of the 7 attempts the budget allows
    assert len(reports) == 2 and all(r.startswith(f"connection error: {url}: ConnectError: ") for r in reports)
    assert [r.rsplit("; ", 1)[1].split(" in ")[0] for r in reports] == ["retry 1 of 6", "retry 2 of 6"]
    assert not any("sk-secret" in line for line in [*reports, str(info.value)])
    with pytest.raises(Unreachable):  # a request queued behind the first gives up with it, unsent
        client.complete(PROMPT)
    assert client.usage.errors == {"APIConnectionError": 3}


def test_a_server_that_answered_once_keeps_the_whole_retry_budget_when_it_drops(server):
    server.die_after = 1
    reports: list[str] = []
    client = make_client(server.base_url, "retry.max_retries=4", "retry.max_connection_failures=2",
                         reports=reports)
    client.complete(PROMPT)
    with pytest.raises(StopRun, match="failed 5 times") as info:  # the budget, not the connection cap
        client.complete(PROMPT)
    assert not isinstance(info.value, Unreachable)
    assert len(reports) == 5 and reports[-1].endswith("; giving up")


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


# The budget each server's own numbers allow: context - prompt - 16 (hand-computed), else half.
@pytest.mark.parametrize("message, body, current, expected", [
    (OPENAI_CONTEXT, {"code": "context_length_exceeded"}, 4000, 4096 - 1000 - 16),
    (VLLM_CONTEXT, {"code": 400}, 8000, 8192 - 4097 - 16),
    (VLLM_CONTEXT_MID, {"code": 400}, 8000, 4096 - 2778 - 16),
    (TGI_CONTEXT, "unused", 1000, 2048 - 1244 - 16),
    (LLAMA_CPP_CONTEXT, {"type": "exceed_context_size_error", "n_prompt_tokens": 1407, "n_ctx": 4096},
     3072, 4096 - 1407 - 16),
    (LLAMA_CPP_CONTEXT, {}, 3072, 1536),  # no numbers: halve
])
def test_each_servers_context_error_is_recognised_and_read(message, body, current, expected):
    assert is_context_error(message, body)
    assert fitting_budget(message, body, current) == expected


def test_unsupported_parameter_is_not_a_context_error():
    body = {"code": "unsupported_parameter", "param": "max_tokens"}
    assert not is_context_error(OPENAI_MAX_TOKENS_UNSUPPORTED, body)
    assert unsupported_parameter(OPENAI_MAX_TOKENS_UNSUPPORTED, body) == "max_tokens"
    assert unsupported_parameter(OPENAI_MAX_TOKENS_UNSUPPORTED, {}) == "max_tokens"  # from the words alone


@pytest.mark.parametrize("mode, max_tokens, expected", [("vllm_context", 8000, 4079), ("tgi_context", 3000, 788)])
def test_vllm_400_and_tgi_422_context_errors_set_the_budget(server, mode, max_tokens, expected):
    server.script = [mode]
    adaptations: list = []
    client = make_client(server.base_url, f"request.max_tokens={max_tokens}", adaptations=adaptations)
    client.complete(PROMPT)
    assert client.max_tokens == expected and adaptations == [{"budget": expected}]
    assert server.bodies[-1]["max_tokens"] == expected


def test_a_422_that_is_not_about_context_is_a_user_error_without_retries(server):
    server.script = ["422"]
    client = make_client(server.base_url)
    with pytest.raises(UserError, match=r"HTTP 422.*temperature"):
        client.complete(PROMPT)
    assert server.requests == 1


def test_unset_parameters_are_not_sent(server):
    client = make_client(server.base_url, "request.temperature=null", "request.top_p=null")
    client.complete(PROMPT)
    assert set(server.bodies[-1]) == {"model", "messages", "max_tokens"}  # no stop, no n, no sampling
    client = make_client(server.base_url, "request.token_param=max_completion_tokens", "request.reasoning_effort=low")
    client.complete(PROMPT)
    assert server.bodies[-1]["max_completion_tokens"] == 3072 and "max_tokens" not in server.bodies[-1]
    assert server.bodies[-1]["reasoning_effort"] == "low" and server.bodies[-1]["temperature"] == 1


def test_reasoning_model_defaults_adapt_once_and_raise_the_budget_within_its_limit():
    with FakeOpenAI(tasks_per_response=4, kind="reasoning") as server:
        adaptations: list = []
        client = make_client(server.base_url, "request.timeout_s=5", adaptations=adaptations)
        first = client.complete(PROMPT)
        second = client.complete(PROMPT + " again")
        assert server.rejected == ["max_tokens"]  # learnt once, not per request
        assert adaptations == [{"token_param": "max_completion_tokens"}, {"budget": 6144}]
        # the empty first answer was paid for: its tokens are in the completion that followed it
        assert first.text.count("Output:") == 4 and first.empty_reason is None
        assert first.reasoning_tokens + second.reasoning_tokens == server.billed["reasoning"] == 3072 + 64 + 64
        assert first.completion_tokens + second.completion_tokens == server.billed["completion"]
        assert first.cached_tokens + second.cached_tokens == server.billed["cached"] > 0
        assert client.usage.errors == {"unsupported_parameter": 1, "reasoning_exhausted": 1}


def test_reasoning_model_rejections_of_stop_and_sampling_drop_them():
    with FakeOpenAI(tasks_per_response=4, kind="reasoning") as server:
        adaptations: list = []
        client = make_client(server.base_url, "request.timeout_s=5", "request.temperature=0.7",
                             "request.stop=['###']", adaptations=adaptations)
        client.complete(PROMPT)
        assert server.rejected == ["max_tokens", "stop", "temperature"]
        assert {"drop": "temperature"} in adaptations and {"drop": "stop"} in adaptations
        assert "temperature" not in server.bodies[-1] and server.bodies[-1]["top_p"] == 1


def test_reasoning_budget_at_its_limit_moves_on_instead_of_retrying():
    with FakeOpenAI(tasks_per_response=4, kind="reasoning") as server:
        client = make_client(server.base_url, "request.timeout_s=5", "request.max_tokens_limit=3072")
        c = client.complete(PROMPT)
        assert c.empty_reason == "reasoning_exhausted" and c.text == ""
        assert c.reasoning_tokens == 3072 and server.served == 1  # paid once, not retried


def test_local_server_without_usage_is_estimated_and_its_context_error_read():
    with FakeOpenAI(tasks_per_response=4, kind="local", n_ctx=2048) as server:
        client = make_client(server.base_url, "request.timeout_s=5")
        c = client.complete(PROMPT)
        assert client.max_tokens == 2048 - len(PROMPT) // 4 - 16
        assert c.estimated and c.prompt_tokens == len(PROMPT) // 4 and c.completion_tokens == len(c.text) // 4


def test_the_default_timeout_grows_with_the_budget():
    assert RequestConfig().timeout_for(3072) == pytest.approx(60 + 3072 / 10)
    assert RequestConfig(timeout_s=5).timeout_for(3072) == 5


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

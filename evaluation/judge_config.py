"""The judge's configuration: the generator's endpoint, retry, price and Batch API settings, and
nothing about self-instruct. Read by generate/config.py's loader, so a misspelt key fails the
same way (one line naming the closest valid key)."""

from __future__ import annotations

from dataclasses import dataclass, field

from generate.config import BatchConfig, Price, RateLimitConfig, RequestConfig, RetryConfig, load_config
from generate.errors import UserError


def _judge_request() -> RequestConfig:
    """Greedy decoding (a reasoning model that refuses temperature 0 has it dropped by the
    client), and a budget that holds a short explanation and the verdict line."""
    return RequestConfig(temperature=0.0, top_p=None, max_tokens=512)


@dataclass
class JudgeConfig:
    """Everything one judge run needs; paths relative to the working directory."""

    output_dir: str = "runs/judge"
    api: str = "chat"  # chat | batch (OpenAI Batch API, half price)
    model: str = "gpt-4.1"
    base_url: str | None = None
    paid: bool | None = None  # null = auto: api.openai.com and any non-local base_url are paid
    api_key_env: str = "OPENAI_API_KEY"  # the name of the variable, never the key itself
    concurrency: int = 4
    max_cost_usd: float | None = 2.0  # null = no cap
    max_requests: int | None = None  # a second net next to the cost cap
    seed: int = 0  # which output each pair shows first
    prompt_file: str | None = None  # None = evaluation/prompts/judge.txt
    progress: bool = True
    request: RequestConfig = field(default_factory=_judge_request)
    retry: RetryConfig = field(default_factory=RetryConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    prices: dict[str, Price] = field(default_factory=dict)  # win over generate/pricing.py's table

    def validate(self) -> None:
        r = self.request
        checks = [
            (self.api in ("chat", "batch"), "api must be 'chat' or 'batch'"),
            (self.concurrency >= 1, "concurrency must be >= 1"),
            (self.max_requests is None or self.max_requests >= 1, "max_requests must be >= 1"),
            (r.token_param in ("auto", "max_tokens", "max_completion_tokens"),
             "request.token_param must be auto, max_tokens or max_completion_tokens"),
            (r.max_tokens > 0, "request.max_tokens must be > 0"),
            (r.budget_limit() >= r.max_tokens, "request.max_tokens_limit must be >= request.max_tokens"),
            (r.timeout_s is None or r.timeout_s > 0, "request.timeout_s must be > 0"),
            (r.min_tokens_per_s > 0, "request.min_tokens_per_s must be > 0"),
            (r.connect_timeout_s > 0, "request.connect_timeout_s must be > 0"),
            (self.retry.max_retries >= 0, "retry.max_retries must be >= 0"),
            (self.retry.max_connection_failures >= 1, "retry.max_connection_failures must be >= 1"),
            (0.0 < self.batch.discount <= 1.0, "batch.discount must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"config: {message}")


def load_judge_config(path: str | None, overrides: list[str]) -> JudgeConfig:
    return load_config(path, overrides, schema=JudgeConfig)

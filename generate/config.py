"""The generator's configuration: dataclasses filled from YAML, then `dotted.key=value` overrides.

Why dataclasses and not a free dict: a misspelt key must fail loudly (a researcher paying for
tokens should not discover after an hour that `max_cost_usd` was spelt `max_cost`), so every key
is checked against the fields, and the error names the closest valid key. YAML is read with
`yaml.safe_load` only; nothing in a config is ever evaluated.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from generate.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class RequestConfig:
    """What each request asks for. A parameter set to null is not sent at all (the server's
    default applies). Alpaca used temperature 1.0 and top_p 1.0, which is also the only value
    OpenAI's reasoning models accept, so the defaults work there too."""

    temperature: float | None = 1.0
    top_p: float | None = 1.0
    max_tokens: int = 3072  # the token budget of one answer (reasoning included)
    # How the budget is sent on chat: auto = max_completion_tokens on api.openai.com (every
    # current chat model takes it; reasoning models take nothing else), max_tokens elsewhere.
    token_param: str = "auto"  # auto | max_tokens | max_completion_tokens
    max_tokens_limit: int | None = None  # the budget may grow to this when reasoning ate it all; null = 4x max_tokens
    reasoning_effort: str | None = None  # e.g. minimal | low | medium | high; chat and batch only
    stop: list[str] | None = None
    timeout_s: float | None = None  # null = 60 s + budget / min_tokens_per_s (a CPU server is slow)
    min_tokens_per_s: float = 10.0  # the slowest generation speed the automatic timeout allows for
    connect_timeout_s: float = 10.0  # opening a connection: a host that does not answer fails fast

    def budget_limit(self) -> int:
        return self.max_tokens_limit if self.max_tokens_limit is not None else 4 * self.max_tokens

    def timeout_for(self, budget: int) -> float:
        return self.timeout_s if self.timeout_s is not None else 60.0 + budget / self.min_tokens_per_s


@dataclass
class RetryConfig:
    """Bounded retries: a request is tried at most 1 + max_retries times, then the run stops."""

    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # Until the server has answered once, this many failed connections in a row stop the run.
    max_connection_failures: int = 4


@dataclass
class RateLimitConfig:
    """Client-side limits so a run stays under an account's quota; 0 means no limit."""

    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0


@dataclass
class FilterConfig:
    """Instruction length bounds; None picks the language default (see generate/filters.py)."""

    min_words: int | None = None
    max_words: int | None = None
    require_hangul: bool = True  # Korean mode only: an instruction with no Hangul is not Korean


@dataclass
class DedupConfig:
    """ROUGE-L dedup: reject a candidate scoring above `threshold` against any kept instruction."""

    threshold: float = 0.7
    workers: int = 2  # size of the one persistent pool for exact LCS; 0 = in-process
    top_k: int = 10  # most similar instructions recorded in the metadata
    avg_sample: int = 256  # pool members sampled for the average-similarity metadata


@dataclass
class Price:
    """USD per million tokens; null cached/reasoning prices mean "same as input/output"."""

    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    cached_input_per_1m: float | None = None
    reasoning_per_1m: float | None = None


@dataclass
class BatchConfig:
    """`api: batch`: the OpenAI Batch API (half price, answers within `completion_window`)."""

    requests_per_round: int = 200  # prompts per batch job; each round samples the pool anew
    poll_interval_s: float = 30.0
    completion_window: str = "24h"
    discount: float = 0.5  # batch price = discount x synchronous price


@dataclass
class GenerateConfig:
    """Everything one generation run needs. Paths are relative to the working directory."""

    output_dir: str = "runs/self_instruct"
    num_instructions: int = 100
    seed_tasks: str = "generate/seeds/en.jsonl"
    lang: str = "en"  # en | ko
    api: str = "chat"  # chat | completions | batch (OpenAI Batch API with chat requests)
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    paid: bool | None = None  # null = auto: api.openai.com and any non-local base_url are paid
    api_key_env: str = "OPENAI_API_KEY"  # the name of the variable, never the key itself
    concurrency: int = 4
    max_cost_usd: float | None = 5.0  # null = no cap (also the way to run a paid model without a price)
    seed: int = 0
    prompt_file: str | None = None  # None = generate/prompts/{lang}.txt
    num_prompt_instructions: int = 3
    tasks_per_request: int = 20
    machine_ratio: float = 0.0  # chance each prompt example comes from the generated pool
    max_requests: int | None = None  # a hard cap on requests, a second safety net next to cost
    stall_rounds: int = 20  # stop after this many rounds in a row that keep nothing
    progress: bool = True
    request: RequestConfig = field(default_factory=RequestConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    # Your prices; they win over the built-in dated table in generate/pricing.py.
    prices: dict[str, Price] = field(default_factory=dict)

    def round_size(self) -> int:
        """Requests per round: all prompts of a round are built from the same kept pool."""
        return self.batch.requests_per_round if self.api == "batch" else self.concurrency

    def prompt_path(self) -> Path:
        return Path(self.prompt_file) if self.prompt_file else PACKAGE_DIR / "prompts" / f"{self.lang}.txt"

    def validate(self) -> None:
        """Cross-field checks that types alone cannot express."""
        checks = [
            (self.lang in ("en", "ko"), "lang must be 'en' or 'ko'"),
            (self.api in ("chat", "completions", "batch"), "api must be 'chat', 'completions' or 'batch'"),
            (self.request.token_param in ("auto", "max_tokens", "max_completion_tokens"),
             "request.token_param must be auto, max_tokens or max_completion_tokens"),
            (self.request.budget_limit() >= self.request.max_tokens,
             "request.max_tokens_limit must be >= request.max_tokens"),
            (self.request.timeout_s is None or self.request.timeout_s > 0, "request.timeout_s must be > 0"),
            (self.request.min_tokens_per_s > 0, "request.min_tokens_per_s must be > 0"),
            (self.batch.requests_per_round >= 1, "batch.requests_per_round must be >= 1"),
            (0.0 < self.batch.discount <= 1.0, "batch.discount must be in (0, 1]"),
            (self.num_instructions > 0, "num_instructions must be > 0"),
            (self.concurrency >= 1, "concurrency must be >= 1"),
            (self.num_prompt_instructions >= 1, "num_prompt_instructions must be >= 1"),
            (self.tasks_per_request > self.num_prompt_instructions,
             "tasks_per_request must be larger than num_prompt_instructions"),
            (0.0 <= self.machine_ratio <= 1.0, "machine_ratio must be in [0, 1]"),
            (0.0 < self.dedup.threshold <= 1.0, "dedup.threshold must be in (0, 1]"),
            (self.retry.max_retries >= 0, "retry.max_retries must be >= 0"),
            (self.retry.max_connection_failures >= 1, "retry.max_connection_failures must be >= 1"),
            (self.request.connect_timeout_s > 0, "request.connect_timeout_s must be > 0"),
            (self.request.max_tokens > 0, "request.max_tokens must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"config: {message}")


# ---------------------------------------------------------------------------------------------
# Filling dataclasses from plain data, with one-line errors.


def _coerce(value: Any, tp: Any, src: str, key: str) -> Any:
    """Check/convert one value against a field type; bools are not ints, ints are floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], src, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{src}: key '{key}': expected a mapping, got {value!r}")
        return _fill(tp(), value, src, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{src}: key '{key}': expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, src, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{src}: key '{key}': expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, src, f"{key}.{k}") for k, v in value.items()}
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, False)
    if ok:
        return float(value) if tp is float else value
    raise UserError(f"{src}: key '{key}': expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _fill(obj: Any, data: dict, src: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        if key not in names:
            match = difflib.get_close_matches(str(key), names, n=1, cutoff=0.0)
            hint = f" (did you mean '{prefix}{match[0]}'?)" if match else ""
            raise UserError(f"{src}: unknown config key '{prefix}{key}'{hint}")
        current = getattr(obj, key)
        if isinstance(current, dict) and isinstance(value, dict):
            # Merge tables such as `prices` so one override keeps the other entries.
            _, val_tp = typing.get_args(hints[key])
            for name, item in value.items():
                name = str(name)
                if dataclasses.is_dataclass(val_tp) and name in current and isinstance(item, dict):
                    _fill(current[name], item, src, f"{prefix}{key}.{name}.")
                else:
                    current[name] = _coerce(item, val_tp, src, f"{prefix}{key}.{name}")
            continue
        setattr(obj, key, _coerce(value, hints[key], src, prefix + key))
    return obj


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] = (), schema: type = GenerateConfig) -> Any:
    """Read YAML (if given), apply `key=value` overrides (values parsed as YAML scalars), validate.
    `schema` is the config dataclass (with a `validate()`); other commands reuse the same rules."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"{path}: cannot read config ({e.strerror})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{path}:{line} not valid YAML ({getattr(e, 'problem', e)})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"{path}: the top level must be a mapping of keys")
        data = loaded or {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}': expected dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    config = _fill(schema(), data, str(path) if path else "config")
    config.validate()
    return config


def config_to_dict(config: GenerateConfig) -> dict:
    """Plain data for the run metadata; the config never holds an API key, only its variable name."""
    return dataclasses.asdict(config)


def api_key(config: Any, command: str) -> str:
    """The API key from the environment only (never a config file); a server given by base_url
    without auth gets a dummy. `command` is the caller's command line, for the hint."""
    key = os.environ.get(config.api_key_env, "").strip()
    if key:
        return key
    if config.base_url:
        return "not-needed"
    raise UserError(f"no API key: set {config.api_key_env} in the environment (export "
                    f"{config.api_key_env}=sk-...), or point base_url at an OpenAI-compatible server "
                    f"({command} base_url=http://localhost:8000/v1)")

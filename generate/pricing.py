"""What a run costs: a dated price table, which endpoints are paid, and the cost of a token count.

Why a refusal instead of a zero: with a price-less model the old accounting said $0 and the cost
cap silently never fired. On a paid endpoint with `max_cost_usd` set, a model without a price now
stops the run before its first request; a local server (vLLM, llama.cpp on this machine or the
LAN) costs nothing and is reported as unpriced.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlparse, urlsplit, urlunsplit

from generate.config import GenerateConfig, Price
from generate.errors import UserError

# OpenAI list prices in USD per 1M tokens, standard (synchronous) tier, as published on
# https://openai.com/api/pricing/ (platform.openai.com/docs/pricing) in August 2025. Only models
# whose prices we could state with confidence are listed; newer models (and any other
# provider) need a `prices:` entry in the config. Reasoning tokens are billed as output tokens
# (no separate price); the Batch API bills half of every price (`batch.discount`).
PRICES_AS_OF = "2025-08"
PRICE_SOURCE = "https://openai.com/api/pricing/"
BUILTIN_PRICES: dict[str, Price] = {
    "gpt-5": Price(1.25, 10.00, cached_input_per_1m=0.125),
    "gpt-5-mini": Price(0.25, 2.00, cached_input_per_1m=0.025),
    "gpt-5-nano": Price(0.05, 0.40, cached_input_per_1m=0.005),
    "gpt-4.1": Price(2.00, 8.00, cached_input_per_1m=0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, cached_input_per_1m=0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, cached_input_per_1m=0.025),
    "gpt-4o": Price(2.50, 10.00, cached_input_per_1m=1.25),
    "gpt-4o-mini": Price(0.15, 0.60, cached_input_per_1m=0.075),
    "o3": Price(2.00, 8.00, cached_input_per_1m=0.50),
    "o4-mini": Price(1.10, 4.40, cached_input_per_1m=0.275),
    "gpt-3.5-turbo-instruct": Price(1.50, 2.00),
}

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini"


def public_url(base_url: str | None) -> str:
    """The endpoint as it may be printed: user:password and the query (where a key could be) cut."""
    parts = urlsplit(base_url or "https://api.openai.com/v1")
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def is_local(base_url: str | None) -> bool:
    """A server on this machine or a private network: nobody bills for its tokens."""
    if not base_url:
        return False
    host = (urlparse(base_url).hostname or "").lower()
    if host in ("localhost", "0.0.0.0") or host.endswith(".local") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def is_openai(base_url: str | None) -> bool:
    return not base_url or (urlparse(base_url).hostname or "").lower() == "api.openai.com"


def is_paid(config: GenerateConfig) -> bool:
    return config.paid if config.paid is not None else not is_local(config.base_url)


def price_for(config: GenerateConfig) -> Price | None:
    """The config's own price wins; the built-in table applies on paid endpoints only."""
    if config.model in config.prices:
        return config.prices[config.model]
    if not is_paid(config):
        return None
    name = _SNAPSHOT.sub("", config.model)
    return BUILTIN_PRICES.get(config.model) or BUILTIN_PRICES.get(name)


def check_priced(config: GenerateConfig) -> str | None:
    """Refuse (UserError) a paid, capped run with no price; return a one-time note, if any."""
    if price_for(config) is not None:
        return None
    if is_paid(config):
        if config.max_cost_usd is None:
            return (f"note: no price known for model '{config.model}'; cost is not counted "
                    f"(max_cost_usd=null)")
        raise UserError(f"no price known for model '{config.model}' (built-in table as of {PRICES_AS_OF}), "
                        f"so max_cost_usd={config.max_cost_usd} could never stop the run: give its price "
                        f"in the config (prices: {{{config.model}: {{input_per_1m: ..., output_per_1m: ...}}}}, "
                        f"or prices.{config.model}.input_per_1m=... on the command line) or opt out "
                        f"of the cap with max_cost_usd=null")
    return f"note: local server at {public_url(config.base_url)}: unpriced, cost counted as $0"


def cost_usd(price: Price | None, tokens: dict, discount: float = 1.0) -> float:
    """tokens: prompt (cached included), cached, completion (reasoning included), reasoning."""
    if price is None:
        return 0.0
    cached = min(tokens.get("cached", 0), tokens["prompt"])
    reasoning = min(tokens.get("reasoning", 0), tokens["completion"])
    cached_price = price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m
    reasoning_price = price.output_per_1m if price.reasoning_per_1m is None else price.reasoning_per_1m
    total = ((tokens["prompt"] - cached) * price.input_per_1m + cached * cached_price
             + (tokens["completion"] - reasoning) * price.output_per_1m + reasoning * reasoning_price)
    return discount * total / 1e6

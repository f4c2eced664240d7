"""The price table and the cost of a token count, against hand-computed dollars."""

from __future__ import annotations

import pytest

from generate.config import Price, load_config
from generate.errors import UserError
from generate.pricing import check_priced, cost_usd, is_local, price_for


def config(*overrides: str):
    return load_config(None, list(overrides))


def test_cached_and_reasoning_tokens_are_priced_where_they_differ():
    price = Price(2.0, 10.0, cached_input_per_1m=0.5)
    tokens = {"prompt": 1000, "cached": 400, "completion": 500, "reasoning": 200}
    # 600 x $2 + 400 x $0.5 + 300 x $10 + 200 x $10 (reasoning billed as output), per 1M
    assert cost_usd(price, tokens) == pytest.approx(6400 / 1e6)
    assert cost_usd(price, tokens, discount=0.5) == pytest.approx(3200 / 1e6)  # Batch API
    price = Price(2.0, 10.0, cached_input_per_1m=0.5, reasoning_per_1m=20.0)
    assert cost_usd(price, tokens) == pytest.approx(8400 / 1e6)
    assert cost_usd(None, tokens) == 0.0


def test_local_servers_are_recognised():
    for url in ("http://127.0.0.1:8000/v1", "http://localhost:8080/v1", "http://192.168.1.5/v1", "http://[::1]:80/v1"):
        assert is_local(url), url
    for url in (None, "https://api.openai.com/v1", "https://openrouter.ai/api/v1", "http://8.8.8.8/v1"):
        assert not is_local(url), url


def test_the_builtin_table_applies_on_paid_endpoints_and_to_dated_snapshots():
    assert price_for(config("model=gpt-4o-mini-2024-07-18")).input_per_1m == 0.15
    assert price_for(config("model=gpt-4o-mini", "base_url=http://127.0.0.1:8000/v1")) is None  # local: free
    assert price_for(config("model=gpt-4o-mini", "base_url=http://127.0.0.1:8000/v1", "paid=true")).output_per_1m == 0.60
    assert price_for(config("model=mine", "prices.mine.input_per_1m=3", "base_url=http://localhost/v1")).input_per_1m == 3


def test_an_unpriced_model_under_a_cost_cap_on_a_paid_endpoint_is_refused():
    with pytest.raises(UserError, match=r"no price known for model 'new-model'.*prices.*max_cost_usd=null"):
        check_priced(config("model=new-model"))
    assert "not counted" in check_priced(config("model=new-model", "max_cost_usd=null"))
    assert "unpriced" in check_priced(config("model=new-model", "base_url=http://localhost:8000/v1"))
    assert check_priced(config("model=gpt-5-mini")) is None

"""Vectorized pricing: parity with genai-prices' calc_price, overrides, tiers, time, unknowns."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import polars as pl
import pytest
from genai_prices import Usage, calc_price, data_snapshot
from genai_prices import types as gp

from spanpulse.schemas.pricing import (
    Plan,
    Pricing,
    TokenPrice,
    plan_cost_expr,
    plan_from_model_price,
)

USAGES = [
    # input (incl. cache), output (incl. reasoning), cache read, cache write, reasoning
    (1000, 200, 0, 0, 0),
    (5000, 300, 2048, 512, 100),
    (250_000, 1000, 100_000, 10_000, 500),  # crosses the 200k tiers
    (10, 0, 0, 0, 0),
]
USAGE_FRAME = pl.DataFrame(
    USAGES,
    schema=[
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ],
    orient="row",
)


def _model_prices() -> list[tuple[str, gp.ModelPrice]]:
    out = []
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            prices = model.prices
            items = [prices] if isinstance(prices, gp.ModelPrice) else [c.prices for c in prices]
            out.extend((f"{provider.id}/{model.id}#{i}", p) for i, p in enumerate(items))
    return out


def _expected_nanos(price: gp.ModelPrice, usage: tuple[int, ...]) -> int:
    inp, out, cache_read, cache_write, reasoning = usage
    result = price.calc_price(
        Usage(
            input_tokens=inp,
            output_tokens=out,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            output_reasoning_tokens=reasoning,
        )
    )
    return int((result["total_price"] * Decimal(1_000_000_000)).to_integral_value())


def test_vectorized_formula_matches_calc_price_for_every_model() -> None:
    checked: set[Plan] = set()
    for name, price in _model_prices():
        plan = plan_from_model_price(price)
        if plan is None or plan in checked:  # None: prices no tokens (audio hours only, ...)
            continue
        got = USAGE_FRAME.select(plan_cost_expr(plan).round().cast(pl.Int64)).to_series()
        want = [_expected_nanos(price, u) for u in USAGES]
        for g, w in zip(got.to_list(), want, strict=True):
            assert abs(g - w) <= max(1, abs(w) * 1e-12), (name, got.to_list(), want)
        checked.add(plan)
    assert len(checked) > 300


def frame(**cols: Any) -> pl.DataFrame:
    base: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4o",
        "response_model": None,
        "end_time_ms": 1_760_000_000_000,
        "input_tokens": 1000,
        "output_tokens": 100,
        "cached_input_tokens": None,
        "cache_write_tokens": None,
        "reasoning_tokens": None,
        "is_error": False,
        "span_cost_usd": None,
    }
    base.update(cols)
    n = max((len(v) for v in base.values() if isinstance(v, list)), default=1)
    data = {k: v if isinstance(v, list) else [v] * n for k, v in base.items()}
    schema = {
        k: pl.String
        if k in ("provider", "model", "response_model")
        else pl.Boolean
        if k == "is_error"
        else pl.Float64
        if k == "span_cost_usd"
        else pl.Int64
        for k in data
    }
    return pl.DataFrame(data, schema=schema)


def priced(pricing: Pricing, **cols: Any) -> list[dict[str, Any]]:
    return pricing.apply(frame(**cols)).to_dicts()


def test_known_model_cost_and_context_window() -> None:
    (row,) = priced(Pricing())
    assert row["cost_nanos"] == 1000 * 2500 + 100 * 10_000  # $2.5 / $10 per Mtok
    assert row["cost_usd"] == pytest.approx(0.0035)
    assert row["context_window"] == 128_000


def test_unknowns_are_null_never_zero() -> None:
    rows = priced(
        Pricing(),
        provider=["ollama", "openai", "openai", "openai", None],
        model=["gpt-4o", "no-such-model-xyz", "gpt-4o", "gpt-4o", "gpt-4o"],
        input_tokens=[10, 10, None, None, 10],
        output_tokens=[10, 10, None, None, 10],
        is_error=[False, False, False, True, False],
    )
    assert [r["cost_nanos"] for r in rows] == [None, None, None, 0, 10 * 2500 + 10 * 10_000]
    assert [r["context_window"] for r in rows] == [None, None, 128_000, 128_000, 128_000]


def test_span_cost_wins() -> None:
    (row,) = priced(Pricing(), span_cost_usd=0.25, provider="ollama")
    assert (row["cost_nanos"], row["cost_usd"]) == (250_000_000, 0.25)


def test_overrides_and_context_windows() -> None:
    pricing = Pricing(
        overrides={
            "openai/gpt-4o": TokenPrice(input=1.0, output=2.0),
            "my-model": {"input": 3.0, "output": 4.0, "cached_input": 0.5},
        },
        context_windows={"my-model": 8192, "openai/gpt-4o": 1000},
    )
    rows = priced(
        pricing,
        provider=["openai", "azure.ai.openai", "vllm"],
        model=["gpt-4o", "gpt-4o", "my-model"],
        cached_input_tokens=[None, None, 400],
    )
    assert rows[0]["cost_nanos"] == 1000 * 1000 + 100 * 2000
    assert rows[1]["cost_nanos"] == 1000 * 2500 + 100 * 10_000  # override was provider-scoped
    assert rows[2]["cost_nanos"] == 600 * 3000 + 400 * 500 + 100 * 4000
    assert [r["context_window"] for r in rows] == [1000, 128_000, 8192]


@pytest.mark.parametrize(
    "bad",
    [{"input": 1.0, "outptu": 2.0}, {"cached_input": 1.0}],
)
def test_bad_override_is_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="price override"):
        Pricing(overrides={"m": bad})


def test_response_model_is_priced_first() -> None:
    (row,) = priced(Pricing(), model="gpt-4o", response_model="gpt-4o-mini-2024-07-18")
    assert row["cost_nanos"] == 1000 * 150 + 100 * 600


def test_tiered_prices_are_vectorized() -> None:
    rows = priced(
        Pricing(),
        provider="anthropic",
        model="claude-sonnet-4-5",
        input_tokens=[199_000, 250_000],
        output_tokens=[1000, 1000],
    )
    for row in rows:
        want = calc_price(
            Usage(input_tokens=row["input_tokens"], output_tokens=1000),
            "claude-sonnet-4-5",
            provider_id="anthropic",
        ).total_price
        assert row["cost_nanos"] == int(want * Decimal(1_000_000_000))
    assert rows[1]["cost_nanos"] > rows[0]["cost_nanos"] * 1.5  # the cliff


def test_time_conditional_prices_follow_event_time() -> None:
    peak = datetime(2025, 10, 9, 8, 0, tzinfo=UTC)
    off_peak = datetime(2025, 10, 9, 20, 0, tzinfo=UTC)
    ends = [int(t.timestamp() * 1000) for t in (peak, off_peak)]
    rows = priced(Pricing(), provider="deepseek", model="deepseek-chat", end_time_ms=ends)
    for row, at in zip(rows, (peak, off_peak), strict=True):
        want = calc_price(
            Usage(input_tokens=1000, output_tokens=100),
            "deepseek-chat",
            provider_id="deepseek",
            genai_request_timestamp=at,
        ).total_price
        assert row["cost_nanos"] == int(want * Decimal(1_000_000_000))
    assert rows[0]["cost_nanos"] != rows[1]["cost_nanos"]


def test_lookup_cache_is_bounded() -> None:
    pricing = Pricing(cache_size=2)
    models = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3", "gpt-4o"]
    rows = priced(pricing, model=models, input_tokens=[1] * 5, output_tokens=[1] * 5)
    assert all(r["cost_nanos"] is not None for r in rows)
    assert len(pricing._resolved) <= 2


def test_plan_without_cache_price_charges_input() -> None:
    plan = Plan(input=(1000.0, ()), output=(2000.0, ()))
    cost = USAGE_FRAME.head(2).select(plan_cost_expr(plan)).to_series().to_list()
    assert cost == [1000 * 1000 + 200 * 2000, 5000 * 1000 + 300 * 2000]

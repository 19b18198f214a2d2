"""Cost and context window of LLM calls, vectorized per batch, from genai-prices plus overrides.

Prices are looked up once per distinct (provider, model, response model[, minute]) of a batch and
cached in bounded dicts; the cost itself is one Polars expression over the whole column.  The
formula mirrors ``genai_prices`` exactly (checked against ``calc_price`` over its whole model list
in ``tests/test_pricing.py``):

* input tokens include cache reads and writes; a cache read (write) token is charged the cache
  read (write) price when the model has one, else the input price;
* reasoning tokens are part of output tokens, charged the reasoning price only when the model
  has one;
* tiered prices are "cliff" tiers on the total input tokens of the call (every token pays the
  tier's price once the call's input crosses the tier start), evaluated vectorized;
* time-conditional prices (a price change on a date, DeepSeek's off-peak hours) are resolved per
  event-time *minute* of the call's end (genai-prices' constraints sit on whole minutes), never
  from the wall clock, so replays price identically;
* request-context price variants (e.g. service tiers) are not applied.

Which model is priced: config overrides first (keys ``provider/model`` then ``model``, the request
model then the response model), then genai-prices (the response model, i.e. the snapshot that
actually answered, then the request model).  The canonical provider maps to a genai-prices
provider id via :data:`~.conventions.GENAI_PRICES_PROVIDERS`; an unmapped provider (``ollama``,
a private gateway) is not priced from genai-prices; a span without a provider is matched by model
name.

Results: ``cost_nanos`` (integer nano-USD, rounded once per call) and ``cost_usd``.  Unknown price
or unknown usage gives null (counted as unpriced downstream), never zero; a failed call that
reports no usage costs 0 (nothing was billed).  A span that carries its own cost wins.
``context_window`` comes from genai-prices' ``ModelInfo.context_window``, overridable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import polars as pl
from genai_prices import data_snapshot
from genai_prices import types as gp

from spanpulse.schemas.bounded_cache import BoundedCache
from spanpulse.schemas.conventions import GENAI_PRICES_PROVIDERS
from spanpulse.schemas.record import NANOS_PER_USD

_NANOS_PER_USD_PER_MTOK: Final = NANOS_PER_USD / 1_000_000  # USD per Mtok -> nano-USD per token
_MS_PER_MINUTE: Final = 60_000

#: (nano-USD per token below every tier, ((tier start in input tokens, nano-USD per token), ...))
Rate = tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True)
class TokenPrice:
    """A configured price, USD per million tokens; ``None`` cache prices fall back to input."""

    input: float | None = None
    output: float | None = None
    cached_input: float | None = None
    cache_write: float | None = None


PriceLike = TokenPrice | Mapping[str, float | None]


@dataclass(frozen=True)
class Plan:
    """Resolved per-token rates of one model at one time; ``None`` means "not priced separately"."""

    input: Rate | None
    output: Rate | None
    cache_read: Rate | None = None
    cache_write: Rate | None = None
    reasoning: Rate | None = None
    per_request_nanos: float = 0.0


@dataclass(frozen=True)
class _Resolved:
    plan: Plan | None  # static plan, or None when unpriced or time-conditional
    conditional: gp.ModelInfo | None  # prices that depend on the call's time
    context_window: int | None


def _flat(usd_per_mtok: float | None) -> Rate | None:
    return None if usd_per_mtok is None else (float(usd_per_mtok) * _NANOS_PER_USD_PER_MTOK, ())


def _rate(value: object) -> Rate | None:
    """Convert a genai-prices price (Decimal or TieredPrices, USD per Mtok) to a Rate."""
    if value is None:
        return None
    if isinstance(value, gp.TieredPrices):
        tiers = tuple((t.start, float(t.price) * _NANOS_PER_USD_PER_MTOK) for t in value.tiers)
        return float(value.base) * _NANOS_PER_USD_PER_MTOK, tiers
    return float(Decimal(str(value))) * _NANOS_PER_USD_PER_MTOK, ()


def plan_from_model_price(price: gp.ModelPrice) -> Plan | None:
    """Build a Plan from a genai-prices ModelPrice; None when it prices no tokens at all.

    Price keys for usage we never report (audio, images, web searches, 1h cache writes, ...) are
    ignored: genai-prices counts that usage as 0, so they cannot change the result.
    """
    plan = Plan(
        input=_rate(price.input_mtok),
        output=_rate(price.output_mtok),
        cache_read=_rate(price.cache_read_mtok),
        cache_write=_rate(price.cache_write_mtok),
        reasoning=_rate(price.output_reasoning_mtok),
        per_request_nanos=_per_request(price.requests_kcount),
    )
    return None if plan.input is None and plan.output is None else plan


def _per_request(value: object) -> float:
    """``requests_kcount`` is USD per 1000 requests; return nano-USD per request."""
    if value is None or isinstance(value, gp.TieredPrices):
        return 0.0
    return float(Decimal(str(value)) * NANOS_PER_USD / 1000)


def plan_from_override(price: PriceLike) -> Plan:
    """Build a Plan from a configured price (a TokenPrice or a mapping with the same fields)."""
    if not isinstance(price, TokenPrice):
        unknown = set(price) - {"input", "output", "cached_input", "cache_write"}
        if unknown:
            msg = (
                f"price override has unknown fields {sorted(unknown)}; "
                "use input, output, cached_input, cache_write (USD per million tokens)"
            )
            raise ValueError(msg)
        price = TokenPrice(**price)
    if price.input is None and price.output is None:
        msg = "price override needs at least one of 'input' or 'output' (USD per million tokens)"
        raise ValueError(msg)
    return Plan(
        input=_flat(price.input),
        output=_flat(price.output),
        cache_read=_flat(price.cached_input),
        cache_write=_flat(price.cache_write),
    )


class Pricing:
    """Prices LLM-call frames; build once from settings, reuse for every batch."""

    def __init__(
        self,
        overrides: Mapping[str, PriceLike] | None = None,
        context_windows: Mapping[str, int] | None = None,
        cache_size: int = 4096,
    ) -> None:
        self._overrides = {k.lower(): plan_from_override(v) for k, v in (overrides or {}).items()}
        self._windows = {k.lower(): int(v) for k, v in (context_windows or {}).items()}
        for key, window in self._windows.items():
            if window <= 0:
                msg = (
                    f"context window override {key!r} must be a positive token count, got {window}"
                )
                raise ValueError(msg)
        self._snapshot = data_snapshot.get_snapshot()
        self._resolved: BoundedCache[Any, Any] = BoundedCache(cache_size)
        self._timed: BoundedCache[Any, Any] = BoundedCache(cache_size)

    # -- lookups (once per distinct key, cached) ------------------------------------------------

    def resolve(
        self, provider: str | None, model: str | None, response_model: str | None
    ) -> _Resolved:
        """Resolve the price plan and context window of one (provider, model, response model)."""
        key = (provider, model, response_model)
        hit = self._resolved.get(key)
        if hit is None:
            hit = self._resolved.put(key, self._resolve(provider, model, response_model))
        return hit  # type: ignore[no-any-return]

    def _resolve(
        self, provider: str | None, model: str | None, response_model: str | None
    ) -> _Resolved:
        names = [n.lower() for n in (model, response_model) if n]
        info = self._model_info(provider, [n.lower() for n in (response_model, model) if n])
        window = self._config_lookup(self._windows, provider, names)
        if window is None and info is not None:
            window = info.context_window
        override = self._config_lookup(self._overrides, provider, names)
        if override is not None or info is None:
            return _Resolved(override, None, window)
        if isinstance(info.prices, gp.ModelPrice):
            return _Resolved(plan_from_model_price(info.prices), None, window)
        return _Resolved(None, info, window)

    @staticmethod
    def _config_lookup(table: Mapping[str, Any], provider: str | None, names: list[str]) -> Any:
        for name in names:
            if provider and f"{provider}/{name}" in table:
                return table[f"{provider}/{name}"]
            if name in table:
                return table[name]
        return None

    def _model_info(self, provider: str | None, names: list[str]) -> gp.ModelInfo | None:
        provider_id = None
        if provider is not None:
            provider_id = GENAI_PRICES_PROVIDERS.get(provider)
            if provider_id is None:
                return None
        for name in names:
            try:
                return self._snapshot.find_provider_model(name, None, provider_id, None)[1]
            except LookupError:
                continue
        return None

    def plan_at(self, info: gp.ModelInfo, minute: int) -> Plan | None:
        """Return the plan of a time-conditional model during one event-time minute (cached)."""
        key = (id(info), minute)
        if key not in self._timed:
            at = datetime.fromtimestamp(minute * 60, tz=UTC)
            self._timed.put(key, plan_from_model_price(info.get_prices(at)))
        return self._timed[key]  # type: ignore[no-any-return]

    # -- vectorized application -----------------------------------------------------------------

    def apply(self, df: pl.DataFrame) -> pl.DataFrame:
        """Add ``cost_nanos``, ``cost_usd`` and ``context_window`` to a normalized frame.

        Needs columns provider, model, response_model, end_time_ms, input_tokens,
        output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, is_error and
        span_cost_usd.
        """
        keys = ["provider", "model", "response_model"]
        minute = (pl.col("end_time_ms") // _MS_PER_MINUTE).alias("_minute")
        combos = df.select(*keys, minute).unique()
        plans: dict[Plan, int] = {}
        rows: list[tuple[Any, ...]] = []
        for provider, model, response_model, at_minute in combos.iter_rows():
            resolved = self.resolve(provider, model, response_model)
            plan = resolved.plan
            if resolved.conditional is not None:
                plan = self.plan_at(resolved.conditional, at_minute)
            plan_id = None if plan is None else plans.setdefault(plan, len(plans))
            rows.append(
                (provider, model, response_model, at_minute, plan_id, resolved.context_window)
                + _flat_rates(plan)
            )
        lookup = pl.DataFrame(rows, schema=_LOOKUP_SCHEMA, orient="row")
        joined = df.with_columns(minute).join(
            lookup, on=[*keys, "_minute"], how="left", nulls_equal=True, maintain_order="left"
        )
        tiered = {i: p for p, i in plans.items() if _is_tiered(p)}
        return joined.with_columns(
            _cost_nanos(tiered).alias("cost_nanos"),
        ).select(
            pl.exclude("_minute", "_plan", *_RATE_COLUMNS),
            (pl.col("cost_nanos") / NANOS_PER_USD).alias("cost_usd"),
        )


#: Per-token rates of a flat (untiered) plan, as lookup columns: null = "not priced separately".
_RATE_COLUMNS: Final = ("_flat", "_per_request", "_in", "_out", "_cache_read", "_cache_write",
                        "_reasoning")  # fmt: skip
_LOOKUP_SCHEMA: Final[dict[str, pl.DataType]] = {
    **{k: pl.String() for k in ("provider", "model", "response_model")},
    "_minute": pl.Int64(),
    "_plan": pl.Int32(),
    "context_window": pl.Int64(),
    "_flat": pl.Boolean(),
    **{c: pl.Float64() for c in _RATE_COLUMNS[1:]},
}


def _is_tiered(plan: Plan) -> bool:
    rates = (plan.input, plan.output, plan.cache_read, plan.cache_write, plan.reasoning)
    return any(r is not None and r[1] for r in rates)


def _flat_rates(plan: Plan | None) -> tuple[object, ...]:
    """Return the lookup's rate columns of one plan (all null: no plan, or a tiered one)."""
    if plan is None or _is_tiered(plan):
        return (False, *([None] * (len(_RATE_COLUMNS) - 1)))
    rates = (plan.input, plan.output, plan.cache_read, plan.cache_write, plan.reasoning)
    return (True, plan.per_request_nanos, *(None if r is None else r[0] for r in rates))


def _flat_cost_expr() -> pl.Expr:
    """:func:`plan_cost_expr` with the rates of each row's flat plan read from the rate columns.

    Same operations in the same order (a missing rate adds ``0.0``), so the same floats: one
    expression for every flat plan instead of one ``when`` branch per plan over every row.
    """
    inp = pl.col("input_tokens").fill_null(0)
    out = pl.col("output_tokens").fill_null(0)
    cache_read = pl.col("cached_input_tokens").fill_null(0)
    cache_write = pl.col("cache_write_tokens").fill_null(0)
    reasoning = pl.col("reasoning_tokens").fill_null(0)
    priced = {c: pl.col(c).is_not_null() for c in ("_cache_read", "_cache_write", "_reasoning")}
    leaf_in = (
        inp
        - pl.when(priced["_cache_read"]).then(cache_read).otherwise(0)
        - pl.when(priced["_cache_write"]).then(cache_write).otherwise(0)
    )
    leaf_out = out - pl.when(priced["_reasoning"]).then(reasoning).otherwise(0)
    parts = [
        (leaf_in, "_in"),
        (leaf_out, "_out"),
        (cache_read, "_cache_read"),
        (cache_write, "_cache_write"),
        (reasoning, "_reasoning"),
    ]
    cost = pl.col("_per_request")
    for count, rate in parts:
        cost = cost + (count * pl.col(rate)).fill_null(0.0)
    return pl.when((leaf_in >= 0) & (leaf_out >= 0)).then(cost)


def _rate_expr(rate: Rate, total_input: pl.Expr) -> pl.Expr:
    base, tiers = rate
    if not tiers:
        return pl.lit(base)
    expr: Any = pl
    for start, price in sorted(tiers, reverse=True):
        expr = expr.when(total_input > start).then(pl.lit(price))
    return expr.otherwise(pl.lit(base))  # type: ignore[no-any-return]


def plan_cost_expr(plan: Plan) -> pl.Expr:
    """Float nano-USD cost of each row under one plan (null when a part cannot be split)."""
    inp = pl.col("input_tokens").fill_null(0)
    out = pl.col("output_tokens").fill_null(0)
    cache_read = pl.col("cached_input_tokens").fill_null(0)
    cache_write = pl.col("cache_write_tokens").fill_null(0)
    reasoning = pl.col("reasoning_tokens").fill_null(0)
    zero = pl.lit(0.0)
    leaf_in = (
        inp - (cache_read if plan.cache_read else 0) - (cache_write if plan.cache_write else 0)
    )
    leaf_out = out - (reasoning if plan.reasoning else 0)
    parts = [
        (leaf_in, plan.input),
        (leaf_out, plan.output),
        (cache_read, plan.cache_read),
        (cache_write, plan.cache_write),
        (reasoning, plan.reasoning),
    ]
    cost = pl.lit(plan.per_request_nanos)
    for count, rate in parts:
        cost = cost + (zero if rate is None else count * _rate_expr(rate, inp))
    return pl.when((leaf_in >= 0) & (leaf_out >= 0)).then(cost)


def _cost_nanos(tiered: dict[int, Plan]) -> pl.Expr:
    """Integer nano-USD per row: span-carried cost, else the row's plan, else null."""
    usage_known = pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null()
    chain: Any = pl.when(pl.col("span_cost_usd").is_not_null()).then(
        pl.col("span_cost_usd") * NANOS_PER_USD
    )
    chain = chain.when(~usage_known & pl.col("is_error")).then(pl.lit(0.0))
    chain = chain.when(~usage_known).then(pl.lit(None, dtype=pl.Float64))
    chain = chain.when(pl.col("_flat")).then(_flat_cost_expr())
    for plan_id, plan in tiered.items():
        chain = chain.when(pl.col("_plan") == plan_id).then(plan_cost_expr(plan))
    return chain.otherwise(pl.lit(None, dtype=pl.Float64)).round().cast(pl.Int64)  # type: ignore[no-any-return]

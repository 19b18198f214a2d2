"""Factories for detector tests: realistic rollup rows (contract columns) from a seeded RNG.

Imported by the other ``test_detectors_*`` modules; holds no tests itself apart from a
self-check that the rows it builds satisfy the rollup contract the detectors rely on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from spanpulse.schemas.histogram import ZERO_BUCKET

T0 = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday, 00:00Z
MINUTE = timedelta(minutes=1)


def np_hist(values: np.ndarray) -> list[dict[str, int]]:
    """Histogram cells exactly like ``schemas.histogram.bucket_of`` would build them."""
    if values.size == 0:
        return []
    v = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore"):
        b = np.where(v > 0, np.ceil(np.log2(np.where(v > 0, v, 1.0)) * 16) - 1, ZERO_BUCKET)
    uniq, counts = np.unique(b.astype(np.int64), return_counts=True)
    return [{"b": int(x), "n": int(c)} for x, c in zip(uniq, counts, strict=True)]


@dataclass
class Traffic:
    """Knobs of one synthetic series; change a field mid-stream to inject an incident."""

    calls_per_min: float = 200.0
    p_length: float = 0.01
    p_refusal: float = 0.005
    p_error: float = 0.002
    p_filter: float = 0.001
    parse_share: float = 0.3
    p_parse_fail: float = 0.005
    input_median: float = 1000.0
    output_median: float = 200.0
    context_window: float = 128_000.0
    diurnal: float = 0.0
    price_in: float = 2.5e-6
    price_out: float = 1e-5
    extra: dict[str, Any] = field(default_factory=dict)


def make_row(
    rng: np.random.Generator,
    i: int,
    traffic: Traffic,
    dims: dict[str, str] | None = None,
    grain: str | None = None,
    window: timedelta = MINUTE,
    calls: int | None = None,
) -> dict[str, Any]:
    """Build window ``i`` (starting at ``T0 + i * window``) of a series from ``traffic``."""
    dims = dims if dims is not None else {"tenant": "acme"}
    start = T0 + i * window
    minutes = window.total_seconds() / 60.0
    rate = traffic.calls_per_min * minutes
    rate *= 1.0 + traffic.diurnal * math.sin(2 * math.pi * (start.hour * 60 + start.minute) / 1440)
    n = int(rng.poisson(max(rate, 0.0))) if calls is None else calls
    inp = np.exp(rng.normal(math.log(traffic.input_median), 0.4, n))
    out = np.exp(rng.normal(math.log(traffic.output_median), 0.6, n))
    lat = 0.2 + out / 80.0 * np.exp(rng.normal(0.0, 0.2, n))
    attempts = int(rng.binomial(n, traffic.parse_share)) if n else 0
    length = int(rng.binomial(n, traffic.p_length)) if n else 0
    row: dict[str, Any] = {
        "window_start": start,
        "window_end": start + window,
        "grain": grain or ".".join(dims),
        **dims,
        "late": False,
        "calls": n,
        "errors": int(rng.binomial(n, traffic.p_error)) if n else 0,
        "input_tokens": int(inp.sum()),
        "output_tokens": int(out.sum()),
        "cached_input_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": float(inp.sum() * traffic.price_in + out.sum() * traffic.price_out),
        "unpriced_calls": 0,
        "finish_length": length,
        "finish_content_filter": int(rng.binomial(n, traffic.p_filter)) if n else 0,
        "finish_stop": max(0, n - length),
        "refusals": int(rng.binomial(n, traffic.p_refusal)) if n else 0,
        "parse_attempts": attempts,
        "parse_failures": int(rng.binomial(attempts, traffic.p_parse_fail)) if attempts else 0,
        "latency_ms_sum": int(lat.sum() * 1000),
        "input_tokens_hist": np_hist(inp),
        "output_tokens_hist": np_hist(out),
        "latency_s_hist": np_hist(lat),
        "ttft_s_hist": np_hist(lat / 4),
        "context_fill_hist": np_hist(inp / traffic.context_window),
        "exemplar_trace_ids": [f"{i:08x}{k:024x}" for k in range(3)],
        "overflow_calls": 0,
    }
    row.update(traffic.extra)
    return row


def test_rows_follow_the_rollup_contract() -> None:
    row = make_row(np.random.default_rng(1), 5, Traffic())
    assert row["window_end"] - row["window_start"] == MINUTE
    assert row["window_start"].tzinfo is UTC
    assert sum(c["n"] for c in row["input_tokens_hist"]) == row["calls"]
    assert row["grain"] == "tenant" and row["tenant"] == "acme"

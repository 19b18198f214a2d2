"""derive_signals (table-driven), the percentile pool, and Wilson intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from test_detectors_fixtures import Traffic, make_row, np_hist

from spanpulse.detectors.signals import (
    PercentilePool,
    derive_signals,
    signal_value,
    wilson_interval,
)
from spanpulse.schemas.histogram import RELATIVE_ERROR

T = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("row", "name", "expected"),
    [
        ({"calls": 400, "finish_length": 40}, "length_share", (40, 400)),
        ({"calls": 10, "refusals": 1}, "refusal_rate", (1, 10)),
        ({"calls": 10, "finish_content_filter": 2}, "content_filter_rate", (2, 10)),
        ({"calls": 10, "parse_attempts": 4, "parse_failures": 1}, "parse_failure_rate", (1, 4)),
        ({"calls": 10, "errors": 3}, "error_rate", (3, 10)),
        ({"calls": 10, "cost_usd": 2.0}, "cost_per_call", 0.2),
        ({"calls": 4, "input_tokens": 4000, "output_tokens": 400}, "tokens", 4400.0),
        ({"calls": 4, "input_tokens": 4000}, "input_tokens_per_call", 1000.0),
        ({"calls": 4, "latency_ms_sum": 2000}, "latency_mean", 0.5),
        ({"calls": 120, "window_start": T, "window_end": T + timedelta(minutes=5)},
         "call_rate", 24.0),
    ],
)  # fmt: skip
def test_signal_definitions(row: dict[str, object], name: str, expected: object) -> None:
    assert derive_signals(row)[name] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("row", "absent"),
    [
        ({"calls": 0}, "length_share"),  # no calls: no rate (not a zero rate)
        ({"calls": 5, "parse_attempts": 0}, "parse_failure_rate"),
        ({"calls": 0}, "cost_per_call"),
        ({"calls": 5, "input_tokens_hist": [{"b": 100, "n": 5}]}, "input_tokens_p95"),
    ],
)
def test_undefined_signals_are_absent(row: dict[str, object], absent: str) -> None:
    assert absent not in derive_signals(row)


def test_percentiles_come_from_the_histograms() -> None:
    values = np.arange(1, 1001, dtype=float)
    row = {"calls": 1000, "output_tokens_hist": np_hist(values)}
    p95 = derive_signals(row)["output_tokens_p95"]
    assert isinstance(p95, float)
    assert abs(p95 - 950.0) / 950.0 <= RELATIVE_ERROR


def test_derive_signals_does_not_mutate_the_row() -> None:
    row = make_row(np.random.default_rng(0), 1, Traffic())
    snapshot = {k: (list(v) if isinstance(v, list) else v) for k, v in row.items()}
    derive_signals(row)
    assert row == snapshot


def test_pool_waits_for_enough_calls_then_emits_once() -> None:
    pool = PercentilePool(min_calls=50, max_windows=10)
    rng = np.random.default_rng(2)
    rows = [make_row(rng, i, Traffic(calls_per_min=20), calls=20) for i in range(3)]
    assert pool.add(rows[0]) == {} and pool.add(rows[1]) == {}
    out = pool.add(rows[2])  # 60 pooled calls
    assert set(out) >= {"input_tokens_p95", "output_tokens_p95", "latency_p95"}
    assert pool.add(rows[0]) == {}  # the pool restarted


def test_pool_gives_up_on_a_trickle() -> None:
    pool = PercentilePool(min_calls=50, max_windows=3)
    rng = np.random.default_rng(3)
    for i in range(6):
        assert pool.add(make_row(rng, i, Traffic(), calls=2)) == {}


def test_wilson_interval_contains_the_rate_and_shrinks_with_counts() -> None:
    lo1, hi1 = wilson_interval(4, 40, 2.326)
    lo2, hi2 = wilson_interval(400, 4000, 2.326)
    assert lo1 < 0.1 < hi1 and lo2 < 0.1 < hi2
    assert hi2 - lo2 < hi1 - lo1
    assert wilson_interval(0, 0, 2.326) == (0.0, 1.0)
    assert signal_value((1, 4)) == 0.25 and signal_value((0, 0)) == 0.0

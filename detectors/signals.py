"""Turn one rollup row into the named signals the detectors watch.

Why a pure function: the dataflow, the engine, the tests and a notebook all need the same
definitions ("length share" = length stops / calls, "p95" = from the merged histogram), and
one place to change them.

Two kinds of signal:

* **proportions** ``(successes, trials)`` — kept as counts, never as a bare rate, so the
  proportion test can tell 1 of 3 from 40 of 400;
* **values** — floats.  Percentiles come from the row's merged exponential histograms
  (:func:`spanpulse.schemas.histogram.quantile`), never from averaging percentiles.

A signal is absent from the result when it is undefined for the row (no calls, no parse
attempts, a percentile over fewer than ``min_calls_for_percentiles`` calls): a missing value
is "no evidence", which is different from zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from spanpulse.schemas.histogram import merge_counts, quantile

Signal = float | tuple[int, int]

#: Proportion signals: name -> (numerator column, denominator column).
PROPORTIONS: Final[Mapping[str, tuple[str, str]]] = {
    "length_share": ("finish_length", "calls"),
    "refusal_rate": ("refusals", "calls"),
    "content_filter_rate": ("finish_content_filter", "calls"),
    "parse_failure_rate": ("parse_failures", "parse_attempts"),
    "error_rate": ("errors", "calls"),
}

#: Percentile signals: name -> (histogram column, quantile).
PERCENTILES: Final[Mapping[str, tuple[str, float]]] = {
    "input_tokens_p95": ("input_tokens_hist", 0.95),
    "output_tokens_p95": ("output_tokens_hist", 0.95),
    "latency_p95": ("latency_s_hist", 0.95),
    "ttft_p95": ("ttft_s_hist", 0.95),
    "context_fill_p95": ("context_fill_hist", 0.95),
}

#: Unit of every signal, for alert payloads and messages.
UNITS: Final[Mapping[str, str]] = {
    **dict.fromkeys(PROPORTIONS, "ratio"),
    "input_tokens_p95": "tokens",
    "output_tokens_p95": "tokens",
    "latency_p95": "seconds",
    "ttft_p95": "seconds",
    "context_fill_p95": "fraction",
    "call_rate": "calls/min",
    "calls": "calls",
    "cost_usd": "usd",
    "cost_per_call": "usd",
    "tokens": "tokens",
    "input_tokens_per_call": "tokens",
    "output_tokens_per_call": "tokens",
    "latency_mean": "seconds",
}

#: Human labels used in alert messages.
LABELS: Final[Mapping[str, str]] = {
    "length_share": "length-stop share",
    "refusal_rate": "refusal rate",
    "content_filter_rate": "content-filter rate",
    "parse_failure_rate": "parse-failure rate",
    "error_rate": "error rate",
    "input_tokens_p95": "input tokens p95",
    "output_tokens_p95": "output tokens p95",
    "latency_p95": "latency p95",
    "ttft_p95": "time-to-first-token p95",
    "context_fill_p95": "context-fill p95",
    "call_rate": "call rate",
    "calls": "calls",
    "cost_usd": "spend per window",
    "cost_per_call": "cost per call",
    "tokens": "tokens",
    "input_tokens_per_call": "mean input tokens per call",
    "output_tokens_per_call": "mean output tokens per call",
    "latency_mean": "mean latency",
}


def _int(row: Mapping[str, Any], col: str) -> int:
    value = row.get(col)
    return int(value) if value is not None else 0


def window_minutes(row: Mapping[str, Any]) -> float:
    """Length of the row's window in minutes (1.0 when the bounds are missing)."""
    start, end = row.get("window_start"), row.get("window_end")
    if isinstance(start, datetime) and isinstance(end, datetime) and end > start:
        return (end - start).total_seconds() / 60.0
    return 1.0


def _percentile(hist: Iterable[Mapping[str, int]] | None, q: float) -> float | None:
    if not hist:
        return None
    return quantile(merge_counts([hist]), q)


def derive_signals(
    row: Mapping[str, Any], min_calls_for_percentiles: int = 10
) -> dict[str, Signal]:
    """Return the signals of one rollup row (see the module docstring for absent signals).

    >>> sig = derive_signals({"calls": 400, "finish_length": 40, "errors": 0,
    ...                       "cost_usd": 1.5, "input_tokens": 80000, "output_tokens": 4000})
    >>> sig["length_share"], sig["call_rate"], sig["input_tokens_per_call"]
    ((40, 400), 400.0, 200.0)
    """
    calls = _int(row, "calls")
    minutes = window_minutes(row)
    out: dict[str, Signal] = {
        "calls": float(calls),
        "call_rate": calls / minutes,
        "cost_usd": float(row.get("cost_usd") or 0.0),
        "tokens": float(_int(row, "input_tokens") + _int(row, "output_tokens")),
    }
    for name, (num, den) in PROPORTIONS.items():
        trials = _int(row, den)
        if trials > 0:
            out[name] = (min(_int(row, num), trials), trials)
    if calls > 0:
        out["input_tokens_per_call"] = _int(row, "input_tokens") / calls
        out["output_tokens_per_call"] = _int(row, "output_tokens") / calls
        out["cost_per_call"] = float(row.get("cost_usd") or 0.0) / calls
        if row.get("latency_ms_sum") is not None:
            out["latency_mean"] = _int(row, "latency_ms_sum") / calls / 1000.0
    if calls >= min_calls_for_percentiles:
        for name, (col, q) in PERCENTILES.items():
            value = _percentile(row.get(col), q)
            if value is not None:
                out[name] = value
    return out


def signal_value(signal: Signal) -> float:
    """Return a signal as one number (the rate for a proportion, 0 for no trials)."""
    if isinstance(signal, tuple):
        k, n = signal
        return k / n if n else 0.0
    return float(signal)


def wilson_interval(successes: int, trials: int, z: float) -> tuple[float, float]:
    """Return the Wilson score interval of ``successes / trials`` at normal quantile ``z``.

    Unlike ``rate +- z * se`` it stays inside [0, 1] and is honest for small counts.

    >>> lo, hi = wilson_interval(1, 36, 2.326)
    >>> round(lo, 4), round(hi, 3)
    (0.0038, 0.175)
    """
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    denom = 1.0 + z2 / trials
    center = (p + z2 / (2.0 * trials)) / denom
    half = z * math.sqrt(p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)) / denom
    return max(0.0, center - half), min(1.0, center + half)


class PercentilePool:
    """Pools histograms over consecutive windows until they hold enough calls for a p95.

    Why: the p95 of 8 calls is their maximum — one slow call moves it 5x — so a low-traffic
    series would page on noise.  Instead of dropping small windows, their histograms are
    merged until ``min_calls`` calls are pooled (at most ``max_windows`` windows, then the
    pool restarts), and the percentile signals are emitted for that pooled window.  Busy
    series reach ``min_calls`` every window and are unaffected.
    """

    __slots__ = ("_calls", "_hists", "_windows", "max_windows", "min_calls")

    def __init__(self, min_calls: int = 50, max_windows: int = 30) -> None:
        self.min_calls = min_calls
        self.max_windows = max_windows
        self._hists: dict[str, dict[int, int]] = {}
        self._calls = 0
        self._windows = 0

    def __getstate__(self) -> tuple[int, int, dict[str, dict[int, int]], int, int]:
        return (self.min_calls, self.max_windows, self._hists, self._calls, self._windows)

    def __setstate__(self, state: tuple[int, int, dict[str, dict[int, int]], int, int]) -> None:
        self.min_calls, self.max_windows, self._hists, self._calls, self._windows = state

    def add(self, row: Mapping[str, Any]) -> dict[str, float]:
        """Pool one row; return the percentile signals when the pool is full (else empty)."""
        for col, _ in PERCENTILES.values():
            target = self._hists.setdefault(col, {})
            for cell in row.get(col) or ():
                b = int(cell["b"])
                target[b] = target.get(b, 0) + int(cell["n"])
        self._calls += _int(row, "calls")
        self._windows += 1
        if self._calls < self.min_calls:
            if self._windows >= self.max_windows:
                self._reset()
            return {}
        out: dict[str, float] = {}
        for name, (col, q) in PERCENTILES.items():
            value = quantile(self._hists.get(col, {}), q)
            if value is not None:
                out[name] = value
        self._reset()
        return out

    def _reset(self) -> None:
        self._hists, self._calls, self._windows = {}, 0, 0

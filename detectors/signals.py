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

import numpy as np
import polars as pl
import pyarrow as pa

from spanpulse.schemas.histogram import bucket_estimate, merge_counts, quantile

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

#: Row key of a percentile signal already estimated from that row's *own* histogram by
#: :func:`with_own_percentiles` (``None`` for an empty one).  Rows that lack the key (tests,
#: notebooks, anything not prepared by the detector bank) are read from their cells instead.
OWN_PERCENTILES: Final[Mapping[str, str]] = {name: f"_own:{name}" for name in PERCENTILES}

_PROPORTION_COLUMNS: Final = tuple((name, num, den) for name, (num, den) in PROPORTIONS.items())
_PERCENTILE_COLUMNS: Final = tuple(
    (name, col, q, OWN_PERCENTILES[name]) for name, (col, q) in PERCENTILES.items()
)
_OWN_KEYS: Final = frozenset(OWN_PERCENTILES.values())

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
    get = row.get  # this runs per row and per child of every window: no helper calls
    value = get("calls")
    calls = int(value) if value is not None else 0
    start, end = get("window_start"), get("window_end")
    minutes = (
        (end - start).total_seconds() / 60.0
        if isinstance(start, datetime) and isinstance(end, datetime) and end > start
        else 1.0
    )
    value = get("input_tokens")
    input_tokens = int(value) if value is not None else 0
    value = get("output_tokens")
    output_tokens = int(value) if value is not None else 0
    cost = float(get("cost_usd") or 0.0)
    out: dict[str, Signal] = {
        "calls": float(calls),
        "call_rate": calls / minutes,
        "cost_usd": cost,
        "tokens": float(input_tokens + output_tokens),
    }
    for name, num, den in _PROPORTION_COLUMNS:
        value = get(den)
        trials = int(value) if value is not None else 0
        if trials > 0:
            value = get(num)
            out[name] = (min(int(value) if value is not None else 0, trials), trials)
    if calls > 0:
        out["input_tokens_per_call"] = input_tokens / calls
        out["output_tokens_per_call"] = output_tokens / calls
        out["cost_per_call"] = cost / calls
        value = get("latency_ms_sum")
        if value is not None:
            out["latency_mean"] = int(value) / calls / 1000.0
    if calls >= min_calls_for_percentiles:
        for name, col, q, own in _PERCENTILE_COLUMNS:
            value = row[own] if own in row else _percentile(get(col), q)
            if value is not None:
                out[name] = value
    return out


def with_own_percentiles(frame: pl.DataFrame) -> pl.DataFrame:
    """Add the percentile signals estimated from each row's own histogram, a window at once.

    The columns are named by :data:`OWN_PERCENTILES`.

    Why: turning each row's histogram cells into Python dicts and merging them one row at a
    time was about 40 % of detection at 200 k calls per window (BENCHMARKS.md); with these
    columns the detector bank hands rows to the engines without their cells, except where a
    series' percentile pool really needs them (:meth:`PercentilePool.needs_cells`).

    The result is exactly :func:`quantile` of the row's cells: the same nearest rank
    (``max(1, ceil(q * total))`` in the same float arithmetic), the first bucket in bucket order
    whose running count reaches it, and the same :func:`bucket_estimate` of that bucket.
    """
    return frame.with_columns(
        pl.Series(OWN_PERCENTILES[n], _own_estimates(frame.get_column(c), q), dtype=pl.Float64)
        if c in frame.columns
        else pl.lit(None, pl.Float64).alias(OWN_PERCENTILES[n])  # no cells: no estimate
        for n, (c, q) in PERCENTILES.items()
    )


def _own_estimates(column: pl.Series, q: float) -> list[float | None]:
    """:func:`quantile` of each row's cells, on the column's Arrow buffers (NumPy, no loop).

    Per row, with ``cum`` the running count over all cells of the column, the estimate's
    bucket is the first cell whose ``cum`` reaches ``cum_before_row + rank``.  Rows whose cells
    are not strictly increasing by bucket (never produced by spanpulse) or hold null counts
    take the per-row path, so the result is :func:`quantile` in every case.
    """
    arr = column.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    cells = arr.values
    counts_field, buckets_field = cells.field("n"), cells.field("b")
    offsets = arr.offsets.to_numpy()
    if counts_field.null_count or buckets_field.null_count or len(offsets) < 2:
        return [_percentile(h, q) for h in column.to_list()]
    counts = counts_field.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    buckets = buckets_field.to_numpy(zero_copy_only=False)
    cum = np.concatenate(([0], np.cumsum(counts)))
    starts, ends = offsets[:-1], offsets[1:]
    before, total = cum[starts], cum[ends] - cum[starts]
    rank = np.maximum(1, np.ceil(q * total.astype(np.float64)).astype(np.int64))
    first = np.searchsorted(cum[1:], before + rank, side="left")
    ok = total > 0
    chosen = buckets[np.minimum(first, len(buckets) - 1)] if len(buckets) else first
    rising = np.ones(len(buckets), dtype=bool)
    if len(buckets) > 1:
        rising[1:] = np.diff(buckets.astype(np.int64)) > 0
    rising[starts[starts < len(buckets)]] = True  # a row's first cell starts fresh
    if not rising.all():
        return [_percentile(h, q) for h in column.to_list()]
    estimates: dict[int, float] = {}
    out: list[float | None] = []
    for has, b in zip(ok.tolist(), chosen.tolist(), strict=True):
        if not has:
            out.append(None)
            continue
        value = estimates.get(b)
        if value is None:
            value = estimates[b] = bucket_estimate(b)
        out.append(value)
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

    def needs_cells(self, calls: int) -> bool:
        """Return whether :meth:`add` needs the row's cells (not just its own percentiles)."""
        return self._windows > 0 or calls < self.min_calls

    def add(self, row: Mapping[str, Any]) -> dict[str, float]:
        """Pool one row; return the percentile signals when the pool is full (else empty)."""
        if not self.needs_cells(_int(row, "calls")) and row.keys() >= _OWN_KEYS:
            # An empty pool filled by this row alone: its own percentiles, state left empty.
            own: dict[str, float] = {}
            for name, _, _, key in _PERCENTILE_COLUMNS:
                if (value := row[key]) is not None:
                    own[name] = value
            return own
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

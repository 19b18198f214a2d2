"""Prometheus metrics: LLM signals from closed rollup windows, and engine health.

Why rollups and not spans: the rollup rows are already aggregated per window over
cardinality-controlled dimensions, so exporting them costs one addition per label set and
the label sets are bounded by the same allow-list/overflow rules as the Parquet output. Each
window's rows are added to the counters exactly once, so counters stay cumulative and
``rate()``/``increase()`` work as usual (they step once per closed window).

Why the LLM counters are not ``prometheus_client.Counter`` objects: a labelled ``inc()`` costs
about a microsecond, and a window of 1,800 ``tenant.model`` rows feeds 17 series per row, so a
backlog replay spent tens of milliseconds per window in ``inc()``. :class:`RollupCounters` sums
a window per label set with Polars, adds the sums to one int64 NumPy row per label set, and
renders the same families, samples and ``_created`` times at scrape time. Integer totals are
also exact: cost is summed in nanos and divided once per scrape.

Naming follows the Prometheus conventions: base units, ``_total`` for counters, ``_seconds``,
``_ratio``; cost is in US dollars with the unit in the name (``llm_cost_usd_total``) because
there is no base unit for money. ``llm_*`` are LLM signals, ``spanpulse_*`` engine health.

Label discipline (the spanmetrics habit): LLM labels come only from rollup dimensions
(tenant, model, provider, feature, prompt_version), every label value is sanitised
(control characters removed, length capped), and each metric family admits at most
``max_series`` label sets; further ones fold into ``__other__`` and are counted in
``spanpulse_metric_label_overflow_total{family}``. Trace ids, user ids and text never
become labels.

Histograms come from the rows' base-2 exponential histograms (see
:mod:`spanpulse.schemas.histogram`). An exponential bucket is added to the first fixed
``le`` bound that is ``>=`` its upper bound, so ``bucket{le=x}`` counts only values that are
certainly ``<= x``: bucket counts are exact, never optimistic, and a value can be reported at
most one exponential bucket (2.2 %) above its true bound.
"""

from __future__ import annotations

import math
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl
import prometheus_client.metrics as _client_metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _prometheus_start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from spanpulse.schemas.histogram import SCALE, ZERO_BUCKET, bucket_estimate
from spanpulse.schemas.record import NANOS_PER_USD, OTHER, UNKNOWN

#: Latency bounds in seconds; the powers of two coincide with exponential bucket edges.
DEFAULT_LATENCY_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
#: Context-fill bounds (share of the model's context window); 0.8 backs the p95 alert rule.
DEFAULT_FILL_BUCKETS: Final = (0.125, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 1.0)
#: Batch processing bounds in seconds.
DEFAULT_BATCH_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Longest label value kept; longer values are truncated.
MAX_LABEL_LENGTH: Final = 128
#: Default cap on label sets per metric family.
DEFAULT_MAX_SERIES: Final = 2000

_CONTROL_CHARS_PATTERN: Final = r"[\x00-\x1f\x7f-\x9f]"
_CONTROL_CHARS: Final = re.compile(_CONTROL_CHARS_PATTERN)
_UNKNOWN: Final[str] = UNKNOWN
_OTHER: Final[str] = OTHER
_BUCKETS_PER_DOUBLING: Final[float] = float(2**SCALE)


def sanitize_label(value: object, max_length: int = MAX_LABEL_LENGTH) -> str:
    """Return ``value`` as a safe label value: no control characters, at most ``max_length``.

    ``None`` and values that end up empty become ``__unknown__``: an empty label value is the
    same as a missing label in Prometheus, which would silently merge series.
    """
    if value is None:
        return _UNKNOWN
    text = _CONTROL_CHARS.sub("", str(value))[:max_length]
    return text or _UNKNOWN


def sanitize_label_expr(column: str, max_length: int = MAX_LABEL_LENGTH) -> pl.Expr:
    r""":func:`sanitize_label` applied to a whole column in one Polars pass (same rules).

    >>> values = ["gpt-4o\n\x00", None, "\t\r", "\x85é" * 100, "ok"]
    >>> col = pl.DataFrame({"t": values}).select(sanitize_label_expr("t"))["t"]
    >>> col.to_list() == [sanitize_label(v) for v in values]
    True
    """
    text = (
        pl.col(column)
        .cast(pl.String)
        .str.replace_all(_CONTROL_CHARS_PATTERN, "")
        .str.slice(0, max_length)
    )
    empty = text.is_null() | (text == "")
    return pl.when(empty).then(pl.lit(_UNKNOWN)).otherwise(text).alias(column)


def bucket_upper_bound(b: int) -> float:
    """Upper bound of exponential bucket ``b`` (``0.0`` for the zero bucket).

    Computed as ``2 ** ((b + 1) / 2**SCALE)`` so bounds that are powers of two are exact floats
    and compare equal to ``le`` bounds like ``0.5`` or ``2.0``.
    """
    if b == ZERO_BUCKET:
        return 0.0
    return math.pow(2.0, (b + 1) / _BUCKETS_PER_DOUBLING)


def le_counts(cells: Iterable[Mapping[str, int]], bounds: Sequence[float]) -> list[int]:
    """Fold exponential-histogram cells into per-``le`` (non-cumulative) counts.

    Returns ``len(bounds) + 1`` counts, the last one for ``+Inf``. A cell goes to the first
    bound ``>=`` its bucket's upper bound (see the module docstring for why).

    Bucket ``-1`` covers ``(0.957, 1.0]`` and bucket ``0`` covers ``(1.0, 1.044]``:

    >>> le_counts([{"b": -1, "n": 3}, {"b": 0, "n": 2}], (0.5, 1.0))
    [0, 3, 2]
    """
    counts = [0] * (len(bounds) + 1)
    for cell in cells:
        counts[bisect_left(bounds, bucket_upper_bound(cell["b"]))] += int(cell["n"])
    return counts


def estimated_sum(cells: Iterable[Mapping[str, int]]) -> float:
    """Estimate the sum of the values in a histogram (each within ``RELATIVE_ERROR``)."""
    return math.fsum(bucket_estimate(c["b"]) * c["n"] for c in cells)


def _check_bounds(name: str, bounds: Sequence[float]) -> tuple[float, ...]:
    """Validate histogram bounds: finite, positive, strictly increasing."""
    out = tuple(float(b) for b in bounds)
    ok = bool(out) and all(math.isfinite(b) and b > 0 for b in out)
    if not ok or any(a >= b for a, b in zip(out, out[1:], strict=False)):
        msg = f"{name} must be finite, positive and strictly increasing, got {list(bounds)}"
        raise ValueError(msg)
    return out


@dataclass(frozen=True)
class Family:
    """A group of LLM metrics fed from one rollup grain with one fixed label set.

    Label names not in the grain are exported as ``""`` (absent, in PromQL terms), so a
    dashboard can ``sum by (provider)`` whether or not the grain carries a provider.
    """

    grain: str
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        dims = self.grain.split(".")
        if not self.grain or not set(dims) <= set(self.labels):
            msg = (
                f"grain {self.grain!r} must group by a non-empty subset of {list(self.labels)}; "
                "pick a configured rollup grain made only of those dimensions"
            )
            raise ValueError(msg)

    def label_values(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        """Label values of one rollup row of this family's grain."""
        dims = set(self.grain.split("."))
        return tuple(sanitize_label(row.get(n)) if n in dims else "" for n in self.labels)

    def label_exprs(self, columns: Collection[str]) -> list[pl.Expr]:
        """:meth:`label_values` as expressions over a frame that has ``columns``."""
        dims = set(self.grain.split("."))
        exprs = []
        for name in self.labels:
            if name not in dims:
                expr = pl.lit("")
            elif name in columns:
                expr = sanitize_label_expr(name)
            else:
                expr = pl.lit(_UNKNOWN)
            exprs.append(expr.alias(name))
        return exprs


class _LabelGuard:
    """Admit at most ``limit`` distinct label sets; fold the rest into ``__other__``."""

    def __init__(self, family: str, limit: int, overflow: Counter) -> None:
        self._family = family
        self._limit = limit
        self._overflow = overflow
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def admit(self, values: tuple[str, ...]) -> tuple[str, ...]:
        with self._lock:
            if values in self._seen or len(self._seen) < self._limit:
                self._seen.add(values)
                return values
        self._overflow.labels(family=self._family).inc()
        return tuple(_OTHER if v else v for v in values)

    def admit_all(
        self, keys: Sequence[tuple[str, ...]], rows: Sequence[int]
    ) -> list[tuple[str, ...]]:
        """:meth:`admit` for distinct label sets in first-seen order.

        ``rows[i]`` rows carried ``keys[i]``; the overflow counter counts folded rows, as
        row-by-row admission would.
        """
        out: list[tuple[str, ...]] = []
        folded = 0
        with self._lock:
            for key, n in zip(keys, rows, strict=True):
                if key in self._seen or len(self._seen) < self._limit:
                    self._seen.add(key)
                    out.append(key)
                else:
                    folded += n
                    out.append(tuple(_OTHER if v else v for v in key))
        if folded:
            self._overflow.labels(family=self._family).inc(folded)
        return out


@dataclass(frozen=True)
class CounterFamily:
    """One exported counter family and the rollup columns that feed its series.

    ``series`` pairs a rollup column with the values of ``extra_labels`` its series carries,
    e.g. ``("input_tokens", ("input",))`` for ``direction="input"``. Exported values are the
    integer sums divided by ``divisor`` (cost is summed in exact nanos, exported in dollars).
    """

    name: str
    documentation: str
    series: tuple[tuple[str, tuple[str, ...]], ...]
    extra_labels: tuple[str, ...] = ()
    divisor: int = 1


def grain_totals(
    rows: pl.DataFrame, family: Family, columns: Sequence[str]
) -> tuple[list[tuple[str, ...]], list[int], npt.NDArray[np.int64]]:
    """Sum ``columns`` over the rows of ``family.grain`` per (sanitised) label set.

    Returns the label sets in first-seen order, how many rows each one merges, and the sums
    (one row per label set, one column per entry of ``columns``; nulls and absent columns
    count as 0). Negative values are rejected before anything is counted: counters only rise.
    """
    sub = rows.filter(pl.col("grain") == family.grain)
    names = [f"_v{i}" for i in range(len(columns))]
    values = [
        (pl.col(c).fill_null(0) if c in sub.columns else pl.lit(0)).cast(pl.Int64).alias(v)
        for c, v in zip(columns, names, strict=True)
    ]
    # "grain" is a real column, so literal label/value expressions broadcast to the frame.
    frame = sub.select("grain", *family.label_exprs(sub.columns), *values).drop("grain")
    lowest = frame.select(pl.col(names).min()).row(0) if names else ()
    negative = [c for c, low in zip(columns, lowest, strict=True) if low is not None and low < 0]
    if negative:
        msg = f"rollup columns {negative} hold negative values; counters only go up"
        raise ValueError(msg)
    grouped = frame.group_by(list(family.labels), maintain_order=True).agg(
        pl.len().alias("_rows"), pl.col(names).sum()
    )
    keys: list[tuple[str, ...]] = grouped.select(family.labels).rows()
    sums = grouped.select(names).to_numpy().astype(np.int64, copy=False)
    return keys, grouped["_rows"].to_list(), sums.reshape(len(keys), len(names))


class RollupCounters(Collector):
    """Cumulative counters of several families sharing one label set, fed a frame at a time.

    Renders exactly what ``prometheus_client.Counter`` objects with the same names, labels
    and increments would (``_total`` and ``_created`` samples, label sets in first-seen order,
    every series of a label set created at once so ``increase()`` sees its first step), at a
    fraction of the cost: one NumPy row of int64 totals per label set (see the module docs).
    """

    def __init__(
        self, family: Family, counters: Sequence[CounterFamily], clock: Callable[[], float]
    ) -> None:
        self.family = family
        self._counters = tuple(counters)
        #: Rollup columns summed, in the column order of :meth:`add`'s ``values``.
        self.columns = tuple(dict.fromkeys(c for f in self._counters for c, _ in f.series))
        self._column_index = {c: i for i, c in enumerate(self.columns)}
        self._clock = clock
        self._index: dict[tuple[str, ...], int] = {}
        self._created: list[float] = []
        self._totals = np.zeros((64, len(self.columns)), dtype=np.int64)
        self._lock = threading.Lock()

    def add(self, keys: Sequence[tuple[str, ...]], values: npt.NDArray[np.int64]) -> None:
        """Add ``values[i]`` (one entry per :attr:`columns`) to the series of ``keys[i]``."""
        if len(keys) == 0:
            return
        now = self._clock()
        with self._lock:
            slots = [self._slot(key, now) for key in keys]
            np.add.at(self._totals, np.asarray(slots, dtype=np.intp), values)

    def _slot(self, key: tuple[str, ...], now: float) -> int:
        slot = self._index.get(key)
        if slot is None:
            slot = len(self._index)
            if slot == len(self._totals):
                self._totals = np.concatenate([self._totals, np.zeros_like(self._totals)])
            self._index[key] = slot
            self._created.append(now)
        return slot

    def describe(self) -> Iterable[Metric]:
        """Describe the families without samples (lets the registry check name clashes)."""
        return [self._empty(c) for c in self._counters]

    def _empty(self, counter: CounterFamily) -> CounterMetricFamily:
        labels = [*self.family.labels, *counter.extra_labels]
        return CounterMetricFamily(counter.name, counter.documentation, labels=labels)

    def collect(self) -> Iterable[Metric]:
        """Render every family from a consistent copy of the totals."""
        with self._lock:
            keys = list(self._index)
            created = list(self._created)
            totals = self._totals[: len(keys)].tolist()
        use_created = bool(getattr(_client_metrics, "_use_created", True))
        out = []
        for counter in self._counters:
            mf = self._empty(counter)
            cols = [(self._column_index[c], extra) for c, extra in counter.series]
            for key, row, ts in zip(keys, totals, created, strict=True):
                for j, extra in cols:
                    value = row[j] / counter.divisor
                    mf.add_metric([*key, *extra], value, created=ts if use_created else None)
            out.append(mf)
        return out


class BucketHistogram(Collector):
    """A Prometheus histogram fed with pre-bucketed counts instead of single observations.

    ``prometheus_client.Histogram`` can only ``observe`` one value at a time; rollups carry
    counts per bucket, so this collector keeps cumulative counts per label set and renders
    them as a standard histogram family.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], bounds: Sequence[float]
    ) -> None:
        self.name = name
        self._doc = documentation
        self._labelnames = list(labelnames)
        self._bounds = _check_bounds(name, bounds)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    @property
    def bounds(self) -> tuple[float, ...]:
        """The finite ``le`` bounds."""
        return self._bounds

    def add(
        self, labels: tuple[str, ...], cells: Sequence[Mapping[str, int]], total: float
    ) -> None:
        """Add exponential-histogram ``cells`` and their value sum ``total`` to a series."""
        counts = le_counts(cells, self._bounds)
        with self._lock:
            acc, acc_sum = self._series.setdefault(labels, ([0] * len(counts), [0.0]))
            for i, n in enumerate(counts):
                acc[i] += n
            acc_sum[0] += total

    def describe(self) -> Iterable[Metric]:
        """Describe the family without samples (lets the registry check name clashes)."""
        return [HistogramMetricFamily(self.name, self._doc, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        """Render the cumulative bucket counts of every series."""
        family = HistogramMetricFamily(self.name, self._doc, labels=self._labelnames)
        with self._lock:
            series = [(k, list(c), s[0]) for k, (c, s) in self._series.items()]
        for labels, counts, total in series:
            family.add_metric(list(labels), self._cumulative(counts), total)
        return [family]

    def _cumulative(self, counts: Sequence[int]) -> list[tuple[str, float]]:
        les = [*(repr(b) for b in self._bounds), "+Inf"]
        running = 0
        out: list[tuple[str, float]] = []
        for le, n in zip(les, counts, strict=True):
            running += n
            out.append((le, float(running)))
        return out


def _counter(name: str, doc: str, column: str) -> CounterFamily:
    return CounterFamily(name, doc, ((column, ()),))


#: Counter families fed by the call grain, in exposition order.
_CALL_COUNTERS: Final = (
    _counter("llm_calls_total", "LLM calls.", "calls"),
    _counter("llm_errors_total", "LLM calls that failed.", "errors"),
    _counter("llm_refusals_total", "LLM calls that refused.", "refusals"),
    _counter("llm_parse_attempts_total", "Structured-output parses attempted.", "parse_attempts"),
    _counter("llm_parse_failures_total", "Structured-output parses that failed.", "parse_failures"),
    _counter(
        "llm_unpriced_calls_total",
        "Calls without a known price (cost undercounted).",
        "unpriced_calls",
    ),
    CounterFamily(
        "llm_tokens_total",
        "Tokens by direction; cached_input is part of input, reasoning part of output.",
        (
            ("input_tokens", ("input",)),
            ("output_tokens", ("output",)),
            ("cached_input_tokens", ("cached_input",)),
            ("reasoning_tokens", ("reasoning",)),
        ),
        ("direction",),
    ),
    CounterFamily(
        "llm_finish_reason_total",
        "Calls by normalized finish class.",
        tuple(
            (f"finish_{c}", (c,))
            for c in ("stop", "length", "content_filter", "tool_calls", "error", "other")
        ),
        ("finish_class",),
    ),
    CounterFamily(
        "llm_cost_usd_total",
        "Cost of priced calls in USD.",
        (("cost_nanos", ()),),
        divisor=NANOS_PER_USD,
    ),
)
#: Counter families fed by the prompt grain, in exposition order.
_PROMPT_COUNTERS: Final = (
    _counter("llm_prompt_calls_total", "LLM calls per prompt version.", "calls"),
    _counter(
        "llm_prompt_parse_attempts_total",
        "Parses attempted per prompt version.",
        "parse_attempts",
    ),
    _counter(
        "llm_prompt_parse_failures_total", "Parses failed per prompt version.", "parse_failures"
    ),
    _counter("llm_prompt_refusals_total", "Refusals per prompt version.", "refusals"),
)
#: Histogram columns per model family: (hist column, metric attribute, exact-sum column).
_HIST_COLUMNS: Final = (
    ("latency_s_hist", "latency", "latency_ms_sum"),
    ("ttft_s_hist", "ttft", None),
    ("context_fill_hist", "context_fill", None),
)


class Metrics:
    """All spanpulse metrics, registered on an injected registry (never the global one).

    Args:
        registry: where every metric is registered; tests pass a fresh ``CollectorRegistry()``.
        latency_buckets: ``le`` bounds (seconds) of ``llm_latency_seconds``/``llm_ttft_seconds``.
        fill_buckets: ``le`` bounds of ``llm_context_fill_ratio``.
        batch_buckets: ``le`` bounds of ``spanpulse_batch_processing_seconds``.
        call_grain: rollup grain feeding calls/tokens/cost/finish reasons; its dimensions must
            be among (tenant, model, provider).
        model_grain: rollup grain feeding the histograms; dimensions among (model,).
        prompt_grain: grain feeding the ``llm_prompt_*`` metrics; dimensions among
            (feature, prompt_version).
        max_series: label sets admitted per metric family before folding into ``__other__``.
        include_late: also count rows with ``late = true`` (they aggregate records that were in
            no on-time row, so adding them keeps totals equal to all accepted calls).
        clock: Unix time source for the counters' ``_created`` samples (tests inject one).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        fill_buckets: Sequence[float] = DEFAULT_FILL_BUCKETS,
        batch_buckets: Sequence[float] = DEFAULT_BATCH_BUCKETS,
        *,
        call_grain: str = "tenant.model",
        model_grain: str = "model",
        prompt_grain: str = "feature.prompt_version",
        max_series: int = DEFAULT_MAX_SERIES,
        include_late: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_series < 1:
            msg = f"max_series must be >= 1, got {max_series}"
            raise ValueError(msg)
        self._calls_family = Family(call_grain, ("tenant", "model", "provider"))
        self._model_family = Family(model_grain, ("model",))
        self._prompt_family = Family(prompt_grain, ("feature", "prompt_version"))
        self._include_late = include_late
        self._register_engine(registry, _check_bounds("batch_buckets", batch_buckets))
        self._register_llm(registry, clock)
        self._register_histograms(
            registry,
            _check_bounds("latency_buckets", latency_buckets),
            _check_bounds("fill_buckets", fill_buckets),
        )
        self._guards = {
            name: _LabelGuard(name, max_series, self._label_overflow)
            for name in ("llm_calls", "llm_model", "llm_prompt", "spanpulse_engine")
        }

    # ------------------------------------------------------------------ registration

    def _register_llm(self, r: CollectorRegistry, clock: Callable[[], float]) -> None:
        self.call_counters = RollupCounters(self._calls_family, _CALL_COUNTERS, clock)
        self.prompt_counters = RollupCounters(self._prompt_family, _PROMPT_COUNTERS, clock)
        r.register(self.call_counters)
        r.register(self.prompt_counters)

    def _register_histograms(
        self, r: CollectorRegistry, latency: Sequence[float], fill: Sequence[float]
    ) -> None:
        labels = self._model_family.labels
        self.latency = BucketHistogram("llm_latency_seconds", "LLM call latency.", labels, latency)
        self.ttft = BucketHistogram("llm_ttft_seconds", "Time to first token.", labels, latency)
        self.context_fill = BucketHistogram(
            "llm_context_fill_ratio", "Share of the context window used by the input.", labels, fill
        )
        for collector in (self.latency, self.ttft, self.context_fill):
            r.register(collector)

    def _register_engine(self, r: CollectorRegistry, batch_buckets: Sequence[float]) -> None:
        tp = ["topic", "partition"]
        self.messages_consumed = Counter(
            "spanpulse_messages_consumed_total", "Kafka messages consumed.", tp, registry=r
        )
        self.spans_consumed = Counter(
            "spanpulse_spans_consumed_total", "Spans decoded from consumed messages.", tp,
            registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "spanpulse_dead_letters_total", "Messages sent to the dead-letter topic.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.skipped = Counter(
            "spanpulse_spans_skipped_total", "Spans skipped (not LLM calls, filtered).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.late = Counter(
            "spanpulse_late_spans_total", "Spans that arrived after their window was sealed.",
            registry=r,
        )  # fmt: skip
        self.overflow = Counter(
            "spanpulse_cardinality_overflow_total",
            "Dimension values folded into __other__ by cardinality control.",
            ["dimension"],
            registry=r,
        )
        self._label_overflow = Counter(
            "spanpulse_metric_label_overflow_total",
            "Label sets folded into __other__ because a metric family hit max_series.",
            ["family"],
            registry=r,
        )
        self.rollup_rows = Counter(
            "spanpulse_rollup_rows_total", "Rollup rows exported to metrics.", ["grain"],
            registry=r,
        )  # fmt: skip
        self.window_lag = Gauge(
            "spanpulse_window_lag_seconds", "Wall clock minus the last closed window end.",
            registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            "spanpulse_consumer_lag_messages", "High watermark minus consumed offset.", tp,
            registry=r,
        )  # fmt: skip
        self.dedup_ids = Gauge(
            "spanpulse_dedup_remembered_ids",
            "Span ids the partition's de-duplication remembers (bounded by [dedup] max_ids).",
            tp, registry=r,
        )  # fmt: skip
        self.dedup_forgotten = Gauge(
            "spanpulse_dedup_forgotten_ids",
            "Ids forgotten early because of max_ids since the state began (copies may be counted).",
            tp, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "spanpulse_batch_processing_seconds", "Time to process one input batch.",
            buckets=batch_buckets, registry=r,
        )  # fmt: skip
        self.alerts_firing = Gauge(
            "spanpulse_alerts_firing", "Alerts currently firing.", ["detector", "severity"],
            registry=r,
        )  # fmt: skip
        self.broker_up = Gauge(
            "spanpulse_broker_up", "1 when the Kafka broker is reachable, else 0.", registry=r
        )
        self.alerts_published = Counter(
            "spanpulse_alerts_published_total", "Alert events published.", ["status"],
            registry=r,
        )  # fmt: skip
        self.alerts_inhibited = Counter(
            "spanpulse_alerts_inhibited_total",
            "Firing alerts held back because an open, coarser alert explains them.",
            registry=r,
        )

    # ------------------------------------------------------------------ LLM signals

    def required_grains(self) -> frozenset[str]:
        """Rollup grains this instance reads; the settings loader can check they exist."""
        families = (self._calls_family, self._model_family, self._prompt_family)
        return frozenset(f.grain for f in families)

    def observe_rollup(self, rows: pl.DataFrame) -> None:
        """Add one closed window's rollup rows (contract columns) to the LLM metrics.

        Each call adds deltas: pass every row once. Rows of grains this instance does not read
        are ignored (except for ``spanpulse_rollup_rows_total``); late rows are ignored unless
        ``include_late`` was set.
        """
        missing = {"grain", "late"} - set(rows.columns)
        if missing:
            msg = f"rollup rows lack contract columns {sorted(missing)}"
            raise ValueError(msg)
        if not self._include_late:
            rows = rows.filter(~pl.col("late").fill_null(value=False))
        present = set()
        for grain, n in rows.group_by("grain").len().iter_rows():
            self.rollup_rows.labels(grain=sanitize_label(grain)).inc(n)
            present.add(grain)
        # The job passes one grain at a time: skip the families of the other grains outright
        # (their filters come out empty, at about 1 ms of Polars overhead each).
        if self.call_counters.family.grain in present:
            self._observe_counters(self.call_counters, rows, "llm_calls")
        if self.prompt_counters.family.grain in present:
            self._observe_counters(self.prompt_counters, rows, "llm_prompt")
        if self._model_family.grain in present:
            self._observe_histograms(rows)

    def _observe_counters(self, counters: RollupCounters, rows: pl.DataFrame, guard: str) -> None:
        keys, merged, sums = grain_totals(rows, counters.family, counters.columns)
        counters.add(self._guards[guard].admit_all(keys, merged), sums)

    def _observe_histograms(self, rows: pl.DataFrame) -> None:
        family = self._model_family
        wanted = {*family.labels, *(c for h, _, total in _HIST_COLUMNS for c in (h, total) if c)}
        rows = rows.filter(pl.col("grain") == family.grain)
        for row in rows.select(sorted(wanted & set(rows.columns))).iter_rows(named=True):
            labels = self._guards["llm_model"].admit(family.label_values(row))
            for column, attr, sum_column in _HIST_COLUMNS:
                cells = row.get(column) or []
                total = (row.get(sum_column) or 0) / 1000.0 if sum_column else estimated_sum(cells)
                getattr(self, attr).add(labels, cells, total)

    # ------------------------------------------------------------------ engine health

    def _engine(self, *values: object) -> tuple[str, ...]:
        return self._guards["spanpulse_engine"].admit(tuple(sanitize_label(v) for v in values))

    def count_consumed(self, topic: str, partition: int, messages: int, spans: int) -> None:
        """Count Kafka messages and the spans decoded from them."""
        labels = self._engine(topic, partition)
        self.messages_consumed.labels(*labels).inc(messages)
        self.spans_consumed.labels(*labels).inc(spans)

    def count_dead_letters(self, reason: str, n: int) -> None:
        """Count messages routed to the dead-letter topic (``reason`` is a fixed code)."""
        self.dead_letters.labels(*self._engine(reason)).inc(n)

    def count_skipped(self, reason: str, n: int) -> None:
        """Count spans skipped on purpose (not an LLM call, filtered out...)."""
        self.skipped.labels(*self._engine(reason)).inc(n)

    def count_late(self, n: int) -> None:
        """Count spans that arrived after their window was sealed."""
        self.late.inc(n)

    def count_overflow(self, dimension: str, n: int) -> None:
        """Count values of ``dimension`` folded into ``__other__`` by cardinality control."""
        self.overflow.labels(*self._engine(dimension)).inc(n)

    def set_window_lag(self, seconds: float) -> None:
        """Set wall clock minus the end of the last closed window (the caller owns the clock)."""
        self.window_lag.set(seconds)

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the consumer lag of one partition in messages."""
        self.consumer_lag.labels(*self._engine(topic, partition)).set(lag)

    def set_dedup_state(self, topic: str, partition: int, remembered: int, forgotten: int) -> None:
        """Export the size of one partition's de-duplication state."""
        labels = self._engine(topic, partition)
        self.dedup_ids.labels(*labels).set(remembered)
        self.dedup_forgotten.labels(*labels).set(forgotten)

    def observe_batch_seconds(self, seconds: float) -> None:
        """Observe the processing time of one input batch."""
        self.batch_seconds.observe(seconds)

    def set_alerts_firing(self, detector: str, severity: str, n: int) -> None:
        """Set how many alerts of ``detector`` at ``severity`` are firing now."""
        self.alerts_firing.labels(*self._engine(detector, severity)).set(n)

    def set_broker_up(self, up: bool) -> None:
        """Record whether the Kafka broker is reachable."""
        self.broker_up.set(1 if up else 0)

    def count_alerts_inhibited(self, n: int) -> None:
        """Count firing alerts held back by inhibition (see ``detectors/inhibit.py``)."""
        if n:
            self.alerts_inhibited.inc(n)

    def count_alerts_published(self, status: str, n: int) -> None:
        """Count alert events published, by status (e.g. firing, resolved)."""
        self.alerts_published.labels(*self._engine(status)).inc(n)


def start_http_server(
    metrics_port: int,
    registry: CollectorRegistry,
    addr: str = "0.0.0.0",  # noqa: S104 - a scrape target in a container must be reachable
) -> Any:
    """Serve ``registry`` on ``addr:metrics_port`` from a daemon thread.

    Returns what ``prometheus_client.start_http_server`` returns (``(server, thread)`` in
    current versions); call ``server.shutdown()`` to stop it.
    """
    return _prometheus_start_http_server(metrics_port, addr=addr, registry=registry)

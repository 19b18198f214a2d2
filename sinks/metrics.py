"""Prometheus metrics: LLM signals from closed rollup windows, and engine health.

Why rollups and not spans: the rollup rows are already aggregated per window over
cardinality-controlled dimensions, so exporting them costs one counter increment per row and
the label sets are bounded by the same allow-list/overflow rules as the Parquet output. Each
window's rows are added to the counters exactly once, so counters stay cumulative and
``rate()``/``increase()`` work as usual (they step once per closed window).

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
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import polars as pl
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _prometheus_start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from spanpulse.schemas.histogram import SCALE, ZERO_BUCKET, bucket_estimate
from spanpulse.schemas.record import OTHER, UNKNOWN

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

_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
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


#: Rollup count columns exported per call family: (column, metric attribute, extra labels).
_CALL_COLUMNS: Final = (
    ("calls", "calls", ()),
    ("errors", "errors", ()),
    ("refusals", "refusals", ()),
    ("parse_attempts", "parse_attempts", ()),
    ("parse_failures", "parse_failures", ()),
    ("unpriced_calls", "unpriced", ()),
    ("input_tokens", "tokens", ("input",)),
    ("output_tokens", "tokens", ("output",)),
    ("cached_input_tokens", "tokens", ("cached_input",)),
    ("reasoning_tokens", "tokens", ("reasoning",)),
    ("finish_stop", "finish", ("stop",)),
    ("finish_length", "finish", ("length",)),
    ("finish_content_filter", "finish", ("content_filter",)),
    ("finish_tool_calls", "finish", ("tool_calls",)),
    ("finish_error", "finish", ("error",)),
    ("finish_other", "finish", ("other",)),
)
_PROMPT_COLUMNS: Final = (
    ("calls", "prompt_calls"),
    ("parse_attempts", "prompt_parse_attempts"),
    ("parse_failures", "prompt_parse_failures"),
    ("refusals", "prompt_refusals"),
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
    ) -> None:
        if max_series < 1:
            msg = f"max_series must be >= 1, got {max_series}"
            raise ValueError(msg)
        self._calls_family = Family(call_grain, ("tenant", "model", "provider"))
        self._model_family = Family(model_grain, ("model",))
        self._prompt_family = Family(prompt_grain, ("feature", "prompt_version"))
        self._include_late = include_late
        self._register_engine(registry, _check_bounds("batch_buckets", batch_buckets))
        self._register_llm(registry)
        self._register_histograms(
            registry,
            _check_bounds("latency_buckets", latency_buckets),
            _check_bounds("fill_buckets", fill_buckets),
        )
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._guards = {
            name: _LabelGuard(name, max_series, self._label_overflow)
            for name in ("llm_calls", "llm_model", "llm_prompt", "spanpulse_engine")
        }

    # ------------------------------------------------------------------ registration

    def _register_llm(self, r: CollectorRegistry) -> None:
        call = list(self._calls_family.labels)
        prompt = list(self._prompt_family.labels)
        self.calls = Counter("llm_calls_total", "LLM calls.", call, registry=r)
        self.errors = Counter("llm_errors_total", "LLM calls that failed.", call, registry=r)
        self.refusals = Counter("llm_refusals_total", "LLM calls that refused.", call, registry=r)
        self.parse_attempts = Counter(
            "llm_parse_attempts_total", "Structured-output parses attempted.", call, registry=r
        )
        self.parse_failures = Counter(
            "llm_parse_failures_total", "Structured-output parses that failed.", call, registry=r
        )
        self.unpriced = Counter(
            "llm_unpriced_calls_total", "Calls without a known price (cost undercounted).",
            call, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "llm_tokens_total",
            "Tokens by direction; cached_input is part of input, reasoning part of output.",
            [*call, "direction"],
            registry=r,
        )
        self.finish = Counter(
            "llm_finish_reason_total", "Calls by normalized finish class.",
            [*call, "finish_class"], registry=r,
        )  # fmt: skip
        self.cost = Counter("llm_cost_usd_total", "Cost of priced calls in USD.", call, registry=r)
        self.prompt_calls = Counter(
            "llm_prompt_calls_total", "LLM calls per prompt version.", prompt, registry=r
        )
        self.prompt_parse_attempts = Counter(
            "llm_prompt_parse_attempts_total", "Parses attempted per prompt version.", prompt,
            registry=r,
        )  # fmt: skip
        self.prompt_parse_failures = Counter(
            "llm_prompt_parse_failures_total", "Parses failed per prompt version.", prompt,
            registry=r,
        )  # fmt: skip
        self.prompt_refusals = Counter(
            "llm_prompt_refusals_total", "Refusals per prompt version.", prompt, registry=r
        )

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
        for grain, n in rows.group_by("grain").len().iter_rows():
            self.rollup_rows.labels(grain=sanitize_label(grain)).inc(n)
        self._observe_calls(self._rows_of(rows, self._calls_family.grain))
        self._observe_prompts(self._rows_of(rows, self._prompt_family.grain))
        self._observe_histograms(self._rows_of(rows, self._model_family.grain))

    @staticmethod
    def _rows_of(rows: pl.DataFrame, grain: str) -> Iterator[dict[str, Any]]:
        return rows.filter(pl.col("grain") == grain).iter_rows(named=True)

    def _child(self, attr: str, labels: tuple[str, ...]) -> Any:
        """Return the labelled child of a metric, cached: ``labels()`` costs microseconds and a
        backlog replay calls it for every row.  Bounded: label sets pass the series guards.
        """
        key = (attr, labels)
        child = self._children.get(key)
        if child is None:
            child = getattr(self, attr).labels(*labels)
            self._children[key] = child
        return child

    def _observe_calls(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            labels = self._guards["llm_calls"].admit(self._calls_family.label_values(row))
            # Every series of a label set is created at once (zero increments included):
            # increase() cannot see the first jump of a series that appears mid-stream.
            for column, attr, extra in _CALL_COLUMNS:
                self._child(attr, (*labels, *extra)).inc(row.get(column) or 0)
            nanos = row.get("cost_nanos") or 0
            self._child("cost", labels).inc(nanos / 1e9)

    def _observe_prompts(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            labels = self._guards["llm_prompt"].admit(self._prompt_family.label_values(row))
            for column, attr in _PROMPT_COLUMNS:
                self._child(attr, labels).inc(row.get(column) or 0)

    def _observe_histograms(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            labels = self._guards["llm_model"].admit(self._model_family.label_values(row))
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

    def observe_batch_seconds(self, seconds: float) -> None:
        """Observe the processing time of one input batch."""
        self.batch_seconds.observe(seconds)

    def set_alerts_firing(self, detector: str, severity: str, n: int) -> None:
        """Set how many alerts of ``detector`` at ``severity`` are firing now."""
        self.alerts_firing.labels(*self._engine(detector, severity)).set(n)

    def set_broker_up(self, up: bool) -> None:
        """Record whether the Kafka broker is reachable."""
        self.broker_up.set(1 if up else 0)

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

"""The rollup dataflow: Kafka batches to Parquet rollups, detectors and metrics.

Kafka batches -> decode -> (per partition) drop spans seen before + pre-aggregate -> windows
closed by the slowest partition -> cardinality limit -> Parquet (and, downstream, detectors and
metrics).

Only wiring lives here.  Every step calls a named, unit-tested object from ``spanpulse.schemas``:
``BatchProcessor`` (decode, pre-aggregate), ``SeenSpanIds`` (cross-batch de-duplication, keyed
by partition so Bytewax snapshots it with the source offsets), ``PartitionTracker``
(per-partition watermark, late split), ``WindowCloser`` (global minimum, close orders),
``WindowState`` + ``Aggregator`` (merge, finalize).  See ``schemas/progress.py`` for why windows
are keyed by window rather than by tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl
from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.batch import BatchProcessor, PartialBatch, RawBatch, RecordBatch
from spanpulse.schemas.cardinality import CardinalityLimiter
from spanpulse.schemas.dedup import SeenSpanIds, state_version
from spanpulse.schemas.progress import (
    CloseOrder,
    PartitionTracker,
    SealReport,
    WindowCloser,
    WindowState,
)

if TYPE_CHECKING:
    from spanpulse.schemas.dead_letter import DeadLetter

CLOSER_KEY = "closer"
#: Partial frames a window keeps before compacting them into one (bounds state size).
COMPACT_AFTER = 32


class Observer(Protocol):
    """Side-channel for metrics and progress output; must not raise."""

    def on_batch(self, batch: PartialBatch) -> None:
        """Account one decoded batch."""

    def on_window(self, rows: pl.DataFrame) -> None:
        """Account one finalized window (all grains)."""

    def on_late(self, rows: pl.DataFrame) -> None:
        """Account late rows."""

    def on_close(self, closed_upto_ms: int | None) -> None:
        """Report the global sealed point."""

    def on_rollup(self, rows: pl.DataFrame) -> None:
        """Account cardinality-limited rows of one grain (what Prometheus may see)."""


class NullObserver:
    """Observer that ignores everything."""

    def on_batch(self, batch: PartialBatch) -> None:
        """Ignore."""

    def on_window(self, rows: pl.DataFrame) -> None:
        """Ignore."""

    def on_late(self, rows: pl.DataFrame) -> None:
        """Ignore."""

    def on_close(self, closed_upto_ms: int | None) -> None:
        """Ignore."""

    def on_rollup(self, rows: pl.DataFrame) -> None:
        """Ignore."""


@dataclass
class FlowSinks:
    """Where the flow's outputs go (parameters, so tests pass testing sinks)."""

    rollups: Sink[tuple[str, pl.DataFrame]]
    dead_letters: Sink[DeadLetter]
    windows: Callable[[Dataflow, Stream[pl.DataFrame]], None] | None = None
    observer: Observer = field(default_factory=NullObserver)


@dataclass(frozen=True)
class FlowParams:
    """What the wiring needs from the settings."""

    processor: BatchProcessor
    partitions: frozenset[str]
    window_ms: int
    lateness_ms: int
    idle_timeout_ms: int
    grains: tuple[tuple[str, ...], ...]
    cardinality_limits: Mapping[str, int] = field(default_factory=dict)
    series_limit: int = 5000
    exemplars: int = 3
    dedup_horizon_ms: int = 0  # 0: copies are dropped within a batch only
    dedup_max_ids: int = 1_000_000


def build_flow(
    params: FlowParams, source: Source[RawBatch], sinks: FlowSinks, flow_id: str = "spanpulse"
) -> Dataflow:
    """Build the rollup dataflow; nothing runs until Bytewax runs it."""
    agg = params.processor.aggregator
    obs = sinks.observer
    flow = Dataflow(flow_id)
    raw = op.input("kafka_in", flow, source)
    decoded = op.map("decode", raw, params.processor.decode)
    records = op.map("key_by_partition", decoded, _key_by_partition)
    # De-duplication state is keyed by partition: snapshotted in the same epoch as the offsets.
    by_partition = op.stateful_map("dedup_and_preaggregate", records, _DedupStep(params))
    batches = op.map("drop_batch_key", by_partition, _value)
    op.inspect("observe_batch", batches, lambda _s, b: obs.on_batch(b))
    dead = op.flat_map("dead_letters", batches, lambda b: b.dead_letters)
    op.output("dead_letter_out", dead, sinks.dead_letters)

    # Window-shaped state is versioned by the window length: a changed length starts it fresh
    # instead of misreading old windows (see docs/reliability.md, "Changing the configuration").
    v = f"w{params.window_ms}"
    tracked = op.stateful_flat_map(
        f"track_partition_progress_{v}", by_partition, _TrackStep(params)
    )
    routed = op.map("drop_partition_key", tracked, _value)
    split = op.branch("split_reports", routed, lambda r: r.kind == "report")
    reports = op.map("key_report", split.trues, _keyed)
    late_split = op.branch("split_late", split.falses, lambda r: r.kind == "late")
    late_rows = op.map("finalize_late", late_split.trues, lambda r: _finalize_late(agg, r))
    op.inspect("observe_late", late_rows, lambda _s, tr: obs.on_late(tr[1]))
    partials = op.map("key_partial", late_split.falses, _keyed)

    close_orders = op.stateful_flat_map(f"close_windows_{v}", reports, _CloseStep(params, obs))
    closes = op.map("key_close", close_orders, _value)
    window_inputs = op.merge("window_inputs", partials, closes)
    merged = op.stateful_flat_map(f"merge_windows_{v}", window_inputs, _MergeStep(agg))
    finals = op.map("drop_window_key", merged, _value)
    op.inspect("observe_window", finals, lambda _s, rows: obs.on_window(rows))

    tagged = op.map("tag_final", finals, _tag_final)
    all_rows = op.merge("final_and_late", tagged, late_rows)
    grain_names = frozenset(".".join(d) for d in params.grains)
    by_grain = op.flat_map("split_by_grain", all_rows, lambda tr: _split_by_grain(tr, grain_names))
    limited_keyed = op.stateful_map("limit_cardinality", by_grain, _LimitStep(params))
    limited = op.map("drop_grain_key", limited_keyed, _value)
    op.inspect("observe_rollup", limited, lambda _s, tr: obs.on_rollup(tr[1]))
    op.output("rollups_out", limited, sinks.rollups)
    if sinks.windows is not None:
        on_time = op.filter("on_time_only", limited, lambda tr: tr[0] == "final")
        keyed = op.map("key_grain_by_window", on_time, _key_by_window)
        windows = op.stateful_flat_map("assemble_window", keyed, _AssembleStep(len(params.grains)))
        sinks.windows(flow, op.map("drop_assembled_key", windows, _value))
    return flow


@dataclass(frozen=True)
class Routed:
    """An item leaving the partition tracker: a partial, late rows, or a seal report."""

    kind: str  # "partial" | "late" | "report"
    key: str
    payload: Any


def _key_by_partition(batch: RecordBatch) -> tuple[str, RecordBatch]:
    return batch.partition_id, batch


def _value(kv: tuple[str, Any]) -> Any:
    return kv[1]


def _keyed(r: Routed) -> tuple[str, Any]:
    return r.key, r.payload


def _tag_final(rows: pl.DataFrame) -> tuple[str, pl.DataFrame]:
    return "final", rows


@dataclass
class _DedupStep:
    params: FlowParams

    def __call__(
        self, state: SeenSpanIds | None, batch: RecordBatch
    ) -> tuple[SeenSpanIds | None, PartialBatch]:
        p = self.params
        if p.dedup_horizon_ms <= 0:  # off: drop any restored state
            return None, p.processor.preaggregate(batch)
        # The state pickles SeenSpanIds by class path: moving it means a new step id.
        if state is None or state.version != state_version():  # another hash: start fresh
            state = SeenSpanIds(p.dedup_horizon_ms, p.dedup_max_ids)
        elif (state.horizon_ms, state.max_ids) != (p.dedup_horizon_ms, p.dedup_max_ids):
            state.configure(p.dedup_horizon_ms, p.dedup_max_ids)  # the current config wins
        return state, p.processor.preaggregate(batch, state)


@dataclass
class _TrackStep:
    params: FlowParams

    def __call__(
        self, state: PartitionTracker | None, batch: PartialBatch
    ) -> tuple[PartitionTracker, Iterable[Any]]:
        p = self.params
        if state is None:
            state = PartitionTracker(
                batch.partition_id, p.window_ms, p.lateness_ms, p.idle_timeout_ms
            )
        # Parameters come from the current config; only event-time progress is restored state.
        state.lateness_ms, state.idle_timeout_ms = p.lateness_ms, p.idle_timeout_ms
        on_time, late, report = state.split(
            batch.partials,
            wall_ms=batch.wall_ms,
            max_event_ms=batch.max_event_ms,
            eof=batch.eof,
            may_idle=batch.caught_up,
        )
        out = [Routed("partial", f"w{ws}", frame) for ws, frame in on_time.items()]
        for (ws,), frame in late.group_by("window_start_ms", maintain_order=True):
            out.append(Routed("late", f"{batch.partition_id}@{batch.first_offset}@{ws}", frame))
        out.append(Routed("report", CLOSER_KEY, report))
        return state, out


@dataclass
class _CloseStep:
    params: FlowParams
    observer: Observer

    def __call__(
        self, state: WindowCloser | None, report: SealReport
    ) -> tuple[WindowCloser, Iterable[Any]]:
        if state is None:
            state = WindowCloser(self.params.partitions, self.params.window_ms)
        state.partitions = self.params.partitions  # topics/partitions may change across restarts
        orders = state.report(report)
        self.observer.on_close(state.closed_upto_ms)
        return state, [(f"w{o.window_start_ms}", o) for o in orders]


@dataclass
class _MergeStep:
    agg: Aggregator

    def __call__(
        self, state: WindowState | None, item: pl.DataFrame | CloseOrder
    ) -> tuple[WindowState | None, Iterable[pl.DataFrame]]:
        state = state or WindowState()
        if isinstance(item, CloseOrder):
            state.expected = item.expected_partials
        else:
            state.add(item)
            if len(state.partials) > COMPACT_AFTER:
                state.partials = [self.agg.merge(state.partials)]
        if not state.complete:
            return state, []
        rows = self.agg.finalize(self.agg.merge(state.partials))
        return None, [rows] if not rows.is_empty() else []


def _finalize_late(agg: Aggregator, routed: Routed) -> tuple[str, pl.DataFrame]:
    topic_part, offset, _ws = routed.key.split("@")
    frame: pl.DataFrame = routed.payload
    tag = "late-" + topic_part.replace("#", "-p") + f"-o{offset}"
    return tag, agg.finalize(agg.merge([frame]), late=True)


def _split_by_grain(
    tagged: tuple[str, pl.DataFrame], configured: frozenset[str]
) -> list[tuple[str, tuple[str, pl.DataFrame]]]:
    """Split a window's rows by grain, dropping grains no longer configured (after a restart)."""
    tag, rows = tagged
    parts = rows.group_by("grain", maintain_order=True)
    return [(str(g), (tag, part)) for (g,), part in parts if g in configured]


@dataclass
class _LimitStep:
    params: FlowParams

    def __call__(
        self, state: CardinalityLimiter | None, item: tuple[str, pl.DataFrame]
    ) -> tuple[CardinalityLimiter | None, tuple[str, pl.DataFrame]]:
        tag, rows = item
        grain = str(rows["grain"][0])
        dims = next(d for d in self.params.grains if ".".join(d) == grain)
        fresh = CardinalityLimiter(
            dims,
            self.params.cardinality_limits,
            self.params.series_limit,
            max_exemplars=self.params.exemplars,
        )
        if state is None or state.version != fresh.version:  # changed limits start fresh
            state = fresh
        return state, (tag, state.apply(rows))


def _key_by_window(tagged: tuple[str, pl.DataFrame]) -> tuple[str, pl.DataFrame]:
    rows = tagged[1]
    return f"w{rows['window_start'][0].isoformat()}", rows


@dataclass
class _AssembleStep:
    grains: int

    def __call__(
        self, state: list[pl.DataFrame] | None, rows: pl.DataFrame
    ) -> tuple[list[pl.DataFrame] | None, list[pl.DataFrame]]:
        parts = [*(state or []), rows]
        if len(parts) < self.grains:
            return parts, []
        return None, [pl.concat(parts, how="vertical_relaxed")]

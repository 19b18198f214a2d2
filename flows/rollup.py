"""The rollup dataflow: Kafka batches to Parquet rollups, detectors and metrics.

Kafka batches -> decode -> (per partition) drop spans seen before, split late records off,
pre-aggregate -> windows closed by the slowest partition -> cardinality limit -> Parquet (and,
downstream, detectors and metrics).  Late rows take their own sink (``FlowSinks.late_rollups``),
which writes them effectively once across crashes.

Only wiring lives here.  Every step calls a named, unit-tested object from ``spanpulse.schemas``:
``BatchProcessor`` (decode, pre-aggregate), ``SeenSpanIds`` (cross-batch de-duplication) and
``PartitionTracker`` (per-partition watermark, per-record late decisions, held late groups) --
both keyed by partition so Bytewax snapshots them with the source offsets --, ``WindowCloser``
(global minimum, close orders), ``WindowState`` + ``Aggregator`` (merge, finalize).  See
``schemas/progress.py`` for why windows are keyed by window rather than by tenant, and why late
rows come out the same whatever the batch boundaries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import polars as pl
from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.batch import (
    BatchProcessor,
    PartialBatch,
    RawBatch,
    RecordBatch,
    drop_seen,
)
from spanpulse.schemas.cardinality import CardinalityLimiter
from spanpulse.schemas.dedup import SeenSpanIds, state_version
from spanpulse.schemas.progress import (
    I64,
    ON_TIME,
    CloseOrder,
    LateGroup,
    PartitionTracker,
    SealReport,
    WindowCloser,
    WindowState,
    late_source_of_tag,
    late_tag,
)

if TYPE_CHECKING:
    from spanpulse.schemas.dead_letter import DeadLetter

CLOSER_KEY = "closer"
#: Partial frames a window keeps before compacting them into one (bounds state size).
COMPACT_AFTER = 32
#: Late records a partition holds per late group before pre-aggregating them (bounds state size).
LATE_ROWS_HELD = 2000


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
    #: Late rows, keyed by their late source (``LateRollupSink``); ``None``: into ``rollups``.
    late_rollups: Sink[tuple[str, tuple[str, pl.DataFrame]]] | None = None


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
    # De-duplication and event-time progress are keyed by partition: snapshotted in the same
    # epoch as the offsets, so a replay after a crash decides exactly as the first run did.
    tracked = op.stateful_flat_map("dedup_track_and_preaggregate", records, _PartitionStep(params))
    routed = op.map("drop_partition_key", tracked, _value)
    split_batches = op.branch("split_batches", routed, lambda r: r.kind == "batch")
    batches = op.map("batch_payload", split_batches.trues, _payload)
    op.inspect("observe_batch", batches, lambda _s, b: obs.on_batch(b))
    dead = op.flat_map("dead_letters", batches, lambda b: b.dead_letters)
    op.output("dead_letter_out", dead, sinks.dead_letters)

    # Window-shaped state is versioned by the window length: a changed length starts it fresh
    # instead of misreading old windows (see docs/reliability.md, "Changing the configuration").
    v = f"w{params.window_ms}"
    split = op.branch("split_reports", split_batches.falses, lambda r: r.kind == "report")
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
    # Detection is wired before the Parquet sink and the rollup metrics: a worker runs ready
    # steps in the order they were created, so a closed window reaches the detectors (and its
    # alerts the alert topic) without first waiting for its files (~0.1 s, measured).
    if sinks.windows is not None:
        _wire_windows(flow, limited, len(params.grains), sinks.windows)
    op.inspect("observe_rollup", limited, lambda _s, tr: obs.on_rollup(tr[1]))
    if sinks.late_rollups is None:
        op.output("rollups_out", limited, sinks.rollups)
    else:
        by_kind = op.branch("split_final_late", limited, lambda tr: tr[0] == "final")
        op.output("rollups_out", by_kind.trues, sinks.rollups)
        late_keyed = op.map("key_late_by_source", by_kind.falses, _key_late)
        op.output("late_rollups_out", late_keyed, sinks.late_rollups)
    return flow


def _wire_windows(
    flow: Dataflow,
    limited: Stream[tuple[str, pl.DataFrame]],
    grains: int,
    windows_sink: Callable[[Dataflow, Stream[pl.DataFrame]], None],
) -> None:
    """Assemble each on-time window from its grains and hand it to ``FlowSinks.windows``."""
    on_time = op.filter("on_time_only", limited, lambda tr: tr[0] == "final")
    keyed = op.map("key_grain_by_window", on_time, _key_by_window)
    windows = op.stateful_flat_map("assemble_window", keyed, _AssembleStep(grains))
    windows_sink(flow, op.map("drop_assembled_key", windows, _value))


@dataclass(frozen=True)
class Routed:
    """An item leaving the partition step: a batch, a partial, a late group or a seal report."""

    kind: str  # "batch" | "partial" | "late" | "report"
    key: str
    payload: Any


def _key_by_partition(batch: RecordBatch) -> tuple[str, RecordBatch]:
    return batch.partition_id, batch


def _value(kv: tuple[str, Any]) -> Any:
    return kv[1]


def _payload(r: Routed) -> Any:
    return r.payload


def _keyed(r: Routed) -> tuple[str, Any]:
    return r.key, r.payload


def _tag_final(rows: pl.DataFrame) -> tuple[str, pl.DataFrame]:
    return "final", rows


def _key_late(tagged: tuple[str, pl.DataFrame]) -> tuple[str, tuple[str, pl.DataFrame]]:
    return late_source_of_tag(tagged[0]), tagged


@dataclass
class _PartitionState:
    """What Bytewax snapshots per partition: recently seen span ids and event-time progress."""

    tracker: PartitionTracker
    seen: SeenSpanIds | None = None


@dataclass
class _PartitionStep:
    """Per partition and batch: drop spans seen before, split late records off, pre-aggregate."""

    params: FlowParams

    def __call__(
        self, state: _PartitionState | None, batch: RecordBatch
    ) -> tuple[_PartitionState, list[Routed]]:
        state = self._configured(state, batch.partition_id)
        out = self._preaggregate(state, batch)
        windows = {
            int(ws): f for (ws,), f in out.partials.group_by("window_start_ms", maintain_order=True)
        }
        report, released = state.tracker.advance(
            wall_ms=batch.wall_ms, had_data=out.records > 0, eof=batch.eof,
            may_idle=batch.caught_up, sent=dict.fromkeys(windows, 1),
        )  # fmt: skip
        routed = [Routed("batch", "", out)]
        routed += [Routed("partial", f"w{ws}", frame) for ws, frame in windows.items()]
        routed += [Routed("late", g.partition, g) for g in released]
        routed.append(Routed("report", CLOSER_KEY, report))
        return state, routed

    def _preaggregate(self, state: _PartitionState, batch: RecordBatch) -> PartialBatch:
        """De-duplicate, hold late records in the tracker, pre-aggregate the on-time ones."""
        processor = self.params.processor
        t0 = processor.timer()
        batch = drop_seen(batch, state.seen)
        records = batch.records
        marks = state.tracker.late_marks(
            records["end_time_ms"].fill_null(0).to_numpy(), _message_order(batch)
        )
        late = marks != ON_TIME
        if late.any():
            self._hold_late(state.tracker, records.filter(pl.Series(late)), marks[late])
            batch = replace(batch, records=records.filter(pl.Series(~late)))
        out = processor.preaggregate(batch)
        seen = state.seen
        return replace(
            out,
            records=records.height,  # on time + late
            seconds=out.seconds + processor.timer() - t0,
            seen_ids=0 if seen is None else len(seen),
            forgotten_ids=0 if seen is None else seen.forgotten,
        )

    def _configured(self, state: _PartitionState | None, partition: str) -> _PartitionState:
        """Apply the current config to restored state; parts whose parameters changed start fresh."""
        p = self.params
        if state is None or state.tracker.window_ms != p.window_ms:
            tracker = PartitionTracker(partition, p.window_ms, p.lateness_ms, p.idle_timeout_ms)
            state = _PartitionState(tracker, None if state is None else state.seen)
        # Only event-time progress is restored state; lateness and idleness come from the config.
        state.tracker.lateness_ms = p.lateness_ms
        state.tracker.idle_timeout_ms = p.idle_timeout_ms
        state.seen = _configured_seen(state.seen, p)
        return state

    def _hold_late(self, tracker: PartitionTracker, records: pl.DataFrame, marks: I64) -> None:
        compact = functools.partial(_late_partials, self.params.processor.aggregator)
        groups = np.unique(marks)  # usually one: the sealed point rarely moves within a batch
        for sealed_at in groups:
            group = records.filter(pl.Series(marks == sealed_at)) if groups.size > 1 else records
            tracker.hold_late(int(sealed_at), group, compact, LATE_ROWS_HELD)


def _configured_seen(seen: SeenSpanIds | None, p: FlowParams) -> SeenSpanIds | None:
    """Return de-duplication state for the current config (``None`` when it is off)."""
    if p.dedup_horizon_ms <= 0:  # off: drop any restored state
        return None
    # The state pickles SeenSpanIds by class path: moving it means a new step id.
    if seen is None or seen.version != state_version():  # another hash: start fresh
        return SeenSpanIds(p.dedup_horizon_ms, p.dedup_max_ids)
    if (seen.horizon_ms, seen.max_ids) != (p.dedup_horizon_ms, p.dedup_max_ids):
        seen.configure(p.dedup_horizon_ms, p.dedup_max_ids)  # the current config wins
    return seen


def _message_order(batch: RecordBatch) -> I64 | None:
    """Return each record's message offset when it lines up with the records, else ``None``.

    ``None`` judges record by record (a batch built without offsets, e.g. in tests); the
    decoder always aligns them.
    """
    offsets = batch.offsets
    if offsets is None or len(offsets) != batch.records.height:
        return None
    return offsets


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


def _late_partials(
    agg: Aggregator, records: list[pl.DataFrame], partials: list[pl.DataFrame]
) -> pl.DataFrame:
    """Pre-aggregate held late records (in one call) and merge them with held partial rows."""
    if records:
        partials = [agg.partials(pl.concat(records, how="vertical_relaxed")), *partials]
    return agg.merge(partials)


def _finalize_late(agg: Aggregator, routed: Routed) -> tuple[str, pl.DataFrame]:
    """Finalize a released late group: its rows of every window it touched, under its tag.

    One item per group (not per window): the cardinality limit and the observer handle several
    windows per call, and the sinks write one file per window.
    """
    group: LateGroup = routed.payload
    rows = agg.finalize(_late_partials(agg, list(group.records), list(group.partials)), late=True)
    return late_tag(group), rows


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

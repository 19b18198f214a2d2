"""Event-time progress: per-partition watermarks, a global window closer, and window merging.

Why not Bytewax's ``EventClock``: its watermark is per key and follows the *fastest* partition,
so a backlog read from several partitions at different speeds is mostly misclassified as late
(measured: ~75 % of a 6-hour backlog lost with 10 s of lateness).  Here lateness is relative to
the *slowest* partition, as in Flink:

1. :class:`PartitionTracker` (one per Kafka partition, keyed by ``topic#partition``) keeps that
   partition's own watermark, ``max event time - allowed lateness``.  A record whose window ended
   at or before the watermark is *late* for this partition; everything else is on time and is
   forwarded as a partial row keyed by its window.  The tracker reports, per batch, how many
   partial messages it sent for each window and how far it has sealed.
2. :class:`WindowCloser` (a single key) takes the minimum sealed point over all partitions and
   emits a *close* order for every window every partition has passed, carrying how many
   partials were sent for it in total -- so the merge step never depends on arrival order.
3. :class:`WindowState` (keyed by window) collects partials and finalizes once it has the close
   order and exactly that many partials.

A partition that is idle (no messages for ``idle_timeout_ms`` of wall time while the consumer is
caught up and the broker reachable, as observed by the source and passed in -- logic never reads
the clock) advances its watermark to ``wall time - idle_timeout``, so a quiet partition cannot
stall windows.  During a broker outage a partition is never idle, so the backlog that arrives
after it is on time.  At the end of a bounded run
(``--until-caught-up``) a partition seals everything.  The restored state after a restart holds
only event times, so a downtime never turns the backlog late (the EventClock resume pitfall).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import polars as pl

#: Sealed point of a partition that has reached the end of a bounded input.
END_OF_TIME_MS: Final = 2**62


@dataclass(frozen=True)
class SealReport:
    """What one partition tells the closer after a batch."""

    partition: str
    sealed_upto_ms: int | None  # every window ending at or before this is sealed by the partition
    sent: Mapping[int, int]  # window_start_ms -> partial messages sent in this batch


@dataclass(frozen=True)
class CloseOrder:
    """Tells a window's merge step how many partials to expect before finalizing."""

    window_start_ms: int
    expected_partials: int


@dataclass
class PartitionTracker:
    """Watermark and late-data split for one source partition.

    Args:
        partition: the partition id, ``topic#partition``.
        window_ms: tumbling window length.
        lateness_ms: allowed lateness; windows stay open this long past their end (event time).
        idle_timeout_ms: wall time without messages after which the partition counts as idle.
    """

    partition: str
    window_ms: int
    lateness_ms: int
    idle_timeout_ms: int
    max_event_ms: int | None = None
    sealed_upto_ms: int | None = None
    last_data_wall_ms: int | None = None

    def split(
        self,
        partials: pl.DataFrame,
        *,
        wall_ms: int,
        max_event_ms: int | None,
        eof: bool,
        may_idle: bool = True,
    ) -> tuple[dict[int, pl.DataFrame], pl.DataFrame, SealReport]:
        """Split a batch's partial rows into on-time per-window frames and late rows.

        Lateness is judged against the watermark *before* this batch, so a batch never makes
        its own records late; then the watermark advances with the batch.
        """
        on_time: dict[int, pl.DataFrame] = {}
        late = partials.head(0)
        if not partials.is_empty():
            self.last_data_wall_ms = wall_ms
            sealed = self.sealed_upto_ms
            is_late = (
                pl.lit(False)
                if sealed is None
                else (pl.col("window_start_ms") + self.window_ms) <= sealed
            )
            late = partials.filter(is_late)
            fresh = partials.filter(~is_late)
            for (ws,), frame in fresh.group_by("window_start_ms", maintain_order=True):
                on_time[int(ws)] = frame
        if max_event_ms is not None:
            self.max_event_ms = max(self.max_event_ms or max_event_ms, max_event_ms)
        self._advance(wall_ms, eof, may_idle)
        report = SealReport(self.partition, self.sealed_upto_ms, {ws: 1 for ws in on_time})
        return on_time, late, report

    def _advance(self, wall_ms: int, eof: bool, may_idle: bool) -> None:
        if self.last_data_wall_ms is None or not may_idle:
            # Not caught up, or the broker is unreachable: silence is not idleness.
            self.last_data_wall_ms = wall_ms
        if eof:
            self.sealed_upto_ms = END_OF_TIME_MS
            return
        mark = None if self.max_event_ms is None else self.max_event_ms - self.lateness_ms
        if wall_ms - self.last_data_wall_ms >= self.idle_timeout_ms:
            idle_mark = wall_ms - self.idle_timeout_ms - self.lateness_ms
            mark = idle_mark if mark is None else max(mark, idle_mark)
        if mark is None:
            return
        upto = (mark // self.window_ms) * self.window_ms
        if self.sealed_upto_ms is None or upto > self.sealed_upto_ms:
            self.sealed_upto_ms = upto


@dataclass
class WindowCloser:
    """Global minimum over partitions' sealed points; emits :class:`CloseOrder` per window.

    Args:
        partitions: every source partition id (``topic#partition``) the job reads.
        window_ms: tumbling window length.
    """

    partitions: frozenset[str]
    window_ms: int
    sealed: dict[str, int | None] = field(default_factory=dict)
    expected: dict[int, int] = field(default_factory=dict)
    closed_upto_ms: int | None = None

    def report(self, rep: SealReport) -> list[CloseOrder]:
        """Account one partition report and return the windows that can now close."""
        for ws, n in rep.sent.items():
            self.expected[ws] = self.expected.get(ws, 0) + n
        if rep.sealed_upto_ms is not None:
            prev = self.sealed.get(rep.partition)
            self.sealed[rep.partition] = max(prev or rep.sealed_upto_ms, rep.sealed_upto_ms)
        return self._closable()

    def _closable(self) -> list[CloseOrder]:
        marks = [self.sealed.get(p) for p in self.partitions]
        if not marks or any(m is None for m in marks):
            return []
        low = min(m for m in marks if m is not None)
        self.closed_upto_ms = low
        ready = sorted(ws for ws in self.expected if ws + self.window_ms <= low)
        return [CloseOrder(ws, self.expected.pop(ws)) for ws in ready]

    @property
    def lag_ms(self) -> int | None:
        """Return how far the slowest partition holds windows open, as its sealed point."""
        return self.closed_upto_ms


@dataclass
class WindowState:
    """Partials received for one window, plus the close order once it arrives."""

    partials: list[pl.DataFrame] = field(default_factory=list)
    received: int = 0
    expected: int | None = None

    def add(self, frame: pl.DataFrame) -> None:
        """Keep one partial message."""
        self.partials.append(frame)
        self.received += 1

    @property
    def complete(self) -> bool:
        """Return True once the close order arrived and every announced partial is here."""
        return self.expected is not None and self.received >= self.expected

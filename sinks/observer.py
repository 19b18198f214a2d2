"""Turns dataflow events into Prometheus metrics, running totals and progress lines.

Why separate from the flow: the flow only calls an :class:`~spanpulse.flows.rollup.Observer`;
what is counted, exported and printed is I/O and lives here.  The totals let a bounded run end
with an exact account: messages consumed = decoded + dead-lettered, and spans seen = rolled up
+ skipped + rejected.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from spanpulse.schemas.batch import PartialBatch
from spanpulse.schemas.record import DIMENSIONS, OTHER
from spanpulse.sinks.metrics import Metrics


@dataclass
class JobStats:
    """Process-local running totals (thread-safe: Bytewax workers may be threads)."""

    messages: int = 0
    spans_seen: int = 0
    records: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    late_calls: int = 0
    windows: int = 0
    rolled_up_calls: int = 0
    closed_upto_ms: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly snapshot."""
        with self._lock:
            return {
                "messages": self.messages,
                "spans_seen": self.spans_seen,
                "records": self.records,
                "dead_letters": dict(self.dead_letters),
                "skipped": dict(self.skipped),
                "late_calls": self.late_calls,
                "windows": self.windows,
                "rolled_up_calls": self.rolled_up_calls,
            }


@dataclass
class MetricsObserver:
    """Observer that feeds :class:`Metrics` and :class:`JobStats`."""

    metrics: Metrics | None
    stats: JobStats = field(default_factory=JobStats)
    clock: Callable[[], float] = time.time

    def on_batch(self, batch: PartialBatch) -> None:
        """Count a decoded batch."""
        s = self.stats
        with s._lock:
            s.messages += batch.messages
            s.spans_seen += batch.spans_seen
            s.records += batch.records
            for dl in batch.dead_letters:
                s.dead_letters[dl.reason] += 1
            s.skipped.update(batch.skipped)
        m = self.metrics
        if m is None:
            return
        topic, _, part = batch.partition_id.rpartition("#")
        if batch.messages:
            m.count_consumed(topic, int(part), batch.messages, batch.spans_seen)
            m.observe_batch_seconds(batch.seconds)
        reasons = Counter(dl.reason for dl in batch.dead_letters)
        for reason, n in reasons.items():
            m.count_dead_letters(reason, n)
        for reason, n in batch.skipped.items():
            if n:
                m.count_skipped(reason, n)
        if batch.lag is not None:
            m.set_consumer_lag(topic, int(part), batch.lag)
        if batch.seen_ids or batch.forgotten_ids:
            m.set_dedup_state(topic, int(part), batch.seen_ids, batch.forgotten_ids)

    def on_window(self, rows: pl.DataFrame) -> None:
        """Count a finalized window and export its LLM signals."""
        with self.stats._lock:
            self.stats.windows += 1
            first = rows.filter(pl.col("grain") == rows["grain"][0])
            self.stats.rolled_up_calls += int(first["calls"].sum())
        if self.metrics is not None:
            end = rows["window_end"].max()
            if end is not None:
                self.metrics.set_window_lag(max(0.0, self.clock() - end.timestamp()))  # type: ignore[union-attr]

    def on_rollup(self, rows: pl.DataFrame) -> None:
        """Export the LLM signals of cardinality-limited on-time rows (bounded labels only)."""
        if self.metrics is None or rows.is_empty():
            return
        folded = rows.filter(pl.col("overflow_calls") > 0)
        for dim in DIMENSIONS if folded.height else ():  # a filter per dimension costs ~1 ms
            if dim in folded.columns:
                n = int(folded.filter(pl.col(dim) == OTHER)["overflow_calls"].sum())
                if n:
                    self.metrics.count_overflow(dim, n)
        if not rows["late"].any():
            self.metrics.observe_rollup(rows)

    def on_late(self, rows: pl.DataFrame) -> None:
        """Count late calls (their rows are written with ``late = true``)."""
        if rows.is_empty():
            return
        first = rows.filter(pl.col("grain") == rows["grain"][0])
        n = int(first["calls"].sum())
        with self.stats._lock:
            self.stats.late_calls += n
        if self.metrics is not None:
            self.metrics.count_late(n)

    def on_close(self, closed_upto_ms: int | None) -> None:
        """Remember how far windows are closed."""
        self.stats.closed_upto_ms = closed_upto_ms

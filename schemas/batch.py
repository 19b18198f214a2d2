"""What crosses the dataflow: raw Kafka batches in, pre-aggregated partial batches out.

Why a batch type of our own: the source hands the decode step a whole partition batch (not
single messages), and the decode step hands on a small :class:`PartialBatch` -- partial
aggregates plus accounting -- so Bytewax moves a few rows per batch instead of every span.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import polars as pl

from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.privacy import TenantHasher

if TYPE_CHECKING:
    from spanpulse.schemas.dead_letter import DeadLetter
    from spanpulse.schemas.decode import DecodedBatch, Message


@dataclass(frozen=True)
class RawBatch:
    """Messages read from one partition in one poll, plus what the source observed."""

    partition_id: str  # "topic#partition"
    encoding: str
    messages: list[Message]
    wall_ms: int  # wall clock at poll time (the source is the only reader of the clock)
    eof: bool = False  # a bounded run reached this partition's end offset
    lag: int | None = None  # messages behind the partition's high watermark
    caught_up: bool = True  # broker reachable and nothing left to read: silence may mean idle


@dataclass(frozen=True)
class PartialBatch:
    """One decoded and pre-aggregated batch: partial rows, dead letters and counters."""

    partition_id: str
    wall_ms: int
    eof: bool
    partials: pl.DataFrame
    dead_letters: list[DeadLetter]
    messages: int
    spans_seen: int
    records: int
    skipped: Mapping[str, int]
    max_event_ms: int | None
    first_offset: int | None
    lag: int | None
    seconds: float = 0.0
    caught_up: bool = True


class BatchDecoder(Protocol):
    """Anything that decodes a list of messages (see :class:`spanpulse.schemas.decode.Decoder`)."""

    def decode(self, messages: list[Message]) -> DecodedBatch:
        """Decode one batch."""
        ...


@dataclass
class BatchProcessor:
    """Decode a raw batch with the topic's decoder and pre-aggregate it in one call.

    Args:
        decoders: one decoder per encoding.
        aggregator: the pre-aggregation shared by every partition.
        timer: injected monotonic clock for the batch-duration metric.
    """

    decoders: Mapping[str, BatchDecoder]
    aggregator: Aggregator
    timer: Callable[[], float] = field(default=time.perf_counter)
    tenant_hasher: TenantHasher | None = None

    def process(self, raw: RawBatch) -> PartialBatch:
        """Decode and pre-aggregate; never raises for bad input (it becomes dead letters)."""
        t0 = self.timer()
        first = raw.messages[0].offset if raw.messages else None
        if not raw.messages:
            return PartialBatch(
                raw.partition_id, raw.wall_ms, raw.eof, self.aggregator.partials(pl.DataFrame()),
                [], 0, 0, 0, {}, None, first, raw.lag, 0.0, raw.caught_up,
            )  # fmt: skip
        decoded = self.decoders[raw.encoding].decode(raw.messages)
        records = decoded.records
        if self.tenant_hasher is not None:
            records = self.tenant_hasher.apply(records)
        partials = self.aggregator.partials(records)
        return PartialBatch(
            partition_id=raw.partition_id,
            wall_ms=raw.wall_ms,
            eof=raw.eof,
            partials=partials,
            dead_letters=list(decoded.dead_letters),
            messages=decoded.messages,
            spans_seen=decoded.spans_seen,
            records=decoded.records.height,
            skipped=dict(decoded.skipped),
            max_event_ms=decoded.max_event_time_ms,
            first_offset=first,
            lag=raw.lag,
            seconds=self.timer() - t0,
            caught_up=raw.caught_up,
        )

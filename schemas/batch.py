"""What crosses the dataflow: raw Kafka batches in, pre-aggregated partial batches out.

Why a batch type of our own: the source hands the decode step a whole partition batch (not
single messages), and the decode step hands on a small :class:`PartialBatch` -- partial
aggregates plus accounting -- so Bytewax moves a few rows per batch instead of every span.

Between the two sits a :class:`RecordBatch` (decoded records plus the raw batch's accounting):
decoding is stateless, but dropping spans already seen in earlier batches needs per-partition
state (:class:`~spanpulse.schemas.dedup.SeenSpanIds`) that Bytewax snapshots together with the
source offsets, so :meth:`BatchProcessor.preaggregate` runs in a step keyed by partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.dedup import SeenSpanIds, duplicate_mask
from spanpulse.schemas.privacy import TenantHasher
from spanpulse.schemas.record import empty_records

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
    seen_ids: int = 0  # ids the partition's de-duplication remembers after this batch
    forgotten_ids: int = 0  # ids forgotten early (max_ids bound) since the partition's state began


@dataclass(frozen=True)
class RecordBatch:
    """One decoded raw batch: records (stream order) and accounting, before pre-aggregation.

    Carries the raw batch's metadata but not its messages, so only decoded records cross
    workers when the partition's keyed step runs on another worker.
    """

    partition_id: str
    wall_ms: int
    eof: bool
    records: pl.DataFrame
    dead_letters: list[DeadLetter]
    messages: int
    spans_seen: int
    skipped: Mapping[str, int]
    max_event_ms: int | None
    first_offset: int | None
    lag: int | None
    caught_up: bool
    seconds: float  # time spent decoding
    #: Kafka offset of each record's message, aligned with ``records`` (per-message lateness).
    offsets: npt.NDArray[np.int64] | None = None


class BatchDecoder(Protocol):
    """Anything that decodes a list of messages (see :class:`spanpulse.schemas.decode.Decoder`)."""

    def decode(self, messages: list[Message]) -> DecodedBatch:
        """Decode one batch."""
        ...


@dataclass
class BatchProcessor:
    """Decode a raw batch with the topic's decoder, then de-duplicate and pre-aggregate it.

    The two halves are separate calls (:meth:`decode` is stateless, :meth:`preaggregate` takes
    the partition's de-duplication state); :meth:`process` chains them without that state.

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
        """Decode and pre-aggregate without cross-batch de-duplication (a stateless shortcut)."""
        return self.preaggregate(self.decode(raw))

    def decode(self, raw: RawBatch) -> RecordBatch:
        """Decode (and hash tenant ids); never raises for bad input (it becomes dead letters)."""
        t0 = self.timer()
        if not raw.messages:
            return RecordBatch(
                raw.partition_id, raw.wall_ms, raw.eof, empty_records(), [], 0, 0, {}, None,
                None, raw.lag, raw.caught_up, 0.0,
            )  # fmt: skip
        decoded = self.decoders[raw.encoding].decode(raw.messages)
        records = decoded.records
        if self.tenant_hasher is not None:
            records = self.tenant_hasher.apply(records)
        return RecordBatch(
            partition_id=raw.partition_id,
            wall_ms=raw.wall_ms,
            eof=raw.eof,
            records=records,
            dead_letters=list(decoded.dead_letters),
            messages=decoded.messages,
            spans_seen=decoded.spans_seen,
            skipped=dict(decoded.skipped),
            max_event_ms=decoded.max_event_time_ms,
            first_offset=raw.messages[0].offset,
            lag=raw.lag,
            caught_up=raw.caught_up,
            seconds=self.timer() - t0,
            offsets=decoded.offsets,
        )

    def preaggregate(self, batch: RecordBatch, seen: SeenSpanIds | None = None) -> PartialBatch:
        """Drop spans ``seen`` in earlier batches (when given), then pre-aggregate the rest.

        Dropped copies are counted in ``skipped["duplicate_span"]``, like copies within a
        batch, so spans still reconcile: seen = records + skipped + per-span dead letters.
        """
        t0 = self.timer()
        batch = drop_seen(batch, seen)
        records, skipped, max_event_ms = batch.records, dict(batch.skipped), batch.max_event_ms
        return PartialBatch(
            partition_id=batch.partition_id,
            wall_ms=batch.wall_ms,
            eof=batch.eof,
            partials=self.aggregator.partials(records),
            dead_letters=batch.dead_letters,
            messages=batch.messages,
            spans_seen=batch.spans_seen,
            records=records.height,
            skipped=skipped,
            max_event_ms=max_event_ms,
            first_offset=batch.first_offset,
            lag=batch.lag,
            seconds=batch.seconds + self.timer() - t0,
            caught_up=batch.caught_up,
            seen_ids=0 if seen is None else len(seen),
            forgotten_ids=0 if seen is None else seen.forgotten,
        )


def drop_seen(batch: RecordBatch, seen: SeenSpanIds | None) -> RecordBatch:
    """Drop spans ``seen`` in earlier batches, counted in ``skipped["duplicate_span"]``.

    Runs over the whole batch in stream order before anything else, as the de-duplication rule
    requires (see ``schemas/dedup.py``); the per-record offsets are filtered with the records
    and the batch's largest event time is recomputed from what is kept.
    """
    if seen is None or batch.records.is_empty():
        return batch
    dup = duplicate_mask(batch.records, seen)
    dropped = int(dup.sum())
    if not dropped:
        return batch
    records = batch.records.filter(pl.Series(~dup))
    offsets = None if batch.offsets is None else batch.offsets[~dup]
    skipped = dict(batch.skipped)
    skipped["duplicate_span"] = skipped.get("duplicate_span", 0) + dropped
    top = records["end_time_ms"].max() if records.height else None
    max_event_ms = None if top is None else int(top)  # type: ignore[arg-type]
    return replace(
        batch, records=records, skipped=skipped, max_event_ms=max_event_ms, offsets=offsets
    )

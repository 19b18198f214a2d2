"""In-memory stand-ins for the Kafka source and decoder, for flow tests without a broker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from spanpulse.schemas.batch import RawBatch
from spanpulse.schemas.record import conform


@dataclass(frozen=True)
class FakeMessage:
    """A message whose 'value' is already a list of record dicts."""

    rows: tuple[dict, ...]
    topic: str
    partition: int
    offset: int


@dataclass
class FakeDecoded:
    records: pl.DataFrame
    dead_letters: list = field(default_factory=list)
    messages: int = 0
    spans_seen: int = 0
    skipped: dict = field(default_factory=dict)
    max_event_time_ms: int | None = None
    offsets: np.ndarray | None = None


class FakeDecoder:
    def decode(self, messages: Sequence[FakeMessage]) -> FakeDecoded:
        rows = [r for m in messages for r in m.rows]
        df = conform(pl.DataFrame(rows)) if rows else conform(pl.DataFrame())
        mx = df["end_time_ms"].max() if rows else None
        # Like the real decoder: each record carries its message's offset (per-message lateness).
        offsets = np.array([m.offset for m in messages for _ in m.rows], np.int64)
        return FakeDecoded(df, [], len(messages), len(rows), {}, mx, offsets if rows else None)


class _Part(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, batches: list[RawBatch], start: int) -> None:
        self.batches = batches
        self.i = start

    def next_batch(self) -> list[RawBatch]:
        if self.i >= len(self.batches):
            raise StopIteration
        b = self.batches[self.i]
        self.i += 1
        return [b]

    def snapshot(self) -> int:
        return self.i


class MemorySource(FixedPartitionedSource[RawBatch, int]):
    """Replays prepared RawBatches per partition (the last one should carry eof=True)."""

    def __init__(self, parts: Mapping[str, list[RawBatch]]) -> None:
        self.parts = dict(parts)

    def partition_ids(self) -> frozenset[str]:
        return frozenset(self.parts)

    def list_parts(self) -> list[str]:
        return sorted(self.parts)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        return _Part(self.parts[for_part], resume_state or 0)


class _ListPart(StatelessSinkPartition):
    def __init__(self, out: list) -> None:
        self.out = out

    def write_batch(self, items: list) -> None:
        self.out.extend(items)


class ListSink(DynamicSink):
    """Collects items in a list (process-local)."""

    def __init__(self) -> None:
        self.items: list = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ListPart:
        return _ListPart(self.items)


def batches_for(
    partition_id: str, rows: list[dict], per_batch: int, *, wall_ms: int = 0, eof: bool = True
) -> list[RawBatch]:
    """Split rows into RawBatches of fake messages (one row per message)."""
    topic, _, part = partition_id.rpartition("#")
    msgs = [FakeMessage((r,), topic, int(part), i) for i, r in enumerate(rows)]
    out = [
        RawBatch(partition_id, "fake", list(msgs[i : i + per_batch]), wall_ms, False)
        for i in range(0, len(msgs), per_batch)
    ]
    out.append(RawBatch(partition_id, "fake", [], wall_ms, eof))
    return out

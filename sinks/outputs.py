"""Bytewax sinks: dead letters to Kafka, rollup windows and late rows to Parquet.

Why dynamic sinks: every worker writes what it produced (dead letters of the batches it
decoded, windows it merged) without an extra exchange.  The Parquet writer names files
deterministically per window, so a window emitted again after a restart overwrites its file.
Late rows go through a partitioned sink instead (:class:`LateRollupSink`): its state -- an epoch
sequence number in the recovery store -- lets a resumed job delete what lost epochs wrote.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import polars as pl
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from confluent_kafka import Producer

from spanpulse.schemas.dead_letter import DeadLetter
from spanpulse.schemas.progress import late_source
from spanpulse.sinks.parquet import RewindJournal, RollupWriter

log = logging.getLogger(__name__)


#: Dead-letter envelopes larger than this go out without the payload (the envelope says so):
#: a payload that cannot be produced must not crash the job.
MAX_DEAD_LETTER_BYTES = 19_000_000
#: Where :class:`LateRollupSink` keeps its journals, under the rollup root (no Parquet inside,
#: so queries globbing ``**/*.parquet`` never read it).
JOURNAL_DIR: Final = "_late_journal"


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(
        self, producer: Producer, topic: str, include_payload: bool, max_bytes: int
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.include_payload = include_payload
        self.max_bytes = max_bytes

    def _value(self, dl: DeadLetter) -> tuple[bytes, bool]:
        value = dl.to_json_bytes(self.include_payload)
        if len(value) <= self.max_bytes:
            return value, False
        return dl.to_json_bytes(include_payload=False), True

    def write_batch(self, items: list[DeadLetter]) -> None:
        for dl in items:
            key = f"{dl.topic}/{dl.partition}/{dl.offset}".encode()
            value, dropped = self._value(dl)
            headers: dict[str, str | bytes | None] = {"reason": dl.reason, "stage": dl.stage}
            if dropped:
                headers["payload"] = "dropped: envelope over the dead-letter size limit"
            self.producer.produce(self.topic, value=value, key=key, headers=headers)
            self.producer.poll(0)
        # At-least-once: a batch is on the broker before the dataflow moves past it.
        remaining = self.producer.flush(30)
        if remaining:
            log.error("dead-letter producer: %d messages not yet delivered after 30s", remaining)

    def close(self) -> None:
        self.producer.flush(30)


@dataclass
class DeadLetterSink(DynamicSink[DeadLetter]):
    """Publishes dead letters (reason, stage, origin, optionally the original bytes)."""

    client_config: Mapping[str, str]
    topic: str
    include_payload: bool = True
    max_bytes: int = MAX_DEAD_LETTER_BYTES

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        """Create one producer per worker."""
        conf: dict[str, Any] = {**self.client_config, "linger.ms": "20", "log_level": "3"}
        conf.setdefault("message.max.bytes", str(max(self.max_bytes * 2, 1_000_000)))
        return _DeadLetterPartition(
            Producer(conf), self.topic, self.include_payload, self.max_bytes
        )


class _RollupPartition(StatelessSinkPartition[tuple[str, pl.DataFrame]]):
    def __init__(self, writer: RollupWriter, on_write: Callable[[pl.DataFrame], None]) -> None:
        self.writer = writer
        self.on_write = on_write

    def write_batch(self, items: list[tuple[str, pl.DataFrame]]) -> None:
        for tag, rows in items:
            for window in _by_window(rows):  # a late group's rows may span several windows
                self.writer.write_window(window, tag=tag)
                self.on_write(window)


@dataclass
class RollupSink(DynamicSink[tuple[str, pl.DataFrame]]):
    """Writes ``(tag, rows)`` items: one file per window of ``rows``, named by window and tag."""

    writer: RollupWriter
    on_write: Callable[[pl.DataFrame], None] = lambda rows: None

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RollupPartition:
        """Every worker writes the windows it merged."""
        return _RollupPartition(self.writer, self.on_write)

    def late_sink(self, partitions: Iterable[str], *, rewind: bool) -> LateRollupSink:
        """Return the sink for late rows, writing through the same writer (see its docs)."""
        return LateRollupSink(self.writer, frozenset(partitions), rewind, self.on_write)


class _LatePartition(StatefulSinkPartition[tuple[str, pl.DataFrame], int]):
    """One partition of :class:`LateRollupSink`: buffers an epoch's rows, writes them at its end."""

    def __init__(
        self,
        writer: RollupWriter,
        journal: RewindJournal | None,
        seq: int,
        on_write: Callable[[pl.DataFrame], None],
    ) -> None:
        self.writer = writer
        self.journal = journal
        self.seq = seq
        self.on_write = on_write
        self.pending: list[tuple[str, pl.DataFrame]] = []

    def write_batch(self, values: list[tuple[str, pl.DataFrame]]) -> None:
        self.pending.extend(values)

    def snapshot(self) -> int:
        """Write the epoch's rows, then return the sequence number the next epoch will use."""
        if self.pending:
            self._flush()
        return self.seq

    def close(self) -> None:
        if self.pending:
            self._flush()

    def _flush(self) -> None:
        files = _by_file(self.pending)
        if self.journal is not None:
            paths = [p for tag, rows in files for p in self.writer.paths(rows, tag=tag)]
            self.journal.record(self.seq, paths)
        for tag, rows in files:
            self.writer.write_window(rows, tag=tag)
            self.on_write(rows)
        self.pending.clear()
        self.seq += 1


def _by_window(rows: pl.DataFrame) -> list[pl.DataFrame]:
    """Split rows by window (the writer takes one window per call); one window stays as is."""
    if rows.is_empty() or rows["window_start"].n_unique() == 1:
        return [rows]
    return rows.partition_by("window_start", maintain_order=True)


def _by_file(items: list[tuple[str, pl.DataFrame]]) -> list[tuple[str, pl.DataFrame]]:
    """Regroup items by the file they land in (tag and window): one frame per file."""
    groups: dict[tuple[str, object], list[pl.DataFrame]] = {}
    for tag, rows in items:
        for window in _by_window(rows):
            if not window.is_empty():
                groups.setdefault((tag, window["window_start"][0]), []).append(window)
    return [
        (tag, pl.concat(frames, how="vertical_relaxed")) for (tag, _ws), frames in groups.items()
    ]


@dataclass
class LateRollupSink(FixedPartitionedSink[tuple[str, pl.DataFrame], int]):
    """Writes late rows effectively once: one write per epoch, taken back if it is replayed.

    Items are ``(late source, (tag, rows))``, ``late source`` being
    :func:`~spanpulse.schemas.progress.late_source` of an input partition (one sink partition
    each).  A partition buffers an epoch's rows and writes them in ``snapshot()``, after
    recording the files in a :class:`RewindJournal`; its state is the next epoch's sequence
    number, so a job resumed after a crash deletes whatever the lost epochs wrote before the
    replay writes it again.  File names come from the tags (deterministic per late group), so
    the files of a resumed run are the same as an uninterrupted run's.

    Args:
        writer: the rollup writer (shared with :class:`RollupSink`).
        partitions: the input partitions, ``topic#partition``.
        rewind: take back lost epochs on resume; only meaningful with a recovery store
            (without one every start is fresh and nothing may be deleted).
    """

    writer: RollupWriter
    partitions: frozenset[str]
    rewind: bool = True
    on_write: Callable[[pl.DataFrame], None] = lambda rows: None

    def list_parts(self) -> list[str]:
        """Every worker can write every partition (a local directory or a shared volume)."""
        return sorted({late_source(p) for p in self.partitions})

    def part_fn(self, item_key: str) -> int:
        """Route a late source to its own partition (stable across processes: no ``hash``)."""
        parts = self.list_parts()
        return parts.index(item_key) if item_key in parts else zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LatePartition:
        """Build a partition; with ``rewind``, first delete what later epochs wrote."""
        journal = None
        if self.rewind:
            journal = RewindJournal(self.writer.root / JOURNAL_DIR / for_part, self.writer.root)
            removed = journal.rewind(resume_state)
            if removed:
                log.info("late rows: resumed %s at epoch %s, removed %d replayed files",
                         for_part, resume_state, len(removed))  # fmt: skip
        return _LatePartition(self.writer, journal, resume_state or 0, self.on_write)

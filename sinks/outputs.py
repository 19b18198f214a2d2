"""Bytewax sinks: dead letters to Kafka, rollup windows to Parquet.

Why dynamic sinks: every worker writes what it produced (dead letters of the batches it
decoded, windows it merged) without an extra exchange.  The Parquet writer names files
deterministically per window, so a window emitted again after a restart overwrites its file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer

from spanpulse.schemas.dead_letter import DeadLetter
from spanpulse.sinks.parquet import RollupWriter

log = logging.getLogger(__name__)


#: Dead-letter envelopes larger than this go out without the payload (the envelope says so):
#: a payload that cannot be produced must not crash the job.
MAX_DEAD_LETTER_BYTES = 19_000_000


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
            self.writer.write_window(rows, tag=tag)
            self.on_write(rows)


@dataclass
class RollupSink(DynamicSink[tuple[str, pl.DataFrame]]):
    """Writes ``(tag, rows)`` items: one window's rows, file-named by window and tag."""

    writer: RollupWriter
    on_write: Callable[[pl.DataFrame], None] = lambda rows: None

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RollupPartition:
        """Every worker writes the windows it merged."""
        return _RollupPartition(self.writer, self.on_write)

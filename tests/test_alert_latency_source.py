"""The Kafka source never blocks the worker while it polls (alert latency, issue 6).

One Bytewax worker polls every partition it owns and runs every downstream step on the same
thread.  ``Consumer.consume(n, timeout)`` waits the whole timeout unless ``n`` messages arrive,
so a 50 ms timeout cost 4 x 50 ms per round over four partitions even with data waiting --
time in which no window could close and no alert could leave.  The source now takes what
librdkafka has already fetched and asks Bytewax to wake an empty partition after
``idle_poll_s``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from spanpulse.sinks.kafka_producer import BulkProducer
from spanpulse.sinks.kafka_source import SpanSource

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _source(bootstrap: str, topic: str, idle_poll_s: float = 0.02) -> SpanSource:
    return SpanSource(
        {"bootstrap.servers": bootstrap}, {topic: "otlp_proto"}, idle_poll_s=idle_poll_s
    )


def _read_one_each(parts: list, deadline_s: float = 15.0) -> dict[str, list[bytes]]:
    """Poll every partition until each has returned one message; return them by partition."""
    got: dict[str, list[bytes]] = {}
    deadline = time.monotonic() + deadline_s
    while len(got) < len(parts) and time.monotonic() < deadline:
        for part in parts:
            for batch in part.next_batch():
                if batch.messages:
                    got.setdefault(part.partition_id, []).extend(m.value for m in batch.messages)
        time.sleep(0.01)
    return got


def test_a_round_over_four_partitions_with_data_does_not_wait(broker, topic_factory) -> None:
    topic = topic_factory("latency-src", partitions=PARTITIONS)
    source = _source(broker.bootstrap, topic)
    parts = [source.build_part("in", pid, None) for pid in source.list_parts()]
    try:
        prod = BulkProducer({"bootstrap.servers": broker.bootstrap})
        for p in range(PARTITIONS):
            prod.send(topic, [f"warm-{p}".encode()], partition=p)
        prod.flush()
        assert len(_read_one_each(parts)) == PARTITIONS  # consumers connected and fetching

        for p in range(PARTITIONS):
            prod.send(topic, [f"now-{p}".encode()], partition=p)
        prod.flush()
        time.sleep(1.0)  # librdkafka fetches in the background (fetch.wait.max.ms = 50)

        t0 = time.monotonic()
        batches = [b for part in parts for b in part.next_batch()]
        elapsed = time.monotonic() - t0
    finally:
        for part in parts:
            part.close()
    values = sorted(m.value for b in batches for m in b.messages)
    assert values == [f"now-{p}".encode() for p in range(PARTITIONS)]
    # A blocking consume(5000, 0.05) cannot return before 4 x 50 ms.
    assert elapsed < 0.1, f"one round over {PARTITIONS} partitions took {elapsed * 1000:.0f} ms"


def test_an_empty_partition_returns_at_once_and_asks_to_be_woken_later(
    broker, topic_factory
) -> None:
    topic = topic_factory("latency-idle", partitions=1)
    source = _source(broker.bootstrap, topic, idle_poll_s=0.2)
    (part,) = [source.build_part("in", pid, None) for pid in source.list_parts()]
    try:
        part.next_batch()  # first poll: heartbeat (nothing emitted yet)
        before = datetime.now(UTC)
        t0 = time.monotonic()
        assert part.next_batch() == []  # nothing queued, heartbeat not due
        elapsed = time.monotonic() - t0
        after = datetime.now(UTC)
        wake = part.next_awake()
    finally:
        part.close()
    assert elapsed < 0.05
    assert wake is not None
    assert before + timedelta(seconds=0.2) <= wake <= after + timedelta(seconds=0.2)

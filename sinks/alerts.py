"""The alert topic: a producer sink for the job, and a tail reader for subscribers.

Delivery is at-least-once: after a restart the job may publish an alert again, with the same
``id`` (deterministic from fingerprint + window + status), so consumers deduplicate by ``id``.
Messages are keyed by the alert fingerprint, so every state change of one alert lands on one
partition, in order.

The producer never blocks the pipeline indefinitely: librdkafka retries with backoff for up
to ``delivery_timeout_ms``; when its local queue is full the sink waits at most
``max_block_s`` and then counts the alert as dropped (a metric and a log line say so).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

log = logging.getLogger(__name__)


class AlertLike(Protocol):
    """What the sink needs from an alert."""

    status: str

    @property
    def key(self) -> bytes:
        """Message key (the fingerprint)."""
        ...

    def to_json_bytes(self) -> bytes:
        """JSON body."""
        ...


class _AlertPartition(StatelessSinkPartition[AlertLike]):
    def __init__(
        self,
        producer: Producer,
        topic: str,
        max_block_s: float,
        on_result: Callable[[str, bool], None],
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.max_block_s = max_block_s
        self.on_result = on_result

    def write_batch(self, items: list[AlertLike]) -> None:
        for alert in items:
            self._produce(alert)
        self.producer.poll(0)

    def _produce(self, alert: AlertLike) -> None:
        deadline = time.monotonic() + self.max_block_s
        status = alert.status

        def done(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                log.error("alert not delivered (%s): %s", status, err.str())
            self.on_result(status, err is None)

        while True:
            try:
                self.producer.produce(
                    self.topic, value=alert.to_json_bytes(), key=alert.key, on_delivery=done
                )
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    log.error(
                        "alert queue full for %.0fs; dropping one %s alert",
                        self.max_block_s,
                        status,
                    )
                    self.on_result(status, False)
                    return
                self.producer.poll(0.1)

    def close(self) -> None:
        self.producer.flush(10)


@dataclass
class AlertSink(DynamicSink[AlertLike]):
    """Publishes alerts as JSON, keyed by fingerprint.

    Args:
        client_config: librdkafka settings.
        topic: the alert topic.
        delivery_timeout_ms: how long librdkafka keeps retrying one alert (with backoff).
        max_block_s: the longest the pipeline waits on a full local queue.
        on_result: callback ``(status, delivered)`` for metrics.
    """

    client_config: Mapping[str, str]
    topic: str
    delivery_timeout_ms: int = 120_000
    max_block_s: float = 5.0
    on_result: Callable[[str, bool], None] = field(default=lambda status, ok: None)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        """One idempotent producer per worker."""
        conf: dict[str, Any] = {
            **self.client_config,
            "enable.idempotence": "true",
            "delivery.timeout.ms": str(self.delivery_timeout_ms),
            "retry.backoff.ms": "200",
            "retry.backoff.max.ms": "5000",
            "linger.ms": "5",
            "queue.buffering.max.messages": "10000",
            "log_level": "3",
        }
        return _AlertPartition(Producer(conf), self.topic, self.max_block_s, self.on_result)


def tail(
    client_config: Mapping[str, str],
    topic: str,
    *,
    from_beginning: bool = True,
    idle_timeout_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield alerts from every partition of the topic (manual assignment: no group join).

    Stops after ``idle_timeout_s`` without a new alert, or never when ``None``.
    """
    conf = {
        # Alerts are few: a short fetch wait costs little, and a broker that answers a fetch
        # only when the wait expires (tansu) would otherwise hold each alert up to 500 ms.
        "fetch.wait.max.ms": "100",
        **client_config,
        "group.id": "spanpulse-tail",
        "enable.auto.commit": "false",
        "log_level": "3",
    }
    consumer = Consumer(conf)
    try:
        md = consumer.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        start = -2 if from_beginning else -1  # OFFSET_BEGINNING / OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in parts])
        last = time.monotonic()
        while idle_timeout_s is None or time.monotonic() - last < idle_timeout_s:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            last = time.monotonic()
            value = msg.value()
            if value:
                yield json.loads(value)
    finally:
        consumer.close()

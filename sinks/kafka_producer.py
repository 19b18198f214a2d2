"""Bulk producing to Kafka (traffic generator, tests, demo) with delivery accounting."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer


class ProduceError(RuntimeError):
    """Some messages could not be delivered."""


@dataclass
class BulkProducer:
    """A producer that counts deliveries and fails loudly instead of dropping silently.

    Args:
        client_config: librdkafka settings (at least ``bootstrap.servers``).
        max_message_bytes: producer-side message size limit.
    """

    client_config: Mapping[str, str]
    max_message_bytes: int = 20_000_000
    delivered: int = 0
    errors: list[str] = field(default_factory=list)
    _producer: Producer | None = field(default=None, init=False, repr=False)

    def _get(self) -> Producer:
        if self._producer is None:
            conf: dict[str, Any] = {
                **self.client_config,
                "linger.ms": "20",
                "batch.num.messages": "10000",
                "queue.buffering.max.messages": "200000",
                "message.max.bytes": str(self.max_message_bytes),
                "log_level": "3",
            }
            self._producer = Producer(conf)
        return self._producer

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.delivered += 1
        elif len(self.errors) < 20:
            self.errors.append(err.str())

    def send(
        self,
        topic: str,
        values: Iterable[bytes],
        *,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> int:
        """Queue messages (round-robin partitions unless ``partition``/``key`` is given)."""
        p = self._get()
        n = 0
        for value in values:
            kwargs: dict[str, Any] = {"value": value, "on_delivery": self._on_delivery}
            if key is not None:
                kwargs["key"] = key
            if partition is not None:
                kwargs["partition"] = partition
            while True:
                try:
                    p.produce(topic, **kwargs)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
            n += 1
        return n

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait for every queued message; raise :class:`ProduceError` if any failed."""
        if self._producer is None:
            return self.delivered
        left = self._producer.flush(timeout_s)
        if left or self.errors:
            msg = f"{left} messages still queued, {len(self.errors)} failed: {'; '.join(self.errors[:3])}"
            raise ProduceError(msg)
        return self.delivered

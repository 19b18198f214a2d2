"""Kafka input: one Bytewax source partition per Kafka partition, emitting whole batches.

Why not ``bytewax.connectors.kafka.KafkaSource``: we need (a) one item per poll (a whole
:class:`RawBatch`), (b) heartbeats while a partition is idle so its watermark can advance,
(c) an explicit end-of-partition marker for bounded ``--until-caught-up`` runs, and (d) the
consumer lag.  Like Bytewax's source, partitions are assigned manually (no consumer group, no
join delay) and the next offset is the recoverable state, so recovery is exactly-once for
internal state.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from spanpulse.schemas.batch import RawBatch
from spanpulse.schemas.decode import Message

log = logging.getLogger(__name__)

#: librdkafka's ``receive.message.max.bytes`` for the input consumers: its largest value.
#: A fetch response larger than this is refused and the consumer retries the same offset
#: forever (the default, 100 MB, stalled a partition on a 120 MB message).  Any message the
#: broker accepted must be readable so the decoder can dead-letter it (``message_too_large``);
#: the memory is only taken when such a message arrives.  ``[kafka.properties]`` overrides it.
RECEIVE_MESSAGE_MAX_BYTES = 2_147_483_647


class SourceError(RuntimeError):
    """The input cannot be read (unreachable broker, missing topic): a one-line reason."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def list_partitions(
    client_config: Mapping[str, str], topics: Sequence[str], timeout_s: float = 10.0
) -> list[tuple[str, int]]:
    """Return ``(topic, partition)`` pairs, failing fast with an actionable message."""
    conf: dict[str, str | int | float | bool] = {**client_config, "log_level": 0}
    admin = AdminClient(conf)
    bootstrap = conf.get("bootstrap.servers", "?")
    try:
        md = admin.list_topics(timeout=timeout_s)
    except Exception as err:
        msg = (
            f"cannot reach Kafka at {bootstrap} within {timeout_s:.0f}s ({err}); "
            "check kafka.bootstrap_servers and the kafka.properties security settings"
        )
        raise SourceError(msg) from err
    out: list[tuple[str, int]] = []
    for topic in topics:
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            why = "does not exist" if tmd is None else str(tmd.error)
            msg = f"input topic {topic!r} {why} on {bootstrap}; create it or fix [[inputs]] topic"
            raise SourceError(msg)
        out.extend((topic, p) for p in sorted(tmd.partitions))
    return out


#: Set by the runner on SIGTERM/SIGINT; every source partition in the process stops reading.
STOP_REQUESTED = threading.Event()


@dataclass
class BrokerHealth:
    """Broker reachability shared by a source's partitions, and the stop request.

    ``on_change`` is called once per change (metrics and one log line, not one per retry).
    ``stopping`` is set by the runner on SIGTERM/SIGINT: partitions stop reading, the dataflow
    drains what is in flight and ends (open windows stay in the recovery state).
    """

    on_change: Callable[[bool], None] = lambda up: None
    up: bool = True
    _known: bool = False

    @property
    def stopping(self) -> threading.Event:
        """The process-wide stop request (Bytewax copies sources, so it cannot live on them)."""
        return STOP_REQUESTED

    def report(self, up: bool) -> None:
        """Record the broker state; notify on change."""
        if up != self.up or not self._known:
            self.up, self._known = up, True
            self.on_change(up)


@dataclass
class _Partition(StatefulSourcePartition[RawBatch, int]):
    consumer: Consumer
    topic: str
    partition: int
    encoding: str
    next_offset: int
    batch_size: int
    heartbeat_ms: int
    idle_poll_s: float
    clock: Callable[[], int]
    on_error: Callable[[str], None]
    bounded: bool = False
    health: BrokerHealth = field(default_factory=lambda: BrokerHealth())
    _reached_end: bool = False
    _last_emit_ms: int = 0
    _eof_sent: bool = False
    _idle_until: datetime | None = None

    @property
    def partition_id(self) -> str:
        return f"{self.topic}#{self.partition}"

    def next_batch(self) -> list[RawBatch]:
        if self._eof_sent or self.health.stopping.is_set():
            raise StopIteration
        # Never block: the worker thread that polls here also runs every downstream step, and
        # ``consume`` with a timeout waits the whole timeout unless ``batch_size`` messages
        # arrive (50 ms per partition per round, measured).  librdkafka fetches in its own
        # thread, so what is already queued is taken at once; an empty partition is polled
        # again after ``idle_poll_s`` (``next_awake``) instead.
        msgs = self.consumer.consume(self.batch_size, 0)
        out: list[Message] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._reached_end = True
                else:
                    self.on_error(f"{self.partition_id}: {err.str()}")
                continue
            off = int(m.offset() or 0)
            ts_type, ts = m.timestamp()
            out.append(
                Message(
                    m.value(), self.topic, self.partition, off, ts if ts_type else None, m.key()
                )
            )
            self.next_offset = off + 1
        now = self.clock()
        self._idle_until = None
        if msgs:
            self.health.report(True)
        if out:
            return [self._emit(out, eof=self._at_end())]
        if self._at_end():
            return [self._emit([], eof=True)]
        self._idle_until = datetime.now(UTC) + timedelta(seconds=self.idle_poll_s)
        if now - self._last_emit_ms >= self.heartbeat_ms:
            return [self._emit([], eof=False)]
        return []

    def _at_end(self) -> bool:
        # Bounded runs end at the first end-of-partition event: the consumer has caught up with
        # the partition's high watermark as the broker reports it in fetch responses.  (ListOffsets
        # is not used for this: the embedded test broker answers it inaccurately.)
        return self.bounded and self._reached_end

    def _emit(self, messages: list[Message], *, eof: bool) -> RawBatch:
        now = self.clock()
        self._last_emit_ms = now
        self._eof_sent = eof
        lag = self._lag()
        # An unknown lag (no fetch response yet, e.g. just after a restart) is not "caught up":
        # silence then means the fetch is pending, not that the partition is idle.
        caught_up = self.health.up and not messages and lag == 0
        return RawBatch(self.partition_id, self.encoding, messages, now, eof, lag, caught_up)

    def _lag(self) -> int | None:
        try:
            _low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, self.partition), cached=True
            )
        except Exception:  # statistics not yet available
            return None
        return max(0, high - self.next_offset) if high >= 0 else None

    def next_awake(self) -> datetime | None:
        return self._idle_until

    def snapshot(self) -> int:
        return self.next_offset

    def close(self) -> None:
        self.consumer.close()


@dataclass
class SpanSource(FixedPartitionedSource[RawBatch, int]):
    """Reads the configured input topics; one Bytewax partition per Kafka partition.

    Args:
        client_config: librdkafka settings (bootstrap servers, security).
        topics: ``{topic: encoding}``.
        batch_size: maximum messages per poll.
        start_from: ``earliest`` or ``latest`` when there is no recovery state.
        bounded: stop each partition once it has caught up with its end (``--until-caught-up``).
        heartbeat_ms: how often an idle partition reports, so watermarks advance.
        idle_poll_s: how long a partition with nothing queued waits before it is polled again
            (a poll never blocks the worker; this bounds how late new data is noticed).
    """

    client_config: Mapping[str, str]
    topics: Mapping[str, str]
    batch_size: int = 5000
    start_from: str = "earliest"
    bounded: bool = False
    heartbeat_ms: int = 1000
    idle_poll_s: float = 0.02
    clock: Callable[[], int] = _now_ms
    on_error: Callable[[str], None] = field(default=lambda m: log.warning("kafka: %s", m))
    health: BrokerHealth = field(default_factory=lambda: BrokerHealth())
    _parts: list[tuple[str, int]] | None = field(default=None, init=False, repr=False)

    def _error_cb(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.report(False)
        self.on_error(err.str())

    def _stats_cb(self, stats_json: str) -> None:
        """Broker reachability from librdkafka's statistics (every ``statistics.interval.ms``).

        A single dropped idle connection is not an outage; "no known broker is UP" is.
        """
        try:
            brokers = json.loads(stats_json).get("brokers", {}).values()
        except ValueError:
            return
        known = [b for b in brokers if b.get("nodeid", -1) >= 0]
        if known:
            self.health.report(any(b.get("state") == "UP" for b in known))

    def partitions(self) -> list[tuple[str, int]]:
        """Return (and cache) the partitions of every input topic."""
        if self._parts is None:
            self._parts = list_partitions(self.client_config, list(self.topics))
        return self._parts

    def partition_ids(self) -> frozenset[str]:
        """Return every ``topic#partition`` id (the window closer waits for all of them)."""
        return frozenset(f"{t}#{p}" for t, p in self.partitions())

    def list_parts(self) -> list[str]:
        """List Bytewax partition keys."""
        return sorted(self.partition_ids())

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        """Open a consumer assigned to one partition, at the resumed offset if any."""
        topic, _, part = for_part.rpartition("#")
        conf = {
            "receive.message.max.bytes": str(RECEIVE_MESSAGE_MAX_BYTES),
            **self.client_config,
            "group.id": "spanpulse-unused",  # manual assignment; offsets live in recovery state
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "enable.partition.eof": "true" if self.bounded else "false",
            "statistics.interval.ms": "2000",
            "fetch.wait.max.ms": "50",
            "log_level": "3",
            "error_cb": self._error_cb,
            "stats_cb": self._stats_cb,
        }
        consumer = Consumer(conf)
        start = resume_state
        if start is None:
            start = OFFSET_BEGINNING if self.start_from == "earliest" else OFFSET_END
        tp = TopicPartition(topic, int(part), start)
        if start in (OFFSET_BEGINNING, OFFSET_END):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, int(part)), timeout=10)
            start = low if start == OFFSET_BEGINNING else high
        consumer.assign([tp])
        return _Partition(
            consumer, topic, int(part), self.topics[topic], start, self.batch_size,
            self.heartbeat_ms, self.idle_poll_s, self.clock, self.on_error, self.bounded,
        )  # fmt: skip

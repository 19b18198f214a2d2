"""When an empty poll may count as "caught up" (the condition for a partition to turn idle)."""

from __future__ import annotations

from dataclasses import dataclass

from spanpulse.sinks.kafka_source import _Partition


@dataclass
class _Consumer:
    """The two calls ``_Partition`` makes when nothing is fetched; ``high`` < 0: not known yet."""

    high: int

    def consume(self, n: int, timeout: float) -> list[object]:
        return []

    def get_watermark_offsets(self, tp: object, cached: bool = False) -> tuple[int, int]:
        return (0, self.high)


def _part(high: int, next_offset: int) -> _Partition:
    return _Partition(
        _Consumer(high), "spans", 0, "otlp_proto", next_offset, 100, heartbeat_ms=0,
        idle_poll_s=0.02, clock=lambda: 1_000, on_error=lambda _m: None,
    )  # fmt: skip


def test_an_unknown_end_offset_is_not_caught_up():
    # Just after a (re)start no fetch response has told librdkafka the partition's end yet.
    (batch,) = _part(high=-1001, next_offset=5).next_batch()
    assert batch.lag is None and not batch.caught_up


def test_caught_up_needs_a_known_lag_of_zero():
    (behind,) = _part(high=9, next_offset=5).next_batch()
    assert behind.lag == 4 and not behind.caught_up
    (done,) = _part(high=5, next_offset=5).next_batch()
    assert done.lag == 0 and done.caught_up

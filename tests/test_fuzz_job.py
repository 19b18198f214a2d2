"""Hostile input through the whole job against a real broker: one short round of the fuzz drill.

Valid traffic, the hand-made corpus (tests/corpus) and ~900 generated hostile messages go into
topics of all three encodings, plus one 12 MB message (over the decoder's 10 MB limit; its
dead letter, base64 inside JSON, still fits the dead-letter producer's 20 MB).  The job runs
in-process until caught up and is checked exactly against an oracle (the same decoders over the
same messages): messages consumed == produced; spans seen == rolled up + skipped + span dead
letters; the Parquet rollups hold every record; the dead-letter topic holds one envelope per
dead letter with its reason and origin.  See drills/fuzz_long.py and docs/fuzzing.md.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from drills.fuzz_long import run_round
from spanpulse.broker import EmbeddedBroker

pytestmark = pytest.mark.integration

SEED = 20_251_124
OVER_DECODER_LIMIT = 12_000_000
NEAR_PRODUCER_LIMIT = 19_500_000  # BulkProducer and the dead-letter producer: 20 MB
#: Every dead-letter reason; the corpus alone produces each of them.
REASONS = {
    "empty_message", "message_too_large", "protobuf_decode_error", "json_decode_error",
    "schema_violation", "bad_attribute_type", "non_finite_value", "negative_tokens",
    "absurd_tokens", "negative_cost", "absurd_cost", "negative_duration",
    "timestamp_out_of_range", "end_before_start",
}  # fmt: skip


def _random(size: int) -> bytes:
    return b"\x0f" + random.Random(size).randbytes(size - 1)  # wire type 7: never protobuf


def test_job_accounts_for_every_hostile_message(broker: EmbeddedBroker, tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = run_round(
        broker.bootstrap, tmp_path, SEED, hostile_per_encoding=300,
        extra={"otlp_proto": [_random(OVER_DECODER_LIMIT)]}, stall_after_s=120,
    )  # fmt: skip
    assert res.failures == [], json.dumps(res.failures, indent=1)
    stats = res.stats
    assert stats["messages"] == res.produced > 1000
    assert stats["records"] == res.rolled_up_calls > 1000
    assert res.dlq_records == sum(stats["dead_letters"].values()) > 500
    assert stats["dead_letters"]["message_too_large"] == 1
    assert set(stats["dead_letters"]) == REASONS
    generated = {kind.split("/")[1] for kind, n in res.kinds.items() if n}
    assert {"wrong_types", "shape", "surrogate", "random_fields", "flip", "truncate"} <= generated
    assert res.peak_growth_mb < 500, f"peak RSS grew by {res.peak_growth_mb} MB"
    assert time.monotonic() - t0 < 90


def test_message_near_the_producer_limit(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """A 19.5 MB message (tansu accepts even 120 MB) is consumed and dead-lettered."""
    res = run_round(
        broker.bootstrap, tmp_path, SEED + 1, hostile_per_encoding=20, minutes=1, big=False,
        extra={"otlp_proto": [_random(NEAR_PRODUCER_LIMIT)]}, payloads=False, stall_after_s=60,
    )  # fmt: skip
    assert res.failures == [], res.failures
    assert res.stats["dead_letters"]["message_too_large"] == 1


def test_dead_letter_payload_of_a_near_limit_message(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    res = run_round(
        broker.bootstrap, tmp_path, SEED + 2, hostile_per_encoding=20, minutes=1, big=False,
        extra={"otlp_proto": [_random(NEAR_PRODUCER_LIMIT)]}, payloads=True, stall_after_s=60,
    )  # fmt: skip
    assert not [f for f in res.failures if f.startswith("job crashed")], res.failures
    # whether the oversized payload is kept or dropped is the fix's choice; the letter must exist
    assert res.stats["dead_letters"]["message_too_large"] == 1
    assert res.dlq_records == sum(res.stats["dead_letters"].values())


def test_llm_call_without_trace_id(broker: EmbeddedBroker, tmp_path: Path) -> None:
    no_trace = json.dumps({"end_time": int(time.time() * 1000) - 60_000, "model": "gpt-4o"})
    res = run_round(
        broker.bootstrap, tmp_path, SEED + 3, hostile_per_encoding=0, minutes=1, big=False,
        extra={"span_json": [no_trace.encode()]}, keep_traceless=True, stall_after_s=60,
    )  # fmt: skip
    assert not [f for f in res.failures if f.startswith("job crashed")], res.failures
    assert res.failures == [], res.failures


def test_message_over_the_consumer_default_receive_limit(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A 120 MB message (over librdkafka's 100 MB default response size; tansu accepts it) is
    dead-lettered, and the messages around it are rolled up: the partition does not stall."""
    import subprocess
    import sys
    import uuid

    from confluent_kafka import Producer

    from spanpulse.broker import create_topics

    tag = uuid.uuid4().hex[:8]
    topic, dlq = f"big-{tag}", f"big-dlq-{tag}"
    create_topics(broker.bootstrap, [topic, dlq, f"big-alerts-{tag}"], partitions=1)
    end_ms = int(time.time() * 1000) - 120_000

    def call(i: int) -> bytes:
        span = {"end_time": end_ms + i, "model": "gpt-4o", "input_tokens": 5, "output_tokens": 3,
                "trace_id": f"{i + 1:032x}", "span_id": f"{i + 1:016x}", "tenant": "acme"}  # fmt: skip
        return json.dumps(span).encode()

    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 200_000_000})
    for i in range(3):
        producer.produce(topic, call(i))
    producer.produce(topic, b"{" + b"x" * 120_000_000)
    for i in range(3, 6):
        producer.produce(topic, call(i))
    assert producer.flush(30) == 0
    del producer
    cfg = tmp_path / "spanpulse.toml"
    cfg.write_text(
        f'[kafka]\nbootstrap_servers = "{broker.bootstrap}"\ndead_letter_topic = "{dlq}"\n'
        f'alert_topic = "big-alerts-{tag}"\n[[inputs]]\ntopic = "{topic}"\nencoding = "span_json"\n'
        f'[rollups]\noutput_dir = "{tmp_path / "out"}"\n[metrics]\nport = 0\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "spanpulse.cli", "run", "--config", str(cfg), "--until-caught-up"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    totals = json.loads(proc.stdout.strip().splitlines()[-1])
    assert totals["messages"] == 7
    assert totals["dead_letters"] == {"message_too_large": 1}
    assert totals["rolled_up_calls"] == 6

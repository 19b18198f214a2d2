"""Prompt and completion content never reaches rollups, metrics, logs, dead letters (when payloads
are off) or the alert topic: spans full of content carrying a canary string go through the job and
the canary must appear nowhere in what it writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest
from bytewax.run import cli_main
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from spanpulse.config import from_mapping
from spanpulse.flows.job import build_job
from spanpulse.schemas.encode import CANARY, encode_calls
from spanpulse.schemas.traffic import TrafficModel
from spanpulse.sinks.kafka_producer import BulkProducer

pytestmark = pytest.mark.integration
START_MS = 1_790_000_000_000 - (1_790_000_000_000 % 60_000)


def _all_strings(root: Path) -> list[str]:
    out: list[str] = [str(p) for p in root.rglob("*")]
    for f in root.rglob("*.parquet"):
        df = pl.read_parquet(f)
        for name, dtype in df.schema.items():
            out.append(name)
            if dtype == pl.String:
                out.extend(v for v in df[name].drop_nulls().to_list())
            elif dtype == pl.List(pl.String):
                out.extend(v for lst in df[name].drop_nulls().to_list() for v in lst)
    return out


def _topic_values(bootstrap: str, topic: str) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "canary", "log_level": 0})
    md = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, -2) for p in md.topics[topic].partitions])
    out, idle = [], 0
    while idle < 8:
        m = c.poll(0.2)
        if m is None:
            idle += 1
            continue
        if m.error() is None:
            out.append((m.key() or b"") + b"|" + (m.value() or b""))
    c.close()
    return out


def test_canary_from_content_attributes_appears_nowhere(
    broker, topic_factory, tmp_path, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    proto, flat = topic_factory("canary-proto", 2), topic_factory("canary-flat", 1)
    dlq, alerts = topic_factory("canary-dlq"), topic_factory("canary-alerts")
    calls = TrafficModel(seed=5, tenants=20, rate_per_s=5.0).calls(START_MS, 8 * 60)
    producer = BulkProducer({"bootstrap.servers": broker.bootstrap})
    for conv in ("otel", "traceloop_legacy", "traceloop", "openinference", "anthropic_native"):
        producer.send(
            proto, encode_calls(calls, "otlp_proto", convention=conv, include_content=True)
        )
    flat_values = [
        json.dumps(json.loads(v) | {"prompt": f"{CANARY} in an unknown field"}).encode()
        for v in encode_calls(calls.head(200), "span_json")
    ]
    producer.send(flat, flat_values)
    # Malformed messages that contain the canary: dead letters must not carry it with payloads off.
    producer.send(proto, [b"\x0a\xff" + CANARY.encode()])
    producer.send(
        flat,
        [
            json.dumps({"end_time": "bad", "model": "gpt-4o", "prompt": CANARY}).encode(),
            b"{" + CANARY.encode(),
        ],
    )
    producer.flush()

    out = tmp_path / "rollups"
    settings = from_mapping({
        "kafka": {"bootstrap_servers": broker.bootstrap, "dead_letter_topic": dlq, "alert_topic": alerts},
        "inputs": [{"topic": proto, "encoding": "otlp_proto"}, {"topic": flat, "encoding": "span_json"}],
        "rollups": {"output_dir": str(out)},
        "dead_letter": {"include_payload": False},
        "metrics": {"port": 0},
    })  # fmt: skip
    registry = CollectorRegistry()
    job = build_job(settings, bounded=True, registry=registry)
    cli_main(job.flow)

    stats = job.observer.stats.as_dict()
    assert stats["records"] > 0 and sum(stats["dead_letters"].values()) == 3
    strings = _all_strings(out)
    assert len(strings) > 100
    assert not [s for s in strings if CANARY in s]
    assert CANARY not in generate_latest(registry).decode()
    dead = _topic_values(broker.bootstrap, dlq)
    assert len(dead) == 3
    assert not [d for d in dead if CANARY.encode() in d]
    assert not [a for a in _topic_values(broker.bootstrap, alerts) if CANARY.encode() in a]
    captured = capfd.readouterr()
    assert CANARY not in captured.out + captured.err
    assert CANARY not in caplog.text

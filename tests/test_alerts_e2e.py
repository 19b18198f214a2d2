"""An injected incident produces a firing and then a resolved alert on the real alert topic,
with the right dimensions, exemplar trace ids and contributors."""

from __future__ import annotations

import argparse

import jsonschema
import pytest

from spanpulse.cli import generate_to_kafka, run_job
from spanpulse.config import from_mapping
from spanpulse.schemas.alert import load_alert_schema
from spanpulse.sinks.alerts import tail

pytestmark = pytest.mark.integration

SCENARIO = """
name = "e2e_length_spike"
seed = 5
start = "2025-03-04T09:00:00Z"
duration = "100m"
tenants = 60
rate = 15.0

[[incident]]
kind = "length_spike"
start = "60m"
duration = "20m"
target = { model = "gpt-4o" }
magnitude = 0.3
"""


def test_incident_fires_then_resolves_on_the_alert_topic(broker, topic_factory, tmp_path):
    spans, dlq, alerts_topic = (
        topic_factory("al-spans", 2),
        topic_factory("al-dlq"),
        topic_factory("al-alerts"),
    )
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    ns = argparse.Namespace(
        scenario=scenario,
        encoding="otlp_proto",
        convention="otel",
        topic=spans,
        realtime=False,
        labels_out=None,
    )
    generate_to_kafka(ns, {"bootstrap.servers": broker.bootstrap})
    settings = from_mapping({
        "kafka": {"bootstrap_servers": broker.bootstrap, "dead_letter_topic": dlq, "alert_topic": alerts_topic},
        "inputs": [{"topic": spans}], "rollups": {"output_dir": str(tmp_path / "rollups")}, "metrics": {"port": 0},
    })  # fmt: skip
    run_job(settings, bounded=True, quiet=True)
    alerts = list(tail({"bootstrap.servers": broker.bootstrap}, alerts_topic, idle_timeout_s=3))
    assert alerts, "no alert at all"
    schema = load_alert_schema()
    for a in alerts:
        jsonschema.validate(a, schema)
    hits = [
        a
        for a in alerts
        if a["metric"] == "length_share" and a["dimensions"] == {"model": "gpt-4o"}
    ]
    firing = [a for a in hits if a["status"] == "firing"]
    assert firing, [(a["metric"], a["dimensions"]) for a in alerts if a["status"] == "firing"][:20]
    first = firing[0]
    # Detected within 3 windows of the incident start (10:00Z), never before it.
    assert "2025-03-04T10:00:00Z" <= first["window_start"] <= "2025-03-04T10:03:00Z", first[
        "window_start"
    ]
    assert first["observed"] > first["expected"]
    assert first["exemplar_trace_ids"] and all(len(t) == 32 for t in first["exemplar_trace_ids"])
    assert first["contributors"] and all("tenant" in c["dimensions"] for c in first["contributors"])
    assert first["message"] and first["next_step"]
    resolved = [
        a for a in hits if a["status"] == "resolved" and a["fingerprint"] == first["fingerprint"]
    ]
    assert resolved, "the alert never resolved after the incident ended"
    assert resolved[0]["window_start"] >= "2025-03-04T10:20:00Z"
    # The id is deterministic from fingerprint + window + status: re-deliveries are recognizable.
    assert len({a["id"] for a in alerts}) == len(alerts)

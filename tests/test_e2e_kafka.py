"""End to end through the real broker: generate -> Kafka -> `spanpulse run` -> Parquet -> `spanpulse query`.

Every attribute convention in all three encodings goes through Kafka and the job; the rollups
must equal totals recomputed independently from the generated calls (calls, tokens, finish
classes exactly; cost from per-call ``genai_prices.calc_price`` within one nano-dollar per call;
quantiles from merged histograms within the histogram's stated relative error), and every
malformed message must be in the dead-letter topic with its reason and origin.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
import polars as pl
import pytest
from confluent_kafka import Consumer, TopicPartition
from genai_prices import Usage, calc_price

from spanpulse.schemas.encode import encode_calls
from spanpulse.schemas.histogram import RELATIVE_ERROR
from spanpulse.schemas.traffic import TrafficModel
from spanpulse.sinks.kafka_producer import BulkProducer

pytestmark = pytest.mark.integration

START_MS = 1_790_000_000_000 - (1_790_000_000_000 % 60_000)
CONVENTIONS = (
    "otel",
    "otel_deprecated",
    "traceloop_legacy",
    "traceloop",
    "openinference",
    "anthropic_native",
)
# Independent expectation of the normalized finish class for each raw reason the generator emits.
FINISH = {
    "stop": "stop", "end_turn": "stop", "stop_sequence": "stop",
    "length": "length", "max_tokens": "length",
    "tool_calls": "tool_calls", "tool_use": "tool_calls",
    "content_filter": "content_filter", "refusal": "content_filter", "safety": "content_filter",
}  # fmt: skip


def _expected_class(reason: str | None, is_error: bool) -> str:
    if reason is None:
        return "error" if is_error else "other"
    return FINISH.get(reason.lower(), "other")


def _nanos(row: dict) -> int:
    # genai-prices' Usage.input_tokens is the total input including cache reads; use the cache
    # read count the span actually carried (some instrumentations drop it, see `cached`).
    # The Anthropic SDK's native spans also report cache writes (priced higher); the encoder
    # writes half of a quarter of long uncached prompts (schemas/encode.anthropic_cache_write).
    write = 0
    if (
        row["conv"] == "anthropic_native"
        and row["provider"] == "anthropic"
        and not row["cached"]
        and row["input_tokens"] >= 2048
        and int(row["span_id"][-2], 16) < 4
    ):
        write = row["input_tokens"] // 2
    usage = Usage(
        input_tokens=row["input_tokens"],
        cache_read_tokens=row["cached"],
        cache_write_tokens=write,
        output_tokens=row["output_tokens"],
    )
    when = datetime.fromtimestamp(row["end_time_ms"] / 1000, UTC)
    price = calc_price(
        usage, model_ref=row["model"], provider_id=row["provider"], genai_request_timestamp=when
    )
    return int((price.total_price * Decimal(10**9)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _consume_all(bootstrap: str, topic: str) -> list:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": "false"})
    md = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, -2) for p in md.topics[topic].partitions])
    out, idle = [], 0
    while idle < 10:
        m = c.poll(0.2)
        if m is None:
            idle += 1
            continue
        idle = 0
        if m.error() is None:
            out.append(m)
    c.close()
    return out


def _query(root, sql: str) -> list[dict]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spanpulse.cli",
            "query",
            "--rollups",
            str(root),
            "--format",
            "json",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def e2e(broker, tmp_path_factory):
    """Produce every convention in every encoding plus malformed messages, run the job once."""
    import uuid

    from spanpulse.broker import create_topics

    tag = uuid.uuid4().hex[:8]
    topics = {"otlp_proto": f"proto-{tag}", "otlp_json": f"json-{tag}", "span_json": f"flat-{tag}"}
    dlq, alerts = f"dlq-{tag}", f"alerts-{tag}"
    create_topics(broker.bootstrap, list(topics.values()), partitions=3)
    create_topics(broker.bootstrap, [dlq, alerts], partitions=1)

    calls = TrafficModel(seed=11, tenants=60, rate_per_s=12.0).calls(START_MS, 20 * 60)
    calls = calls.with_row_index("i")
    producer = BulkProducer({"bootstrap.servers": broker.bootstrap})
    kept = []
    messages = 0
    slices = [(enc, conv) for enc in ("otlp_proto", "otlp_json") for conv in CONVENTIONS] + [
        ("span_json", "otel")
    ]
    for k, (enc, conv) in enumerate(slices):
        part = calls.filter(pl.col("i") % len(slices) == k).drop("i")
        values = encode_calls(part, enc, convention=conv, spans_per_message=50)
        messages += producer.send(topics[enc], values)
        if (
            conv == "traceloop_legacy"
        ):  # legacy Traceloop emits no span for failed Anthropic calls (S12)
            part = part.filter(~(pl.col("is_error") & (pl.col("provider") == "anthropic")))
        kept.append(part.with_columns(pl.lit(conv).alias("conv")))
    bad = {
        "otlp_proto": [b"\x0a\x05\xff\xff\xff", b""],
        "otlp_json": [b'{"resourceSpans": 7}', b"\xff\xfe not utf-8"],
        "span_json": [
            b'{"end_time": "2026-01-01T00:00:00Z", "model": "gpt-4o", "input_tokens": -5}'
        ],
    }
    for enc, values in bad.items():
        messages += producer.send(topics[enc], values, partition=0)
    producer.flush()
    expected = pl.concat(kept)

    root = tmp_path_factory.mktemp("rollups")
    cfg = root / "spanpulse.toml"
    inputs = "\n".join(f'[[inputs]]\ntopic = "{t}"\nencoding = "{e}"\n' for e, t in topics.items())
    cfg.write_text(
        f'[kafka]\nbootstrap_servers = "{broker.bootstrap}"\ndead_letter_topic = "{dlq}"\nalert_topic = "{alerts}"\n'
        f'{inputs}\n[rollups]\noutput_dir = "{root / "out"}"\n[metrics]\nport = 0\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "spanpulse.cli", "run", "--config", str(cfg), "--until-caught-up"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    totals = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "totals": totals,
        "expected": expected,
        "root": root / "out",
        "messages": messages,
        "bad": bad,
        "topics": topics,
        "dlq": dlq,
        "bootstrap": broker.bootstrap,
    }


def test_every_message_and_span_is_accounted_for(e2e):
    t = e2e["totals"]
    assert t["status"] == "caught_up"
    assert t["messages"] == e2e["messages"]
    n_bad = sum(len(v) for v in e2e["bad"].values())
    assert sum(t["dead_letters"].values()) == n_bad
    assert (
        t["spans_seen"] == t["records"] + sum(t["skipped"].values()) + 1
    )  # the one rejected span_json record
    assert t["records"] == e2e["expected"].height
    # Each convention's slice repeats the same 20 minutes on the topic, so the second and later
    # slices are late for their partition (judged per record, whatever the batch cuts): every
    # record is either in an on-time window or in a late-rows file, never both or neither.
    assert t["late_calls"] > 0
    assert t["rolled_up_calls"] + t["late_calls"] == t["records"]


def test_rollups_equal_independent_recomputation(e2e):
    # The official openai-v2 instrumentation's default (deprecated-names) mode drops cached and
    # reasoning token details (reference S2); the encoder reproduces that, so expect zeros there.
    drops_details = pl.col("conv") == "otel_deprecated"
    exp = (
        e2e["expected"]
        .with_columns(
            pl.struct("finish_reason", "is_error")
            .map_elements(
                lambda s: _expected_class(s["finish_reason"], s["is_error"]), return_dtype=pl.String
            )
            .alias("cls"),
            pl.when(drops_details).then(0).otherwise(pl.col("cached_input_tokens")).alias("cached"),
            pl.when(drops_details).then(0).otherwise(pl.col("reasoning_tokens")).alias("reasoning"),
        )
        .with_columns(
            (pl.col("refusal") | (pl.col("cls") == "content_filter")).alias("is_refusal"),
            (pl.col("parse_ok") == False).fill_null(False).alias("parse_failed"),  # noqa: E712
        )
    )
    rows = _query(
        e2e["root"],
        """
        SELECT tenant, sum(calls) AS calls, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cached_input_tokens) AS cached, sum(finish_stop) AS stop, sum(finish_length) AS length,
               sum(finish_tool_calls) AS tool_calls, sum(finish_content_filter) AS content_filter,
               sum(finish_error) AS error, sum(finish_other) AS other, sum(errors) AS errors,
               sum(cost_nanos) AS cost_nanos, sum(unpriced_calls) AS unpriced, sum(reasoning_tokens) AS reasoning,
               sum(refusals) AS refusals, sum(parse_attempts) AS parse_attempts, sum(parse_failures) AS parse_failures
        FROM rollups WHERE grain = 'tenant' GROUP BY tenant ORDER BY tenant""",
    )
    got = {r["tenant"]: r for r in rows}
    want = exp.group_by("tenant").agg(
        pl.len().alias("calls"),
        pl.col("input_tokens").sum(),
        pl.col("output_tokens").sum(),
        pl.col("cached").sum(),
        pl.col("reasoning").sum(),
        pl.col("is_error").sum().alias("errors"),
        pl.col("is_refusal").sum().alias("refusals"),
        pl.col("parse_ok").is_not_null().sum().alias("parse_attempts"),
        pl.col("parse_failed").sum().alias("parse_failures"),
        *[
            (pl.col("cls") == c).sum().alias(c)
            for c in ("stop", "length", "tool_calls", "content_filter", "error", "other")
        ],
    )
    assert set(got) == set(want["tenant"].to_list())
    for w in want.iter_rows(named=True):
        g = got[w["tenant"]]
        for col in (
            "calls",
            "input_tokens",
            "output_tokens",
            "cached",
            "reasoning",
            "errors",
            "stop",
            "length",
            "tool_calls",
            "content_filter",
            "error",
            "other",
            "refusals",
            "parse_attempts",
            "parse_failures",
        ):
            assert g[col] == w[col], (w["tenant"], col, g[col], w[col])
        assert g["unpriced"] == 0
    exp_nanos = sum(_nanos(r) for r in exp.iter_rows(named=True))
    got_nanos = sum(r["cost_nanos"] for r in rows)
    assert abs(got_nanos - exp_nanos) <= exp.height, (got_nanos, exp_nanos)


def test_every_grain_has_the_same_totals(e2e):
    rows = _query(
        e2e["root"],
        "SELECT grain, sum(calls) AS calls, sum(cost_nanos) AS cost FROM rollups GROUP BY grain",
    )
    assert {r["grain"] for r in rows} == {
        "tenant",
        "tenant.model",
        "tenant.feature",
        "model",
        "feature.prompt_version",
        "feature.prompt_version.model",
    }
    assert len({(r["calls"], r["cost"]) for r in rows}) == 1


def test_quantiles_from_merged_histograms_are_within_the_stated_error(e2e):
    exp = e2e["expected"]
    rows = _query(
        e2e["root"],
        """
        SELECT model, hist_quantile(hist_merge(list(input_tokens_hist)), 0.95) AS p95,
               hist_quantile(hist_merge(list(latency_s_hist)), 0.5) AS p50
        FROM rollups WHERE grain = 'tenant.model' GROUP BY model""",
    )
    assert rows
    for r in rows:
        part = exp.filter(pl.col("model") == r["model"])
        # Failed calls report no usage, so they are not in the token histogram (unknown is not 0).
        p95 = np.quantile(
            part.filter(~pl.col("is_error"))["input_tokens"].to_numpy(), 0.95, method="inverted_cdf"
        )
        latency = ((part["end_time_ms"] - part["start_time_ms"]) / 1000).to_numpy()
        p50 = np.quantile(latency, 0.5, method="inverted_cdf")
        assert abs(r["p95"] - p95) <= RELATIVE_ERROR * p95 + 1e-9, (r, p95)
        assert abs(r["p50"] - p50) <= RELATIVE_ERROR * p50 + 1e-9, (r, p50)


def test_malformed_messages_are_dead_lettered_with_reason_and_origin(e2e):
    msgs = _consume_all(e2e["bootstrap"], e2e["dlq"])
    envelopes = [json.loads(m.value()) for m in msgs]
    assert len(envelopes) == sum(len(v) for v in e2e["bad"].values())
    by_topic = {t: enc for enc, t in e2e["topics"].items()}
    for env in envelopes:
        assert env["reason"] and env["stage"] in ("decode", "normalize")
        assert env["topic"] in by_topic and env["partition"] == 0 and env["offset"] >= 0
        if env["stage"] == "decode":  # whole-message failures keep the original bytes
            raw = base64.b64decode(env["payload_b64"]) if env.get("payload_b64") else b""
            assert raw in e2e["bad"][by_topic[env["topic"]]], env
    reasons = {e["reason"] for e in envelopes}
    assert "empty_message" in reasons
    assert "negative_tokens" in reasons

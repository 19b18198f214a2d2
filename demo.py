"""``spanpulse demo``: the whole journey on one machine in under a minute.

Starts the embedded broker, produces 30 simulated minutes of multi-tenant LLM traffic (OTLP
protobuf, exactly what the Collector's kafka exporter writes) plus a few malformed messages,
runs the real job over it until caught up, and prints what a user would ask DuckDB first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spanpulse.broker import EmbeddedBroker, create_topics
from spanpulse.config import from_mapping

_QUERIES = {
    "Cost by tenant (top 5)": """
        SELECT tenant, round(sum(cost_nanos) / 1e9, 4) AS cost_usd, sum(calls) AS calls
        FROM rollups WHERE grain = 'tenant' GROUP BY tenant ORDER BY cost_usd DESC LIMIT 5""",
    "Share of length stops by model": """
        SELECT model, sum(calls) AS calls,
               round(100.0 * sum(finish_length) / sum(calls), 2) AS length_stop_pct
        FROM rollups WHERE grain = 'model' GROUP BY model ORDER BY length_stop_pct DESC""",
    "p95 input tokens by prompt version (merged histograms)": """
        SELECT feature, prompt_version, sum(calls) AS calls,
               round(hist_quantile(hist_merge(list(input_tokens_hist)), 0.95)) AS p95_input_tokens
        FROM rollups WHERE grain = 'feature.prompt_version'
        GROUP BY feature, prompt_version ORDER BY feature, prompt_version""",
}


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; prints a summary and where the files are."""
    from spanpulse.cli import generate_to_kafka, run_job
    from spanpulse.sinks.alerts import tail
    from spanpulse.sinks.kafka_producer import BulkProducer
    from spanpulse.sinks.query import connect, format_table, run_query

    out: Path = args.output
    rollups = out / "rollups"
    shutil.rmtree(rollups, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    say = _printer(t0)
    with EmbeddedBroker(log_path=out / "broker.log") as broker:
        say(f"embedded Kafka broker (tansu) on {broker.bootstrap}")
        create_topics(broker.bootstrap, ["otlp_spans"], partitions=4)
        create_topics(broker.bootstrap, ["spanpulse.deadletter", "spanpulse.alerts"], partitions=1)
        client = {"bootstrap.servers": broker.bootstrap}
        gen = argparse.Namespace(
            scenario=None, start=datetime.now(UTC) - timedelta(seconds=args.duration),
            duration=args.duration, rate=args.rate, tenants=200, seed=args.seed,
            encoding="otlp_proto", convention="mixed", topic="otlp_spans", realtime=False, labels_out=None,
        )  # fmt: skip
        counts = generate_to_kafka(gen, client)
        bad = BulkProducer(client)
        bad.send("otlp_spans", [b"\x0a\xff\xff garbage", b"", b"{not protobuf"])
        bad.flush()
        del bad  # release the client before the broker goes away (no reconnect noise)
        say(
            f"produced {counts['calls']} LLM calls in {counts['messages']} OTLP messages "
            f"(+3 malformed) covering {args.duration / 60:.0f} simulated minutes"
        )
        settings = from_mapping({
            "kafka": {"bootstrap_servers": broker.bootstrap},
            "inputs": [{"topic": "otlp_spans", "encoding": "otlp_proto"}],
            "rollups": {"output_dir": str(rollups)},
            "metrics": {"port": 0},
        })  # fmt: skip
        totals = run_job(settings, bounded=True, quiet=True)
        say(
            f"job caught up: {totals['messages']} messages, {totals['records']} LLM calls rolled into "
            f"{totals['windows']} one-minute windows, skipped {sum(totals['skipped'].values())} non-LLM spans, "
            f"{sum(totals['dead_letters'].values())} dead letters -> topic spanpulse.deadletter"
        )
        alerts = list(tail(client, "spanpulse.alerts", idle_timeout_s=2.0))
        firing = [a for a in alerts if a["status"] == "firing"]
        say(
            f"alert topic spanpulse.alerts: {len(firing)} firing, {len(alerts) - len(firing)} resolved"
        )
        for a in firing[:3]:
            say(f"  {a['severity']}: {a['message']}")
    con = connect(rollups)
    for title, sql in _QUERIES.items():
        cols, rows = run_query(con, sql)  # fixed SQL from this module, no user input
        sys.stdout.write(f"\n{title}\n{format_table(cols, rows)}\n")
    sys.stdout.write(
        f"\nRollups (Parquet, hive-partitioned): {rollups.resolve()}\n"  # noqa: S608 - printed text
        f"Ask your own questions:  spanpulse query --rollups {rollups} "
        '"SELECT grain, count(*), sum(calls) FROM rollups GROUP BY grain"\n'
        f"Done in {time.monotonic() - t0:.1f}s.\n"
    )
    return 0


def _printer(t0: float):  # type: ignore[no-untyped-def]
    def say(text: str) -> None:
        sys.stdout.write(f"[{time.monotonic() - t0:5.1f}s] {text}\n")
        sys.stdout.flush()

    return say

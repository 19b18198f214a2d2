"""Broker faults: an outage mid-stream (connection cut, broker keeps its data) and misconfiguration."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import polars as pl
import pytest

from spanpulse.broker import EmbeddedBroker, create_topics, free_port
from spanpulse.schemas.encode import encode_calls
from spanpulse.schemas.traffic import TrafficModel
from spanpulse.sinks.kafka_producer import BulkProducer
from tests.cli_process import start_cli
from tests.tcp_proxy import CuttableProxy

pytestmark = pytest.mark.integration


def _metric(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _calls_in(root) -> int:
    files = list(root.rglob("*.parquet"))
    if not files:
        return 0
    df = pl.concat(
        [pl.read_parquet(f, hive_partitioning=False) for f in files], how="vertical_relaxed"
    )
    return int(df.filter(pl.col("grain") == "tenant")["calls"].sum())


def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.25)
    return False


def test_outage_mid_stream_then_recovery_loses_and_duplicates_nothing(tmp_path):
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port, log_path=tmp_path / "tansu.log") as broker:
        proxy = CuttableProxy(proxy_port, broker.port)
        try:
            bootstrap = f"127.0.0.1:{proxy_port}"
            create_topics(bootstrap, ["spans"], partitions=2)
            create_topics(bootstrap, ["dlq", "alerts"], partitions=1)
            now_ms = int(time.time() * 1000)
            start = now_ms - 20 * 60_000 - now_ms % 60_000
            first = TrafficModel(seed=3, tenants=15, rate_per_s=2.0).calls(start, 15 * 60)
            producer = BulkProducer({"bootstrap.servers": bootstrap})
            producer.send("spans", encode_calls(first, "otlp_proto", spans_per_message=40))
            producer.flush()
            del producer

            out, mport = tmp_path / "rollups", free_port()
            cfg = tmp_path / "job.toml"
            cfg.write_text(
                f'[kafka]\nbootstrap_servers = "{bootstrap}"\ndead_letter_topic = "dlq"\nalert_topic = "alerts"\n'
                f'[kafka.properties]\n"reconnect.backoff.max.ms" = 1000\n'
                f'[[inputs]]\ntopic = "spans"\n[window]\nlength = "10s"\nallowed_lateness = "0s"\nidle_timeout = "2s"\n'
                f'[rollups]\noutput_dir = "{out}"\n[metrics]\nport = {mport}\naddr = "127.0.0.1"\n'
            )
            job = start_cli("run", "--config", str(cfg), "--status-interval", "1")
            try:
                assert _wait(lambda: _calls_in(out) == first.height, 120), _calls_in(out)
                assert _metric(mport, "spanpulse_broker_up") == 1.0
                cut_ms = int(time.time() * 1000)
                proxy.cut()
                assert _wait(lambda: _metric(mport, "spanpulse_broker_up") == 0.0, 30)
                time.sleep(2)
                assert job.poll() is None, "the job must survive the outage"
                restore_ms = int(time.time() * 1000)
                proxy.restore()
                # Spans produced during the outage reach Kafka afterwards: they must be on time,
                # not late (silence during an outage is not idleness).
                second = TrafficModel(seed=4, tenants=15, rate_per_s=40.0).calls(
                    cut_ms, (restore_ms - cut_ms) / 1000
                )
                producer = BulkProducer({"bootstrap.servers": bootstrap})
                producer.send("spans", encode_calls(second, "otlp_proto", spans_per_message=40))
                producer.flush()
                del producer
                total = first.height + second.height
                ok = _wait(
                    lambda: _calls_in(out) == total, 150
                )  # last window: next minute + idle timeout
                assert ok, (_calls_in(out), total)
                assert _metric(mport, "spanpulse_late_spans_total") in (None, 0.0)
                assert _metric(mport, "spanpulse_broker_up") == 1.0
            finally:
                job.send_signal(signal.SIGTERM)
                _, err = job.communicate(timeout=60)
            assert job.returncode == 0, err.decode()[-2000:]
            assert b"broker unreachable" in err
            assert _calls_in(out) == total  # no duplicate rollups either
        finally:
            proxy.close()


@pytest.mark.parametrize(
    ("toml", "expect"),
    [
        ('[kafka]\nbootstrap_servers = "127.0.0.1:1"\n', "cannot reach Kafka at 127.0.0.1:1"),
        (None, "input topic 'no-such-topic' does not exist"),
    ],
)
def test_misconfiguration_is_one_actionable_line_not_a_hang(broker, tmp_path, toml, expect):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        toml
        or f'[kafka]\nbootstrap_servers = "{broker.bootstrap}"\n[[inputs]]\ntopic = "no-such-topic"\n'
        "[metrics]\nport = 0\n"
    )
    if toml:
        cfg.write_text(toml + "[metrics]\nport = 0\n")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "spanpulse.cli", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = [
        ln for ln in proc.stderr.splitlines() if not ln.startswith("%")
    ]  # librdkafka's own log lines
    assert len(lines) == 1, proc.stderr
    assert expect in lines[0] and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30

"""A real Prometheus server scrapes a Metrics endpoint fed with synthetic rollup windows.

This is the end-to-end check of the exposition: the PromQL used by the dashboard and the
alert rules gives the numbers the rollup rows hold, histograms are usable by
histogram_quantile, and the number of series stays bounded.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from spanpulse.schemas.histogram import HIST_DTYPE, bucket_of, merge_counts
from spanpulse.sinks.metrics import Metrics, start_http_server

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
MAX_SERIES = 5
Query = Callable[..., dict[str, float]]
SCHEMA: dict[str, Any] = {
    "window_start": pl.Datetime("us", "UTC"),
    "window_end": pl.Datetime("us", "UTC"),
    "grain": pl.String(),
    "tenant": pl.String(),
    "model": pl.String(),
    "late": pl.Boolean(),
    "calls": pl.Int64(),
    "finish_length": pl.Int64(),
    "cost_nanos": pl.Int64(),
    "latency_ms_sum": pl.Int64(),
    "latency_s_hist": HIST_DTYPE,
}


def hist(values: list[float]) -> list[dict[str, int]]:
    counts = merge_counts([[{"b": bucket_of(v), "n": 1} for v in values]])
    return [{"b": b, "n": n} for b, n in sorted(counts.items())]


def window(i: int, calls: dict[tuple[str, str], int], latencies: list[float]) -> pl.DataFrame:
    """Rows of one window: grain tenant.model from ``calls``, grain model for gpt-4o latency."""
    start = T0 + timedelta(minutes=i)
    base = {"window_start": start, "window_end": start + timedelta(minutes=1), "late": False}
    rows = [
        base | {"grain": "tenant.model", "tenant": t, "model": m, "calls": n, "finish_length": 1}
        for (t, m), n in calls.items()
    ]
    rows.append(
        base
        | {
            "grain": "model",
            "model": "gpt-4o",
            "calls": len(latencies),
            "latency_s_hist": hist(latencies),
            "latency_ms_sum": round(sum(latencies) * 1000),
        }
    )
    return pl.DataFrame(rows, schema=SCHEMA)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus not found on PATH; install it with `apt-get install -y prometheus`")
    return path


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


class Slot(Collector):
    """A scrape target whose registry each test replaces, so one Prometheus serves all tests.

    Prometheus takes seconds to discover and first scrape a target; sharing the server keeps
    this module fast while every test still gets a fresh ``Metrics`` and its own ``job``.
    """

    def __init__(self, job: str) -> None:
        self.job = job
        self.registry = CollectorRegistry()
        outer = CollectorRegistry()
        outer.register(self)
        self.server, _ = start_http_server(0, outer, addr="127.0.0.1")

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Slot]]]:
    tmp = tmp_path_factory.mktemp("prometheus")
    slots = [Slot(f"slot{i}") for i in range(2)]
    jobs = "".join(
        f"  - job_name: {s.job}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{s.server.server_port}']}}]\n"
        for s in slots
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n" + jobs
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and get(f"{url}/-/ready"), what="prometheus ready")
        yield url, slots
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for s in slots:
            s.server.shutdown()
            s.server.server_close()


@pytest.fixture
def target(prometheus: tuple[str, list[Slot]]) -> Iterator[tuple[Metrics, Query]]:
    """A fresh Metrics on a free slot, and a query function scoped to that slot's job."""
    url, slots = prometheus
    slot = slots.pop()
    slot.registry = CollectorRegistry()
    m = Metrics(slot.registry, max_series=MAX_SERIES)

    def ask(promql: str, label: str = "") -> dict[str, float]:
        scoped = promql.replace("{job}", f'job="{slot.job}"')
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in query(url, scoped)}

    yield m, ask


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
        return bytes(resp.read())


def query(base: str, promql: str) -> list[dict[str, Any]]:
    body = json.loads(get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_rollup_metrics_and_answers_promql(
    target: tuple[Metrics, Query],
) -> None:
    m, ask = target
    calls = {("acme", "gpt-4o"): 10, ("acme", "claude"): 5, ("beta", "gpt-4o"): 3}
    m.observe_rollup(window(0, calls, [0.3, 0.4]))
    m.set_broker_up(True)
    wait_for(lambda: ask("sum(llm_calls_total{{job}})") == {"": 18}, what="first scrape")

    # a second window, all latencies in (1, 2]: the rate-based p95 must fall in that bucket
    m.observe_rollup(window(1, calls, [1.1, 1.2, 1.5, 1.9]))
    wait_for(lambda: ask("sum(llm_calls_total{{job}})") == {"": 36}, what="second scrape")
    by_tenant = ask("sum by (tenant) (llm_calls_total{{job}})", "tenant")
    assert by_tenant == {"acme": 30.0, "beta": 6.0}
    length = 'sum by (model) (llm_finish_reason_total{{job}, finish_class="length"})'
    assert ask(length, "model") == {"gpt-4o": 4.0, "claude": 2.0}
    p95 = ask("histogram_quantile(0.95, sum by (le) (rate(llm_latency_seconds_bucket{{job}}[1m])))")
    assert list(p95) == [""]
    assert math.isfinite(p95[""])
    assert 1.0 < p95[""] <= 2.0
    assert ask("sum(llm_latency_seconds_count{{job}})") == {"": 6.0}
    assert ask("spanpulse_broker_up{{job}}") == {"": 1.0}


def test_series_stay_bounded_as_windows_and_tenants_grow(target: tuple[Metrics, Query]) -> None:
    m, ask = target
    count_series = 'count({__name__=~"llm_.+|spanpulse_.+", {job}})'
    calls = {("acme", "gpt-4o"): 1, ("beta", "gpt-4o"): 1}
    m.observe_rollup(window(0, calls, [0.5]))
    wait_for(lambda: ask("sum(llm_calls_total{{job}})") == {"": 2}, what="first scrape")
    before = ask(count_series)

    for i in range(1, 6):  # more windows over the same dimension values: no new series
        m.observe_rollup(window(i, calls, [0.5, 3.0]))
    wait_for(lambda: ask("sum(llm_calls_total{{job}})") == {"": 12}, what="windows scraped")
    assert ask(count_series) == before

    # 20 tenants at once: MAX_SERIES label sets are admitted, the rest share one __other__ set
    many = {(f"t{i:02d}", "gpt-4o"): 1 for i in range(20)}
    m.observe_rollup(window(6, many, [0.5]))
    wait_for(lambda: ask("sum(llm_calls_total{{job}})") == {"": 32}, what="many tenants scraped")
    assert ask("count(llm_calls_total{{job}})") == {"": MAX_SERIES + 1.0}
    folded = 20 - (MAX_SERIES - 2)
    assert ask("sum by (tenant) (llm_calls_total{{job}})", "tenant")["__other__"] == folded
    overflow = 'spanpulse_metric_label_overflow_total{{job}, family="llm_calls"}'
    assert ask(overflow) == {"": float(folded)}

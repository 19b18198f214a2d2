"""A real Prometheus server scrapes the running ``spanpulse run`` job (issue 4).

Kafka (tansu) -> ``spanpulse run`` (a subprocess, as deployed) -> ``/metrics`` -> Prometheus
(the Debian binary, scraping every second). The PromQL a dashboard uses must give the numbers
the job wrote to its Parquet rollups -- the rollups are the reference, read independently with
Polars -- and a flood of hostile dimension values must leave the number of series bounded by
the configured cardinality limits while totals stay exact.

One Prometheus serves both tests (it takes seconds to start); each test runs its own job on a
port that was in Prometheus' scrape config from the start, so the first scrape comes as soon
as the job listens. Queries run while the job is up: a stopped target's series go stale.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from prometheus_client import CollectorRegistry

from spanpulse.broker import EmbeddedBroker, create_topics, free_port
from spanpulse.schemas.encode import CANARY, EncodedBatch, encode_calls_detailed
from spanpulse.schemas.histogram import merge_counts
from spanpulse.schemas.traffic import TrafficModel
from spanpulse.sinks.kafka_producer import BulkProducer
from spanpulse.sinks.metrics import DEFAULT_LATENCY_BUCKETS, Metrics, bucket_upper_bound
from tests.test_prometheus_server import get, prometheus_binary, query, wait_for

pytestmark = pytest.mark.integration

JOBS = ("steady", "hostile")
PARTITIONS = 2
MINUTE_MS = 60_000


# ---------------------------------------------------------------- Prometheus


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus and the metrics port it scrapes for each job name."""

    url: str
    ports: Mapping[str, int]

    def ask(self, job: str, promql: str, by: str = "") -> dict[str, float]:
        """Instant query; ``{job}`` in ``promql`` becomes this job's matcher; keyed by ``by``."""
        scoped = promql.replace("{job}", f'job="{job}"')
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in query(self.url, scoped)}

    def label_values(self, job: str) -> set[str]:
        """Every label value of every series Prometheus holds for ``job``."""
        url = f"{self.url}/api/v1/series?" + urllib.parse.urlencode({"match[]": f'{{job="{job}"}}'})
        body = json.loads(get(url))
        assert body["status"] == "success", body
        return {v for series in body["data"] for k, v in series.items() if k != "__name__"}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    ports = {job: free_port() for job in JOBS}
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        for job, port in ports.items()
    )
    config = tmp / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n" + jobs)
    port = free_port()
    with (tmp / "prometheus.log").open("w") as log:
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
            wait_for(lambda: proc.poll() is None and get(f"{url}/-/ready"), what="prometheus")
            yield Prometheus(url, ports)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- the job


def produce(
    broker: EmbeddedBroker, calls: pl.DataFrame, content: bool = False
) -> tuple[str, EncodedBatch]:
    """Write ``calls`` as OTLP protobuf to a fresh topic; return it and what was encoded."""
    topic = f"spans-{time.time_ns():x}"
    create_topics(broker.bootstrap, [topic], partitions=PARTITIONS)
    sent = encode_calls_detailed(
        calls, "otlp_proto", spans_per_message=100, include_content=content
    )
    producer = BulkProducer({"bootstrap.servers": broker.bootstrap})
    producer.send(topic, sent.messages)
    producer.flush()
    return topic, sent


def job_config(tmp: Path, broker: EmbeddedBroker, topic: str, port: int, cardinality: str) -> Path:
    """A job config: 1-minute windows closed 2 s after the partitions go idle."""
    create_topics(broker.bootstrap, [f"{topic}-dlq", f"{topic}-alerts"], partitions=1)
    cfg = tmp / "spanpulse.toml"
    cfg.write_text(
        f'[kafka]\nbootstrap_servers = "{broker.bootstrap}"\n'
        f'dead_letter_topic = "{topic}-dlq"\nalert_topic = "{topic}-alerts"\n'
        f'[[inputs]]\ntopic = "{topic}"\nencoding = "otlp_proto"\n'
        '[window]\nlength = "1m"\nallowed_lateness = "0s"\nidle_timeout = "2s"\n'
        f'[rollups]\noutput_dir = "{tmp / "rollups"}"\n'
        f"{cardinality}\n"
        f'[metrics]\nport = {port}\naddr = "127.0.0.1"\n'
    )
    return cfg


@contextmanager
def running_job(cfg: Path) -> Iterator[None]:
    """Run ``spanpulse run`` until the block ends; then SIGTERM must stop it cleanly (exit 0)."""
    log_path = cfg.with_suffix(".log")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spanpulse.cli", "run", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()[-3000:]


def rollups(root: Path) -> pl.DataFrame:
    files = sorted(root.rglob("*.parquet"))
    if not files:
        return pl.DataFrame()
    return pl.concat(
        [pl.read_parquet(f, hive_partitioning=False) for f in files], how="diagonal_relaxed"
    )


def wait_for_rollups(root: Path, calls: int) -> pl.DataFrame:
    """Wait until the ``tenant.model`` rollups hold every call; return all rollup rows."""

    def complete() -> list[pl.DataFrame]:
        df = rollups(root)
        if df.is_empty() or df.filter(pl.col("grain") == "tenant.model")["calls"].sum() != calls:
            return []
        return [df]

    found: list[pl.DataFrame] = wait_for(complete, timeout=40, what=f"rollups of {calls} calls")
    return found[0]


def sums_by(df: pl.DataFrame, key: str, column: str = "calls") -> dict[str, float]:
    return {k: float(v) for k, v in df.group_by(key).agg(pl.col(column).sum()).iter_rows()}


def past_calls(model: TrafficModel, minutes_ago: int, duration_s: float) -> pl.DataFrame:
    """Calls starting ``minutes_ago`` minutes back (on a minute boundary), all ended before
    the current minute, so every window closes as soon as the input idles."""
    now_ms = int(time.time() * 1000)
    this_minute = now_ms - now_ms % MINUTE_MS
    calls = model.calls(this_minute - minutes_ago * MINUTE_MS, duration_s)
    return calls.filter(pl.col("end_time_ms") < this_minute)


# ---------------------------------------------------------------- checks shared by both tests


def promtool_check(exposition: bytes) -> None:
    promtool = str(Path(prometheus_binary()).with_name("promtool"))
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    assert proc.stdout.strip() == b"", proc.stdout.decode()


def assert_no_identifier_or_text_in_labels(values: set[str], calls: pl.DataFrame) -> None:
    """No label value is, or contains, a trace or span id, or prompt/completion text."""
    ids = set(calls["trace_id"]) | set(calls["span_id"])
    assert values, "Prometheus holds no series for the job"
    for value in values:
        assert value not in ids
        assert not ids.intersection(re.findall(r"[0-9a-f]{16,32}", value)), value
        assert CANARY not in value


def expected_p95_interval(cells: list[list[dict[str, int]]]) -> tuple[float, float]:
    """The ``le`` interval that must hold Prometheus' p95, derived from the exponential cells.

    ``histogram_quantile`` interpolates inside the first ``le`` bucket whose cumulative count
    reaches ``0.95 * n``; that bucket holds the exponential bucket of the nearest-rank p95
    value (an exponential bucket goes to the first ``le >=`` its upper bound).
    """
    counts = sorted(merge_counts(cells).items())
    rank = math.ceil(0.95 * sum(c for _, c in counts))
    cumulative = np.cumsum([c for _, c in counts])
    b = counts[int(np.searchsorted(cumulative, rank))][0]  # first bucket reaching the rank
    bounds = DEFAULT_LATENCY_BUCKETS
    i = bisect_left(bounds, bucket_upper_bound(b))
    if i == len(bounds):  # the +Inf bucket: Prometheus answers the highest finite bound
        return bounds[-1], bounds[-1]
    return (bounds[i - 1] if i else 0.0), bounds[i]


# ---------------------------------------------------------------- test 1: PromQL == rollups


def test_promql_over_the_running_job_matches_its_rollups(
    broker: EmbeddedBroker, prometheus: Prometheus, tmp_path: Path
) -> None:
    calls = past_calls(TrafficModel(seed=21, tenants=12, rate_per_s=6.0), 8, 6 * 60)
    topic, sent = produce(broker, calls)
    job, port = "steady", prometheus.ports["steady"]
    cfg = job_config(tmp_path, broker, topic, port, "[cardinality.limits]\ntenant = 1000\n")

    def ask(promql: str, by: str = "") -> dict[str, float]:
        return prometheus.ask(job, promql, by)

    started = time.time()
    with running_job(cfg):
        rows = wait_for_rollups(tmp_path / "rollups", calls.height)
        assert not rows["late"].any()  # everything was on time, so everything is exported
        total = {"": float(calls.height)}
        wait_for(
            lambda: ask("sum(llm_calls_total{{job}})") == total, what="the last window scraped"
        )

        # -- LLM counters: the dashboard's sums equal the rollups of the call grain
        tm = rows.filter(pl.col("grain") == "tenant.model")
        assert ask("sum by (tenant) (llm_calls_total{{job}})", "tenant") == sums_by(tm, "tenant")
        assert ask("sum by (model) (llm_errors_total{{job}})", "model") == sums_by(
            tm, "model", "errors"
        )
        tokens = ask("sum by (direction) (llm_tokens_total{{job}})", "direction")
        assert tokens == {
            d: float(tm[f"{d}_tokens"].sum())
            for d in ("input", "output", "cached_input", "reasoning")
        }
        length = ask(
            'sum by (tenant) (llm_finish_reason_total{{job}, finish_class="length"})', "tenant"
        )
        assert length == sums_by(tm, "tenant", "finish_length")
        cost = ask("sum(llm_cost_usd_total{{job}})")[""]
        assert cost == pytest.approx(int(tm["cost_nanos"].sum()) / 1e9, rel=1e-12)
        assert cost > 0

        # -- histograms: finite p95 for every model, in the le bucket the exact cells imply
        by_model = rows.filter(pl.col("grain") == "model")
        cells = {m: list(g["latency_s_hist"].to_list()) for (m,), g in by_model.group_by("model")}
        p95 = ask(
            "histogram_quantile(0.95, sum by (le, model) (llm_latency_seconds_bucket{{job}}))",
            "model",
        )
        assert set(p95) == set(cells)
        for model, value in p95.items():
            low, high = expected_p95_interval(cells[model])
            assert math.isfinite(value)
            assert low <= value <= high, (model, value, low, high)
        counts = ask("sum by (model) (llm_latency_seconds_count{{job}})", "model")
        assert counts == {m: float(sum(c["n"] for h in hs for c in h)) for m, hs in cells.items()}

        # -- engine health: the job's own account of its work
        assert ask("sum(spanpulse_messages_consumed_total{{job}})") == {"": len(sent.messages)}
        assert ask("count(spanpulse_messages_consumed_total{{job}})") == {"": PARTITIONS}
        spans = sent.llm_spans + sent.non_llm_spans
        assert ask("sum(spanpulse_spans_consumed_total{{job}})") == {"": float(spans)}
        assert ask("sum(spanpulse_spans_skipped_total{{job}})") == {"": float(sent.non_llm_spans)}
        exported = ask("spanpulse_rollup_rows_total{{job}}", "grain")
        assert exported == {g: float(n) for g, n in rows.group_by("grain").len().iter_rows()}
        assert ask("spanpulse_late_spans_total{{job}}") == {"": 0.0}
        assert ask("sum(spanpulse_dead_letters_total{{job}}) or vector(0)") == {"": 0.0}
        assert ask("spanpulse_broker_up{{job}}") == {"": 1.0}
        # wall clock minus the end of the window closed last; windows that close together may
        # be finalized in any order, so the upper bound allows the earliest one
        first_end, last_end = (e.timestamp() for e in rows["window_end"].sort()[[0, -1]])
        lag = ask("spanpulse_window_lag_seconds{{job}}")[""]
        assert started - last_end - 1 <= lag <= time.time() - first_end

        exposition = get(f"http://127.0.0.1:{port}/metrics")
        promtool_check(exposition)
        assert_no_identifier_or_text_in_labels(prometheus.label_values(job), calls)


# ---------------------------------------------------------------- test 2: hostile cardinality

HOSTILE_TENANTS = 5000
LIMITS = {"tenant": 50, "model": 10, "prompt_version": 20}
SERIES_LIMIT = 100
#: Every LLM series of the job (``{job}`` is filled in by ``Prometheus.ask``).
LLM_SERIES = '{__name__=~"llm_.+", {job}}'


def hostile_calls(seed: int) -> pl.DataFrame:
    """~15k calls over two minutes from 5,000 random tenant ids (three calls each), half of
    them on random model names and every one on a random prompt version."""
    n = 3 * HOSTILE_TENANTS
    # Generous rate (the model has a diurnal cycle), then exactly n calls in time order.
    calls = past_calls(TrafficModel(seed=seed, tenants=50, rate_per_s=400.0), 4, 120)
    calls = calls.sample(n, seed=seed).sort("end_time_ms")
    rng = np.random.default_rng(seed)

    def random_ids(prefix: str, k: int) -> np.ndarray[Any, np.dtype[Any]]:
        return np.array([f"{prefix}{x:015x}" for x in rng.integers(0, 2**60, k)])

    tenants = random_ids("cust-", HOSTILE_TENANTS)[rng.permutation(np.arange(n) % HOSTILE_TENANTS)]
    models = np.where(np.arange(n) % 2 == 0, random_ids("llm-", n), calls["model"].to_numpy())
    return calls.with_columns(
        tenant=pl.Series(tenants),
        model=pl.Series(models),
        response_model=pl.Series(models),
        prompt_version=pl.Series(random_ids("pv-", n)),
    )


def series_per_label_set(rows: pl.DataFrame) -> dict[str, int]:
    """``llm_*`` series one label set of each exported grain adds (from a fresh Metrics).

    Every sample counts, ``_created`` ones included: Prometheus stores them as series too.
    """
    reg = CollectorRegistry()
    one = rows.group_by("grain", maintain_order=True).head(1)
    Metrics(reg).observe_rollup(one)
    out = {"tenant.model": 0, "model": 0, "feature.prompt_version": 0}
    for mf in reg.collect():
        for s in mf.samples:
            if s.name.startswith("llm_"):
                grain = "tenant.model" if "tenant" in s.labels else "model"
                out["feature.prompt_version" if "prompt_version" in s.labels else grain] += 1
    return out


def test_hostile_cardinality_keeps_series_bounded_and_totals_exact(
    broker: EmbeddedBroker, prometheus: Prometheus, tmp_path: Path
) -> None:
    calls = hostile_calls(seed=22)
    assert calls["tenant"].n_unique() == HOSTILE_TENANTS
    topic, _ = produce(broker, calls, content=True)  # prompt text travels too; it must stay out
    job, port = "hostile", prometheus.ports["hostile"]
    limits = "".join(f"{d} = {n}\n" for d, n in LIMITS.items())
    cardinality = f"[cardinality]\nseries_limit = {SERIES_LIMIT}\n[cardinality.limits]\n{limits}"
    cfg = job_config(tmp_path, broker, topic, port, cardinality)

    def ask(promql: str, by: str = "") -> dict[str, float]:
        return prometheus.ask(job, promql, by)

    with running_job(cfg):
        rows = wait_for_rollups(tmp_path / "rollups", calls.height)
        assert not rows["late"].any()
        total = {"": float(calls.height)}
        wait_for(
            lambda: ask("sum(llm_calls_total{{job}})") == total, what="the last window scraped"
        )
        tm = rows.filter(pl.col("grain") == "tenant.model")
        windows = tm["window_start"].n_unique()

        # Totals stay exact: every hostile call is counted, the flood under __other__.
        by_tenant = ask("sum by (tenant) (llm_calls_total{{job}})", "tenant")
        assert by_tenant == sums_by(tm, "tenant")
        assert by_tenant["__other__"] > calls.height / 2
        prompt = ask("sum(llm_prompt_calls_total{{job}})")
        assert prompt == total

        # Bounds derived from the limits: a dimension keeps at most `limit` admitted values
        # plus __other__ and __unknown__ per window, a grain at most SERIES_LIMIT rows per window.
        def distinct(label: str) -> int:
            found = ask(f"count(count by ({label}) ({LLM_SERIES}))")
            return int(found[""])

        for dim, limit in LIMITS.items():
            # +1: families without this label report it as "" (one more group)
            assert distinct(dim) <= windows * (limit + 2) + 1, dim
        assert distinct("tenant") < HOSTILE_TENANTS / 10
        label_sets = {
            "tenant.model": ask("count(llm_calls_total{{job}})")[""],
            "feature.prompt_version": ask("count(llm_prompt_calls_total{{job}})")[""],
            "model": ask("count(llm_latency_seconds_count{{job}})")[""],
        }
        # Prometheus holds exactly the label sets of the exported rollup rows...
        assert label_sets["tenant.model"] == tm.select("tenant", "model").n_unique()
        # ...and they are bounded by the limits, whatever the input: a grain keeps at most
        # SERIES_LIMIT rows per window, the model dimension `limit` values + 2 reserved ones.
        ceiling = {
            "tenant.model": windows * SERIES_LIMIT,
            "feature.prompt_version": windows * SERIES_LIMIT,
            "model": windows * (LIMITS["model"] + 2),
        }
        for grain, n in label_sets.items():
            assert n <= ceiling[grain], grain
        # Every llm_* series Prometheus holds belongs to one of those label sets.
        per_set = series_per_label_set(tm.vstack(rows.filter(pl.col("grain") != "tenant.model")))
        held = ask(f"count by (__name__) ({LLM_SERIES})", "__name__")
        exact = sum(per_set[g] * label_sets[g] for g in per_set)
        assert sum(held.values()) == exact, (held, per_set, label_sets)
        assert exact <= sum(per_set[g] * ceiling[g] for g in per_set)
        # The limiter upstream did the bounding; the exporter's last-resort guard never folded.
        overflow = ask("sum(spanpulse_metric_label_overflow_total{{job}}) or vector(0)")
        assert overflow == {"": 0.0}

        exposition = get(f"http://127.0.0.1:{port}/metrics")
        promtool_check(exposition)
        assert CANARY.encode() not in exposition
        assert_no_identifier_or_text_in_labels(prometheus.label_values(job), calls)

"""Tests for spanpulse.sinks.metrics: rollup rows -> Prometheus samples, engine health, lint."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from spanpulse.schemas.histogram import BASE, ZERO_BUCKET, bucket_of, merge_counts
from spanpulse.schemas.record import DIMENSIONS
from spanpulse.schemas.rollup_schema import (
    ADDITIVE_COLUMNS,
    HIST_COLUMNS,
    ROLLUP_SCHEMA,
    conform_rollups,
)
from spanpulse.sinks.metrics import (
    DEFAULT_FILL_BUCKETS,
    DEFAULT_LATENCY_BUCKETS,
    MAX_LABEL_LENGTH,
    Metrics,
    bucket_upper_bound,
    le_counts,
    sanitize_label,
    start_http_server,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def hist(values: list[float]) -> list[dict[str, int]]:
    counts = merge_counts([[{"b": bucket_of(v), "n": 1} for v in values]])
    return [{"b": b, "n": n} for b, n in sorted(counts.items())]


def row(grain: str, window: int = 0, late: bool = False, **kw: Any) -> dict[str, Any]:
    """One contract row; dimensions of ``grain`` default to __unknown__, others are null."""
    start = T0 + timedelta(minutes=window)
    out: dict[str, Any] = {"window_start": start, "window_end": start + timedelta(minutes=1)}
    out |= {
        "grain": grain,
        "late": late,
        "exemplar_trace_ids": ["0af7651916cd43dd8448eb211c80319c"],
    }
    out |= {d: ("__unknown__" if d in grain.split(".") else None) for d in DIMENSIONS}
    out |= {c: 0 for c in ADDITIVE_COLUMNS} | {h: [] for h in HIST_COLUMNS}
    out |= kw
    out["cost_usd"] = out["cost_nanos"] / 1e9
    return out


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows as a frame that passes the real contract check."""
    return conform_rollups(pl.DataFrame(rows, schema=ROLLUP_SCHEMA))


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def window_frame(window: int = 0) -> pl.DataFrame:
    """Two tenants x two models at grain tenant.model, plus other grains that must not count."""
    lat = [0.3, 0.7, 1.5, 1.5, 3.0]
    return frame(
        [
            row(
                "tenant.model",
                window,
                tenant="acme",
                model="gpt-4o",
                calls=10,
                errors=1,
                input_tokens=1000,
                output_tokens=200,
                cached_input_tokens=300,
                reasoning_tokens=50,
                cost_nanos=1_234_567_891,
                unpriced_calls=0,
                finish_stop=7,
                finish_length=2,
                finish_error=1,
                refusals=1,
                parse_attempts=4,
                parse_failures=1,
            ),
            row("tenant.model", window, tenant="acme", model="claude", calls=5, finish_stop=5),
            row(
                "tenant.model", window, tenant="beta", model="gpt-4o", calls=3, finish_tool_calls=3
            ),
            row("tenant", window, tenant="acme", calls=15),
            row("tenant", window, tenant="beta", calls=3),
            row(
                "model",
                window,
                model="gpt-4o",
                calls=13,
                latency_s_hist=hist(lat),
                latency_ms_sum=int(sum(lat) * 1000),
                ttft_s_hist=hist([0.2, 0.4]),
                context_fill_hist=hist([0.1, 0.5, 0.85, 0.85]),
            ),
            row(
                "feature.prompt_version", window, feature="summarize", prompt_version="v3", calls=9
            ),
        ]
    )


# ---------------------------------------------------------------- exp -> le bucket conversion


@pytest.mark.parametrize(
    ("value", "expected_le"),
    [
        (0.5, 0.5),  # a bucket whose upper bound equals a power-of-two le lands in that le
        (1.0, 1.0),
        (2.0, 2.0),
        (1.01, 2.0),
        (0.09, 0.1),
        (0.1, 0.25),  # 0.1's bucket ends at 0.1007 > 0.1: counted one le up, never too low
        (0.0, 0.1),  # zero bucket
        (500.0, float("inf")),
    ],
)
def test_le_counts_places_each_bucket_at_first_bound_covering_it(
    value: float, expected_le: float
) -> None:
    bounds = DEFAULT_LATENCY_BUCKETS
    counts = le_counts(hist([value]), bounds)
    les = [*bounds, float("inf")]
    assert counts == [1 if le == expected_le else 0 for le in les]


def test_bucket_upper_bound_is_exact_on_powers_of_two() -> None:
    assert bucket_upper_bound(bucket_of(0.25)) == 0.25
    assert bucket_upper_bound(bucket_of(8.0)) == 8.0
    assert bucket_upper_bound(ZERO_BUCKET) == 0.0


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=50),
    bounds=st.lists(st.floats(1e-3, 1e4), min_size=1, max_size=12, unique=True).map(sorted),
)
def test_le_counts_never_overcount_and_are_off_by_at_most_one_exp_bucket(
    values: list[float], bounds: list[float]
) -> None:
    counts = le_counts(hist(values), bounds)
    assert sum(counts) == len(values)
    running = 0
    for le, n in zip(bounds, counts, strict=False):
        running += n
        assert running <= sum(v <= le for v in values)
        # everything at least one exponential bucket below le is counted
        assert running >= sum(v <= le / BASE for v in values)


# ---------------------------------------------------------------- rollup rows -> LLM metrics


def test_observe_rollup_counts_each_metric_from_the_tenant_model_grain() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.observe_rollup(window_frame())
    acme = {"tenant": "acme", "model": "gpt-4o", "provider": ""}
    assert sample(reg, "llm_calls_total", **acme) == 10
    assert sample(reg, "llm_calls_total", tenant="acme", model="claude", provider="") == 5
    assert sample(reg, "llm_calls_total", tenant="beta", model="gpt-4o", provider="") == 3
    assert sample(reg, "llm_errors_total", **acme) == 1
    assert sample(reg, "llm_refusals_total", **acme) == 1
    assert sample(reg, "llm_parse_attempts_total", **acme) == 4
    assert sample(reg, "llm_parse_failures_total", **acme) == 1
    assert sample(reg, "llm_tokens_total", **acme, direction="input") == 1000
    assert sample(reg, "llm_tokens_total", **acme, direction="cached_input") == 300
    assert sample(reg, "llm_tokens_total", **acme, direction="output") == 200
    assert sample(reg, "llm_tokens_total", **acme, direction="reasoning") == 50
    assert sample(reg, "llm_finish_reason_total", **acme, finish_class="length") == 2
    assert sample(reg, "llm_finish_reason_total", **acme, finish_class="stop") == 7
    assert sample(reg, "llm_cost_usd_total", **acme) == pytest.approx(1.234567891)
    assert sample(reg, "llm_prompt_calls_total", feature="summarize", prompt_version="v3") == 9
    # the "tenant" grain rows were not added on top
    total = sum(
        s.value
        for mf in reg.collect()
        if mf.name == "llm_calls"
        for s in mf.samples
        if s.name == "llm_calls_total"
    )
    assert total == 18
    assert sample(reg, "spanpulse_rollup_rows_total", grain="tenant") == 2


def test_every_series_of_a_label_set_starts_at_zero() -> None:
    """increase() misses a series' first value, so a rare class must exist before it happens."""
    reg = CollectorRegistry()
    Metrics(reg).observe_rollup(window_frame())
    beta = {"tenant": "beta", "model": "gpt-4o", "provider": ""}
    assert sample(reg, "llm_finish_reason_total", **beta, finish_class="length") == 0
    assert sample(reg, "llm_parse_failures_total", **beta) == 0


def test_windows_accumulate_and_late_rows_are_opt_in() -> None:
    late = frame([row("tenant.model", 0, late=True, tenant="acme", model="gpt-4o", calls=4)])
    reg = CollectorRegistry()
    m = Metrics(reg)
    for window in range(3):
        m.observe_rollup(window_frame(window))
    m.observe_rollup(late)
    acme = {"tenant": "acme", "model": "gpt-4o", "provider": ""}
    assert sample(reg, "llm_calls_total", **acme) == 30
    assert sample(reg, "llm_cost_usd_total", **acme) == pytest.approx(3 * 1.234567891)

    reg2 = CollectorRegistry()
    m2 = Metrics(reg2, include_late=True)
    m2.observe_rollup(window_frame())
    m2.observe_rollup(late)
    assert sample(reg2, "llm_calls_total", **acme) == 14


def test_histograms_come_from_the_model_grain() -> None:
    reg = CollectorRegistry()
    Metrics(reg).observe_rollup(window_frame())
    gpt = {"model": "gpt-4o"}
    assert sample(reg, "llm_latency_seconds_count", **gpt) == 5
    assert sample(reg, "llm_latency_seconds_sum", **gpt) == pytest.approx(7.0)
    assert sample(reg, "llm_latency_seconds_bucket", **gpt, le="0.5") == 1
    assert sample(reg, "llm_latency_seconds_bucket", **gpt, le="1.0") == 2
    assert sample(reg, "llm_latency_seconds_bucket", **gpt, le="2.0") == 4
    assert sample(reg, "llm_latency_seconds_bucket", **gpt, le="+Inf") == 5
    assert sample(reg, "llm_ttft_seconds_count", **gpt) == 2
    assert sample(reg, "llm_context_fill_ratio_bucket", **gpt, le="0.8") == 2
    assert sample(reg, "llm_context_fill_ratio_bucket", **gpt, le="0.9") == 4
    fill_sum = sample(reg, "llm_context_fill_ratio_sum", **gpt)
    assert fill_sum == pytest.approx(2.3, rel=0.022)


def test_custom_buckets_and_grain_are_honoured() -> None:
    reg = CollectorRegistry()
    rows = frame([row("provider.model", provider="openai", model="m", calls=2)])
    m = Metrics(reg, latency_buckets=(1.0, 10.0), fill_buckets=(0.5,), call_grain="provider.model")
    m.observe_rollup(rows)
    assert sample(reg, "llm_calls_total", tenant="", model="m", provider="openai") == 2
    assert m.required_grains() == {"provider.model", "model", "feature.prompt_version"}
    m.observe_rollup(frame([row("model", model="m", latency_s_hist=hist([5.0]))]))
    assert sample(reg, "llm_latency_seconds_bucket", model="m", le="10.0") == 1
    assert sample(reg, "llm_latency_seconds_bucket", model="m", le="1.0") == 0


# ---------------------------------------------------------------- label safety


def test_sanitize_label_strips_control_characters_and_caps_length() -> None:
    assert sanitize_label("gpt-4o\n\x00\x1b[31m") == "gpt-4o[31m"
    assert sanitize_label("x" * 1000) == "x" * MAX_LABEL_LENGTH
    assert sanitize_label(None) == "__unknown__"
    assert sanitize_label("\t\r") == "__unknown__"
    assert sanitize_label(3) == "3"


def test_label_sets_beyond_max_series_fold_into_other_and_keep_totals() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, max_series=2)
    tenants = ["t1", "t2", "t3", "t4"]
    m.observe_rollup(frame([row("tenant.model", tenant=t, model="m", calls=1) for t in tenants]))
    names = {
        (s.labels["tenant"], s.value)
        for mf in reg.collect()
        for s in mf.samples
        if s.name == "llm_calls_total"
    }
    assert names == {("t1", 1), ("t2", 1), ("__other__", 2)}
    assert sample(reg, "spanpulse_metric_label_overflow_total", family="llm_calls") == 2


def test_dirty_dimension_values_never_reach_the_exposition_raw() -> None:
    reg = CollectorRegistry()
    Metrics(reg).observe_rollup(frame([row("tenant.model", tenant="a\nb", model="m", calls=1)]))
    text = generate_latest(reg).decode()
    assert 'tenant="ab"' in text
    assert "0af7651916cd43dd8448eb211c80319c" not in text  # exemplar trace ids stay out


# ---------------------------------------------------------------- engine health


def test_engine_health_methods() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.count_consumed("otlp_spans", 3, messages=10, spans=250)
    m.count_consumed("otlp_spans", 3, messages=5, spans=50)
    m.count_dead_letters("decode_error", 2)
    m.count_skipped("not_llm", 7)
    m.count_late(4)
    m.count_overflow("tenant", 9)
    m.set_window_lag(12.5)
    m.set_consumer_lag("otlp_spans", 3, 1200)
    m.observe_batch_seconds(0.02)
    m.set_alerts_firing("cost_spike", "critical", 2)
    m.set_broker_up(False)
    m.count_alerts_published("firing", 3)
    tp = {"topic": "otlp_spans", "partition": "3"}
    assert sample(reg, "spanpulse_messages_consumed_total", **tp) == 15
    assert sample(reg, "spanpulse_spans_consumed_total", **tp) == 300
    assert sample(reg, "spanpulse_dead_letters_total", reason="decode_error") == 2
    assert sample(reg, "spanpulse_spans_skipped_total", reason="not_llm") == 7
    assert sample(reg, "spanpulse_late_spans_total") == 4
    assert sample(reg, "spanpulse_cardinality_overflow_total", dimension="tenant") == 9
    assert sample(reg, "spanpulse_window_lag_seconds") == 12.5
    assert sample(reg, "spanpulse_consumer_lag_messages", **tp) == 1200
    assert sample(reg, "spanpulse_batch_processing_seconds_count") == 1
    assert sample(reg, "spanpulse_batch_processing_seconds_bucket", le="0.025") == 1
    assert sample(reg, "spanpulse_alerts_firing", detector="cost_spike", severity="critical") == 2
    assert sample(reg, "spanpulse_broker_up") == 0
    m.set_broker_up(True)
    assert sample(reg, "spanpulse_broker_up") == 1
    assert sample(reg, "spanpulse_alerts_published_total", status="firing") == 3
    m.set_dedup_state("otlp_spans", 3, 5000, 7)
    m.count_alerts_inhibited(4)
    assert sample(reg, "spanpulse_dedup_remembered_ids", **tp) == 5000
    assert sample(reg, "spanpulse_dedup_forgotten_ids", **tp) == 7
    assert sample(reg, "spanpulse_alerts_inhibited_total") == 4


def test_counters_reject_negative_increments() -> None:
    m = Metrics(CollectorRegistry())
    with pytest.raises(ValueError, match="non-negative"):
        m.count_dead_letters("x", -1)


# ---------------------------------------------------------------- construction


def test_registry_is_injected_never_global() -> None:
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    Metrics(reg_a).observe_rollup(window_frame())
    Metrics(reg_b)  # a second instance on its own registry does not clash
    assert sample(reg_b, "llm_calls_total", tenant="acme", model="gpt-4o", provider="") is None
    assert REGISTRY.get_sample_value("spanpulse_broker_up") is None
    assert not any(mf.name.startswith(("llm_", "spanpulse_")) for mf in REGISTRY.collect())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"call_grain": "tenant.service"}, "grain 'tenant.service' must group by"),
        ({"model_grain": ""}, "grain '' must group by"),
        ({"latency_buckets": (1.0, 0.5)}, "strictly increasing"),
        ({"fill_buckets": ()}, "fill_buckets must be"),
        ({"batch_buckets": (0.0, 1.0)}, "batch_buckets"),
        ({"max_series": 0}, "max_series must be >= 1"),
    ],
)
def test_invalid_construction_fails_with_a_named_message(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Metrics(CollectorRegistry(), **kwargs)


def test_observe_rollup_rejects_frames_without_contract_columns() -> None:
    with pytest.raises(ValueError, match=r"\['grain', 'late'\]"):
        Metrics(CollectorRegistry()).observe_rollup(pl.DataFrame({"calls": [1]}))


def test_default_fill_buckets_cover_the_alert_threshold() -> None:
    assert 0.8 in DEFAULT_FILL_BUCKETS


# ---------------------------------------------------------------- exposition


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH; install it with `apt-get install -y prometheus` "
            "(Debian package) so the exposition can be linted"
        )
    return path


def full_registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.observe_rollup(window_frame())
    m.count_consumed("otlp_spans", 0, 1, 1)
    m.count_dead_letters("decode_error", 1)
    m.count_skipped("not_llm", 1)
    m.count_late(1)
    m.count_overflow("model", 1)
    m.set_window_lag(1.0)
    m.set_consumer_lag("otlp_spans", 0, 1)
    m.observe_batch_seconds(0.1)
    m.set_alerts_firing("length_share", "warning", 1)
    m.set_broker_up(True)
    m.count_alerts_published("resolved", 1)
    return reg


def test_exposition_passes_promtool_check_metrics() -> None:
    text = generate_latest(full_registry())
    proc = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b"", proc.stdout.decode()


def test_promtool_check_metrics_is_a_real_lint() -> None:
    """Guard the test above: promtool must reject a badly named counter."""
    bad = b"# HELP llm_calls LLM calls.\n# TYPE llm_calls counter\nllm_calls 1\n"
    proc = subprocess.run(
        [promtool(), "check", "metrics"], input=bad, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode != 0
    assert b"_total" in proc.stdout + proc.stderr


def test_start_http_server_serves_the_injected_registry() -> None:
    reg = full_registry()
    server, thread = start_http_server(0, reg, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
            body = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'llm_calls_total{model="gpt-4o",provider="",tenant="acme"} 10.0' in body
    assert "spanpulse_broker_up 1.0" in body
    assert thread.daemon

"""Tests of the seeded traffic model: determinism, shape sanity and per-call invariants."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest

from spanpulse.schemas.traffic import (
    CALL_SCHEMA,
    FEATURE_BY_NAME,
    FINISH_VOCAB,
    LENGTH_FINISH,
    MODEL_BY_NAME,
    TrafficModel,
    context_fill_expr,
    diurnal_factor,
)

START = 1_741_078_800_000  # 2025-03-04T09:00:00Z
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def calls() -> pl.DataFrame:
    """One hour at 20 calls/s: ~72k calls, enough for rare outcomes (0.5 %)."""
    return TrafficModel(seed=11, rate_per_s=20.0).calls(START, 3600)


def test_same_seed_same_calls_and_other_seed_differs() -> None:
    a = TrafficModel(seed=5, tenants=50, rate_per_s=10.0).calls(START, 300)
    b = TrafficModel(seed=5, tenants=50, rate_per_s=10.0).calls(START, 300)
    c = TrafficModel(seed=6, tenants=50, rate_per_s=10.0).calls(START, 300)
    assert a.height > 2000
    assert a.equals(b)
    assert not a.equals(c)
    assert set(a["span_id"]).isdisjoint(set(c["span_id"]))


def test_chunking_does_not_change_the_calls() -> None:
    model = TrafficModel(seed=3, rate_per_s=10.0)
    whole = model.calls(START + 12_345, 700)
    chunks = list(TrafficModel(seed=3, rate_per_s=10.0).iter_calls(START + 12_345, 700, 37.5))
    assert len(chunks) == 19
    joined = pl.concat(chunks)
    assert joined.sort("span_id").equals(whole.sort("span_id"))
    for chunk in chunks:  # every chunk is sorted by event time
        assert chunk["end_time_ms"].is_sorted()


def test_schema_ids_and_dimension_vocabulary(calls: pl.DataFrame) -> None:
    assert calls.schema == pl.Schema(CALL_SCHEMA)
    assert calls["trace_id"].str.contains(r"^[0-9a-f]{32}$").all()
    assert calls["span_id"].str.contains(r"^[0-9a-f]{16}$").all()
    assert calls["span_id"].n_unique() == calls.height
    assert calls["end_time_ms"].is_sorted()
    assert set(calls["operation"]) == {"chat"}
    assert set(calls["environment"]) == {"prod", "staging"}
    assert set(calls["model"]) == set(MODEL_BY_NAME)
    for model, response_model, provider in (
        calls.select("model", "response_model", "provider").unique().iter_rows()
    ):
        assert response_model == MODEL_BY_NAME[model].response_model
        assert response_model.startswith(model + "-")  # a dated snapshot
        assert provider == MODEL_BY_NAME[model].provider
    for feature, service, version in (
        calls.select("feature", "service", "prompt_version").unique().iter_rows()
    ):
        assert (service, version) == (
            FEATURE_BY_NAME[feature].service,
            FEATURE_BY_NAME[feature].prompt_version,
        )


def test_tenant_traffic_is_zipf(calls: pl.DataFrame) -> None:
    model = TrafficModel(seed=11, rate_per_s=20.0)
    counts = calls.group_by("tenant").len().sort("len", descending=True)
    share = dict(zip(counts["tenant"], counts["len"] / calls.height, strict=True))
    assert counts["tenant"][0] == "t-0000"
    assert share["t-0000"] == pytest.approx(model.tenant_weights[0], rel=0.05)
    assert share["t-0009"] == pytest.approx(model.tenant_weights[9], rel=0.15)
    # a few large tenants, a long tail of tiny ones
    assert counts["len"].head(10).sum() / calls.height > 0.5
    tiny = (counts["len"] / calls.height < 0.001).sum() + (500 - counts.height)
    assert tiny > 250


def test_diurnal_cycle_peaks_and_troughs() -> None:
    model = TrafficModel(seed=2, rate_per_s=10.0, diurnal_amplitude=0.4, peak_hour_utc=15.0)
    day = START - 9 * HOUR_MS  # midnight UTC
    peak = model.calls(day + 15 * HOUR_MS, 600).height
    trough = model.calls(day + 3 * HOUR_MS, 600).height
    assert peak / trough == pytest.approx(1.4 / 0.6, rel=0.1)
    hours = np.arange(24) * float(HOUR_MS)
    factors = diurnal_factor(hours, 0.4, 15.0)
    assert factors.mean() == pytest.approx(1.0)
    assert int(np.argmax(factors)) == 15


def test_per_minute_counts_are_poisson(calls: pl.DataFrame) -> None:
    per_minute = calls.group_by(pl.col("start_time_ms") // 60_000).len()["len"].to_numpy()
    dispersion = per_minute.var(ddof=1) / per_minute.mean()
    expected = 60 * TrafficModel(seed=11, rate_per_s=20.0).expected_rate(START + HOUR_MS / 2)
    assert per_minute.mean() == pytest.approx(expected, rel=0.02)
    # the diurnal trend adds a little variance over the hour; pure Poisson gives ~1
    assert 0.5 < dispersion < 2.5


def test_outcome_mix(calls: pl.DataFrame) -> None:
    ok = calls.filter(~pl.col("is_error"))
    assert calls["is_error"].mean() == pytest.approx(0.005, abs=0.0015)
    length = ok["finish_reason"].is_in(list(LENGTH_FINISH.values())).mean()
    assert length == pytest.approx(0.01, abs=0.004)
    assert 0.0005 < calls["refusal"].mean() < 0.006
    for provider, reasons in ok.group_by("provider").agg(pl.col("finish_reason").unique()).rows():
        assert set(reasons) <= set(FINISH_VOCAB[provider])
    tool_share = ok.filter(pl.col("feature") == "agent")["finish_reason"].is_in(
        ["tool_calls", "tool_use"]
    )
    assert tool_share.mean() > 0.3
    assert ok["finish_reason"].value_counts(sort=True)["finish_reason"][0] == "stop"


def test_errors_carry_no_usage_or_outcome(calls: pl.DataFrame) -> None:
    errors = calls.filter(pl.col("is_error"))
    assert errors.height > 100
    assert errors["finish_reason"].is_null().all()
    assert errors["ttft_ms"].is_null().all()
    assert errors["parse_ok"].is_null().all()
    assert not errors["refusal"].any()
    tokens = ["input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens"]
    assert (errors.select(pl.sum_horizontal(tokens)).to_series() == 0).all()


def test_token_invariants_and_heavy_tails(calls: pl.DataFrame) -> None:
    ok = calls.filter(~pl.col("is_error"))
    assert (ok["input_tokens"] > 0).all()
    assert (ok["cached_input_tokens"] <= ok["input_tokens"]).all()
    assert (ok["reasoning_tokens"] <= ok["output_tokens"]).all()
    reasoners = set(ok.filter(pl.col("reasoning_tokens") > 0)["model"])
    assert reasoners == {"o3-mini", "claude-sonnet-4"}
    o3 = ok.filter(pl.col("model") == "o3-mini")
    assert (o3["reasoning_tokens"] > 0).mean() > 0.95
    assert 0.1 < (ok["cached_input_tokens"] > 0).mean() < 0.7
    for model in MODEL_BY_NAME:
        tokens = ok.filter(pl.col("model") == model)["input_tokens"]
        assert tokens.quantile(0.99) / tokens.median() > 4  # lognormal tail
    fill = ok.with_columns(context_fill_expr())["context_fill"]
    assert fill.max() <= 0.95
    assert fill.median() < 0.1
    caps = ok.with_columns(
        pl.col("feature").replace_strict({f: s.max_tokens for f, s in FEATURE_BY_NAME.items()})
    )
    assert (ok["output_tokens"] <= caps["feature"]).all()


def test_latency_ttft_and_parse_attempts(calls: pl.DataFrame) -> None:
    ok = calls.filter(~pl.col("is_error")).with_columns(
        (pl.col("end_time_ms") - pl.col("start_time_ms")).alias("latency_ms")
    )
    assert (ok["latency_ms"] > 0).all()
    streaming = ok.filter(pl.col("ttft_ms").is_not_null())
    assert (streaming["ttft_ms"] <= streaming["latency_ms"]).all()
    assert 0.3 < streaming.height / ok.height < 0.7
    mini = ok.filter(pl.col("model") == "gpt-4o-mini")
    assert mini.select(pl.corr("output_tokens", "latency_ms", method="spearman")).item() > 0.5
    parsed = calls.filter(pl.col("parse_ok").is_not_null())
    assert set(parsed["feature"]) == {"extract"}
    extract_ok = calls.filter((pl.col("feature") == "extract") & ~pl.col("is_error"))
    assert parsed.height == extract_ok.height
    assert 0.005 < (~parsed["parse_ok"]).mean() < 0.04
    truncated = parsed.filter(pl.col("finish_reason").is_in(list(LENGTH_FINISH.values())))
    assert truncated.height > 0 and not truncated["parse_ok"].any()


def test_tenant_calls_is_an_independent_scaled_stream() -> None:
    model = TrafficModel(seed=4, rate_per_s=20.0)
    extra = model.tenant_calls("t-0010", START, 1800, 9.0, stream=1)
    assert set(extra["tenant"]) == {"t-0010"}
    expected = 9.0 * model.expected_rate(START + 900_000, "t-0010") * 1800
    assert extra.height == pytest.approx(expected, rel=0.15)
    base_ids = set(model.calls(START, 1800)["span_id"])
    assert base_ids.isdisjoint(set(extra["span_id"]))
    again = TrafficModel(seed=4, rate_per_s=20.0).tenant_calls("t-0010", START, 1800, 9.0, 1)
    assert extra.equals(again)
    with pytest.raises(ValueError, match="stream"):
        model.tenant_calls("t-0010", START, 60, 2.0, stream=0)
    with pytest.raises(KeyError):
        model.tenant_calls("t-9999", START, 60, 2.0, stream=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1, "tenants": 0}, "tenants"),
        ({"seed": 1, "rate_per_s": 0.0}, "rate_per_s"),
        ({"seed": 1, "diurnal_amplitude": 1.0}, "diurnal_amplitude"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrafficModel(**kwargs)


def test_empty_window_has_the_schema() -> None:
    df = TrafficModel(seed=1, rate_per_s=0.001).calls(START, 1)
    assert df.schema == pl.Schema(CALL_SCHEMA)


def test_generation_is_fast() -> None:
    """Order-of-magnitude guard; the 200k calls/s figure is measured on an idle core."""
    model = TrafficModel(seed=9, rate_per_s=500.0)
    model.calls(START, 60)  # warm up imports and caches
    began = time.process_time()
    n = model.calls(START + 60_000, 600).height
    rate = n / (time.process_time() - began)
    assert n > 250_000
    assert rate > 100_000


def test_chunks_recut_in_end_time_order_keep_every_call() -> None:
    from spanpulse.schemas.traffic import TrafficModel, in_end_time_order

    model = TrafficModel(seed=3, tenants=20, rate_per_s=5.0)
    chunks = list(model.iter_calls(1_741_075_200_000, 600.0, chunk_s=60.0))
    recut = list(in_end_time_order(iter(chunks)))
    ends = pl.concat(recut)["end_time_ms"]
    assert ends.is_sorted()  # no call ends before one emitted earlier
    original = pl.concat(chunks).sort(["trace_id", "span_id"])
    assert pl.concat(recut).sort(["trace_id", "span_id"]).equals(original)  # nothing lost or added
    by_start = pl.concat(chunks)["end_time_ms"]
    assert not by_start.is_sorted()  # the problem the re-cut solves exists in the fixture

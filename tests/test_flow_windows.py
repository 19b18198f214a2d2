"""The rollup dataflow end to end in-process: windows, lateness, slowest-partition watermarks."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from bytewax.testing import run_main

from spanpulse.flows.rollup import FlowParams, FlowSinks, build_flow
from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.batch import BatchProcessor
from tests.memsource import FakeDecoder, ListSink, MemorySource, batches_for

MIN = 60_000
T0 = 1_790_000_000_000 - (1_790_000_000_000 % MIN)
GRAINS = (("tenant",), ("tenant", "model"), ("model",), ("feature", "prompt_version"))


def _rows(n: int, seed: int, start: int, span_ms: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "end_time_ms": int(start + rng.integers(0, span_ms)),
            "trace_id": f"{seed:08x}{i:024x}",
            "span_id": f"{i:016x}",
            "tenant": str(rng.choice(["acme", "globex", "initech"])),
            "model": str(rng.choice(["gpt-4o", "claude-sonnet-4"])),
            "feature": "chat",
            "prompt_version": str(rng.choice(["v1", "v2"])),
            "input_tokens": int(rng.integers(1, 4000)),
            "output_tokens": int(rng.integers(0, 400)),
            "finish_class": str(rng.choice(["stop", "length", "tool_calls"])),
            "is_error": bool(rng.random() < 0.05),
            "is_refusal": False,
            "parse_attempt": False,
            "parse_failure": False,
            "latency_s": float(rng.random() * 2),
            "cost_nanos": int(rng.integers(0, 10**6)),
        }
        for i in range(n)
    ]


def _run(parts: dict[str, list], lateness_ms: int = 10_000):
    agg = Aggregator(grains=GRAINS, window_ms=MIN)
    src = MemorySource(parts)
    params = FlowParams(
        BatchProcessor({"fake": FakeDecoder()}, agg),
        src.partition_ids(),
        MIN,
        lateness_ms,
        30_000,
        GRAINS,
    )
    rollups, dead = ListSink(), ListSink()
    run_main(build_flow(params, src, FlowSinks(rollups, dead)))
    finals = [rows for tag, rows in rollups.items if tag == "final"]
    late = [rows for tag, rows in rollups.items if tag != "final"]
    return (pl.concat(finals) if finals else pl.DataFrame()), late


def _expected(rows: list[dict]) -> pl.DataFrame:
    df = pl.DataFrame(rows).with_columns(((pl.col("end_time_ms") // MIN) * MIN).alias("ws"))
    return (
        df.group_by("ws", "tenant")
        .agg(pl.len().alias("calls"), pl.col("input_tokens").sum())
        .sort("ws", "tenant")
    )


def test_backlog_on_partitions_read_at_different_speeds_loses_nothing():
    # Partition 0 holds 6 hours, partition 1 only the first 10 minutes, in big batches:
    # a per-key watermark following the fastest partition would make most of p1 late.
    p0 = sorted(_rows(3000, 1, T0, 6 * 3600_000), key=lambda r: r["end_time_ms"])
    p1 = sorted(_rows(3000, 2, T0, 10 * MIN), key=lambda r: r["end_time_ms"])
    finals, late = _run({"t#0": batches_for("t#0", p0, 500), "t#1": batches_for("t#1", p1, 50)})
    assert late == []
    got = (
        finals.filter(pl.col("grain") == "tenant")
        .select(
            pl.col("window_start").dt.epoch("ms").alias("ws"), "tenant", "calls", "input_tokens"
        )
        .sort("ws", "tenant")
    )
    assert got.equals(_expected(p0 + p1))


def test_every_grain_reconciles_to_the_same_totals():
    # Unsorted over 20 minutes: many records end up late; on-time + late rows still reconcile.
    rows = _rows(2000, 3, T0, 20 * MIN)
    finals, late = _run({"t#0": batches_for("t#0", rows, 137)})
    assert late, "shuffled input with 10 s lateness must produce late rows"
    every = pl.concat([finals, *late])
    sums = every.group_by("grain").agg(
        pl.col("calls", "input_tokens", "output_tokens", "cost_nanos").sum()
    )
    assert sums.height == len(GRAINS)
    for col in ("calls", "input_tokens", "output_tokens", "cost_nanos"):
        assert sums[col].n_unique() == 1
    assert sums["calls"][0] == 2000
    assert sums["cost_nanos"][0] == sum(r["cost_nanos"] for r in rows)


def test_batch_boundaries_do_not_change_the_output():
    rows = sorted(_rows(1500, 4, T0, 15 * MIN), key=lambda r: r["end_time_ms"])
    a, _ = _run({"t#0": batches_for("t#0", rows, 1500)})
    b, _ = _run(
        {"t#0": batches_for("t#0", rows[:700], 7)[:-1] + batches_for("t#0", rows[700:], 91)}
    )
    key = ["grain", "window_start", "tenant", "model", "feature", "prompt_version"]
    assert a.sort(key, nulls_last=True).equals(b.sort(key, nulls_last=True))


def test_records_behind_the_partition_watermark_are_late_and_kept():
    on_time = [r | {"end_time_ms": T0 + 10 * MIN + i} for i, r in enumerate(_rows(100, 5, T0, 1))]
    stragglers = [r | {"end_time_ms": T0 + i} for i, r in enumerate(_rows(7, 6, T0, 1))]
    parts = {"t#0": batches_for("t#0", on_time, 100)[:-1] + batches_for("t#0", stragglers, 7)}
    finals, late = _run(parts, lateness_ms=30_000)
    assert int(finals.filter(pl.col("grain") == "tenant")["calls"].sum()) == 100
    late_rows = pl.concat(late)
    assert late_rows["grain"].n_unique() == len(GRAINS)
    assert late_rows["late"].all()
    assert int(late_rows.filter(pl.col("grain") == "tenant")["calls"].sum()) == 7
    assert late_rows["window_start"].dt.epoch("ms").unique().to_list() == [T0]


@pytest.mark.parametrize("lateness_ms", [0, 45_000])
def test_out_of_order_within_lateness_is_on_time(lateness_ms):
    base = _rows(50, 7, T0 + 5 * MIN, 1)
    rows = [r | {"end_time_ms": T0 + 5 * MIN + 50_000} for r in base[:25]]
    rows += [r | {"end_time_ms": T0 + 5 * MIN + 20_000} for r in base[25:]]  # 30 s back
    finals, late = _run(
        {"t#0": batches_for("t#0", rows[:25], 25)[:-1] + batches_for("t#0", rows[25:], 25)},
        lateness_ms,
    )
    # Windows are judged by the watermark *before* each batch, so same-window disorder is never late.
    assert late == []
    assert int(finals.filter(pl.col("grain") == "tenant")["calls"].sum()) == 50

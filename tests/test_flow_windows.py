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
    late = [(tag, rows) for tag, rows in rollups.items if tag != "final"]
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
    every = pl.concat([finals, *(rows for _tag, rows in late)])
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


def test_batch_boundaries_change_neither_late_rows_nor_their_files():
    # Up to 3 minutes out of order with 10 s of lateness: many records are late.  Cut into
    # batches three ways, on-time windows and late groups (rows and file tags) are equal.
    rows = _rows(1000, 8, T0, 15 * MIN)
    arrival = np.array([r["end_time_ms"] for r in rows]) + np.random.default_rng(9).integers(
        0, 3 * MIN, len(rows)
    )
    rows = [rows[i] for i in np.argsort(arrival, kind="stable")]
    runs = [_run({"t#0": batches_for("t#0", rows, n)}) for n in (1000, 97, 13)]
    key = ["grain", "window_start", "tenant", "model", "feature", "prompt_version"]
    (finals, late), *others = runs
    assert 200 < sum(_calls(r) for _tag, r in late) < 800
    for other_finals, other_late in others:
        assert finals.sort(key, nulls_last=True).equals(other_finals.sort(key, nulls_last=True))
        files, other_files = _by_tag(late), _by_tag(other_late)
        assert files.keys() == other_files.keys()
        assert all(files[f].equals(other_files[f]) for f in files)


def _calls(rows: pl.DataFrame) -> int:
    return int(rows.filter(pl.col("grain") == "tenant")["calls"].sum())


def _by_tag(items: list[tuple[str, pl.DataFrame]]) -> dict[tuple[str, str, object], pl.DataFrame]:
    """Late items by file (tag, grain, window); each file must come exactly once."""
    out = {}
    for tag, rows in items:
        for (ws,), window in rows.group_by("window_start"):
            file = (tag, rows["grain"][0], ws)
            assert file not in out, f"late file {file} emitted twice"
            out[file] = window.sort(
                ["tenant", "model", "feature", "prompt_version"], nulls_last=True
            )
    return out


def test_records_behind_the_partition_watermark_are_late_and_kept():
    on_time = [r | {"end_time_ms": T0 + 10 * MIN + i} for i, r in enumerate(_rows(100, 5, T0, 1))]
    stragglers = [r | {"end_time_ms": T0 + i} for i, r in enumerate(_rows(7, 6, T0, 1))]
    parts = {"t#0": batches_for("t#0", on_time, 100)[:-1] + batches_for("t#0", stragglers, 7)}
    finals, late = _run(parts, lateness_ms=30_000)
    assert int(finals.filter(pl.col("grain") == "tenant")["calls"].sum()) == 100
    late_rows = pl.concat(rows for _tag, rows in late)
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
    # A record is judged by the sealed point just before it (a window boundary at least
    # `lateness` behind the largest end time so far): disorder within the window is never late.
    assert late == []
    assert int(finals.filter(pl.col("grain") == "tenant")["calls"].sum()) == 50

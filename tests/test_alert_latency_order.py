"""A closed window reaches the detectors before its Parquet files are written (issue 6).

A Bytewax worker runs ready steps in the order they were created; detection is wired first so
that alerts do not wait for the rollup files and the rollup metrics (~0.1 s per window on the
live job).  The outputs themselves are unchanged: the same rows reach both.
"""

from __future__ import annotations

import polars as pl
from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from spanpulse.flows.rollup import FlowParams, FlowSinks, NullObserver, build_flow
from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.batch import BatchProcessor
from tests.memsource import FakeDecoder, ListSink, MemorySource, batches_for

MIN = 60_000
T0 = 1_790_000_000_000 - (1_790_000_000_000 % MIN)
GRAINS = (("tenant",), ("tenant", "model"), ("model",))


def _rows(minutes: int, per_minute: int) -> list[dict]:
    return [
        {
            "end_time_ms": T0 + m * MIN + i * (MIN // per_minute),
            "trace_id": f"{m:08x}{i:024x}",
            "span_id": f"{m:08x}{i:08x}",
            "tenant": ("acme", "globex")[i % 2],
            "model": ("gpt-4o", "claude-sonnet-4")[i % 3 % 2],
            "feature": "chat",
            "prompt_version": "v1",
            "input_tokens": 100 + i,
            "output_tokens": 10,
            "finish_class": "stop",
            "is_error": False,
            "is_refusal": False,
            "parse_attempt": False,
            "parse_failure": False,
            "latency_s": 0.5,
            "cost_nanos": 1000,
        }
        for m in range(minutes)
        for i in range(per_minute)
    ]


class _LogPart(StatelessSinkPartition[tuple[str, pl.DataFrame]]):
    def __init__(self, log: list[tuple[str, int]], what: str) -> None:
        self.log, self.what = log, what

    def write_batch(self, items: list[tuple[str, pl.DataFrame]]) -> None:
        for tag, rows in items:
            if tag == "final":
                self.log.append((self.what, _start(rows)))


class _LogSink(DynamicSink[tuple[str, pl.DataFrame]]):
    def __init__(self, log: list[tuple[str, int]], what: str) -> None:
        self.log, self.what = log, what

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LogPart:
        return _LogPart(self.log, self.what)


def _start(rows: pl.DataFrame) -> int:
    return int(rows["window_start"][0].timestamp() * 1000)


def test_each_window_reaches_detection_before_its_rollup_files() -> None:
    log: list[tuple[str, int]] = []
    windows_seen: list[pl.DataFrame] = []

    def windows(flow: Dataflow, stream: Stream[pl.DataFrame]) -> None:
        def record(_step: str, rows: pl.DataFrame) -> None:
            log.append(("detect", _start(rows)))
            windows_seen.append(rows)

        op.inspect("record_window", stream, record)

    agg = Aggregator(grains=GRAINS, window_ms=MIN)
    # Batches of 20 s of calls: each window closes on its own, while later data streams in.
    src = MemorySource({"t#0": batches_for("t#0", _rows(5, 60), 20)})
    params = FlowParams(
        BatchProcessor({"fake": FakeDecoder()}, agg), src.partition_ids(), MIN, 10_000, 30_000,
        GRAINS,
    )  # fmt: skip
    sinks = FlowSinks(_LogSink(log, "rollup"), ListSink(), windows, NullObserver(), ListSink())
    run_main(build_flow(params, src, sinks))

    starts = [T0 + m * MIN for m in range(5)]
    assert sorted({ws for what, ws in log if what == "detect"}) == starts
    for ws in starts:
        first_detect = log.index(("detect", ws))
        first_file = log.index(("rollup", ws))
        assert first_detect < first_file, f"window {ws}: {log}"
    # Detection still sees every grain's rows of each window (60 calls per window and grain).
    for rows in windows_seen:
        assert sorted(rows["grain"].unique()) == ["model", "tenant", "tenant.model"]
        per_grain = rows.group_by("grain").agg(pl.col("calls").sum())
        assert per_grain["calls"].to_list() == [60, 60, 60]

"""Cross-batch de-duplication in the dataflow: counting, accounting, recovery and config."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from bytewax.inputs import AbortExecution, FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from spanpulse.config import ConfigError, DedupSettings, from_mapping
from spanpulse.flows.rollup import FlowParams, FlowSinks, build_flow
from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.batch import BatchProcessor, RawBatch
from spanpulse.sinks.observer import MetricsObserver
from tests.memsource import FakeDecoder, FakeMessage, ListSink, MemorySource

MIN = 60_000
T0 = 1_790_000_000_000 - (1_790_000_000_000 % MIN)
GRAINS = (("tenant",), ("model",))


def _span(i: int, end_ms: int) -> dict:
    return {
        "end_time_ms": end_ms,
        "trace_id": f"{i // 4:032x}",
        "span_id": f"{i:016x}",
        "tenant": "acme" if i % 3 else "globex",
        "model": "gpt-4o",
        "input_tokens": 100 + i,
        "output_tokens": 10,
        "finish_class": "stop",
        "is_error": False,
        "cost_nanos": 1000,
    }


def _batches(partition: str, groups: list[list[dict]], eof: bool = True) -> list[RawBatch]:
    topic, _, part = partition.rpartition("#")
    out, offset = [], 0
    for rows in groups:
        msgs = [FakeMessage((r,), topic, int(part), offset + i) for i, r in enumerate(rows)]
        out.append(RawBatch(partition, "fake", msgs, 0))  # type: ignore[arg-type]
        offset += len(rows)
    if eof:
        out.append(RawBatch(partition, "fake", [], 0, True))
    return out


def _params(partitions: frozenset[str], horizon_ms: int) -> FlowParams:
    agg = Aggregator(grains=GRAINS, window_ms=MIN)
    return FlowParams(
        BatchProcessor({"fake": FakeDecoder()}, agg),
        partitions,
        MIN,
        10_000,
        30_000,
        GRAINS,
        dedup_horizon_ms=horizon_ms,
    )


def _calls(items: list) -> int:
    rows = pl.concat([r for _tag, r in items]) if items else pl.DataFrame()
    return int(rows.filter(pl.col("grain") == "tenant")["calls"].sum()) if items else 0


def _run(parts: dict[str, list[RawBatch]], horizon_ms: int) -> tuple[int, MetricsObserver]:
    src = MemorySource(parts)
    rollups, dead, obs = ListSink(), ListSink(), MetricsObserver(None)
    params = _params(src.partition_ids(), horizon_ms)
    run_main(build_flow(params, src, FlowSinks(rollups, dead, observer=obs)))
    return _calls(rollups.items), obs


def test_a_span_in_two_batches_is_counted_once_and_reported_skipped():
    spans = [_span(i, T0 + 1000 * i) for i in range(30)]
    retried = spans[10:20]  # a producer retry: the same spans again, two batches later
    parts = {
        "t#0": _batches("t#0", [spans[:10], spans[10:20], spans[20:], retried]),
        "t#1": _batches("t#1", [[_span(100 + i, T0 + 500 * i) for i in range(5)]]),
    }
    calls, obs = _run(parts, horizon_ms=10 * MIN)
    stats = obs.stats
    assert calls == 35
    assert dict(stats.skipped) == {"duplicate_span": 10}
    assert stats.spans_seen == stats.records + sum(stats.skipped.values()) == 45
    # The same stream without cross-batch de-duplication counts the retry twice.
    calls_off, obs_off = _run(parts, horizon_ms=0)
    assert (calls_off, dict(obs_off.stats.skipped)) == (45, {})


def test_ids_are_per_partition_and_a_stale_copy_is_counted():
    spans = [_span(i, T0 + 1000 * i) for i in range(5)]
    late = [_span(900, T0 + 20 * MIN)]
    parts = {
        "t#0": _batches("t#0", [spans, late, spans[:1]]),  # copy 20 min behind: past a 5 m horizon
        "t#1": _batches("t#1", [spans[1:2]]),  # the same id on another partition: not a copy
    }
    calls, obs = _run(parts, horizon_ms=5 * MIN)
    assert calls == 8
    assert dict(obs.stats.skipped) == {}


# ----------------------------------------------------------------------------- recovery


@dataclass
class _Script:
    """Batches of one partition; abort once at ``abort_at``; pause after ``pause_after``."""

    batches: list[RawBatch]
    abort_at: int
    pause_after: int
    resumed_at: list[int | None] = field(default_factory=list)
    aborted: bool = False


class _ScriptPart(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, script: _Script, start: int) -> None:
        self.script, self.i = script, start

    def next_batch(self) -> list[RawBatch]:
        s = self.script
        if self.i == s.abort_at and not s.aborted:
            s.aborted = True
            raise AbortExecution  # a crash: whatever came after the last snapshot is replayed
        if self.i >= len(s.batches):
            raise StopIteration
        if self.i == s.pause_after + 1:
            import time

            time.sleep(1.5)  # longer than the epoch: the next snapshot falls here
        self.i += 1
        return [s.batches[self.i - 1]]

    def snapshot(self) -> int:
        return self.i


class _ScriptSource(FixedPartitionedSource[RawBatch, int]):
    def __init__(self, partition: str, script: _Script) -> None:
        self.partition, self.script = partition, script

    def list_parts(self) -> list[str]:
        return [self.partition]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ScriptPart:
        self.script.resumed_at.append(resume_state)
        return _ScriptPart(self.script, resume_state or 0)


def test_resume_replays_spans_without_taking_them_for_copies(tmp_path: Path):
    # Batch 0 holds the original of a span retried in the last batch; batches 1-5 are read
    # after the snapshot that follows batch 0 and before the crash, so they are replayed.
    spans = [_span(i, T0 + 1000 * i) for i in range(24)]
    groups = [spans[:4], *(spans[4 * k : 4 * k + 4] for k in range(1, 6)), spans[:2]]
    script = _Script(_batches("t#0", groups), abort_at=6, pause_after=0)
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    params = _params(frozenset({"t#0"}), horizon_ms=10 * MIN)  # the same objects in both runs
    src = _ScriptSource("t#0", script)
    rollups, dead, obs = ListSink(), ListSink(), MetricsObserver(None)
    flow = build_flow(params, src, FlowSinks(rollups, dead, observer=obs))
    for _run_no in range(2):
        run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=recovery)
    assert script.aborted
    first, second = script.resumed_at
    assert first is None and second is not None and 0 < second < 6, script.resumed_at
    assert _calls(rollups.items) == 24  # not fewer (replay) and not more (the retry)
    assert obs.stats.skipped["duplicate_span"] == 2


# ----------------------------------------------------------------------------- config


def test_dedup_config_defaults_and_overrides():
    assert from_mapping({}).dedup == DedupSettings(horizon_ms=600_000, max_ids=1_000_000)
    s = from_mapping({"dedup": {"horizon": "0s", "max_ids": 5000}})
    assert (s.dedup.horizon_ms, s.dedup.max_ids) == (0, 5000)
    assert from_mapping({"dedup": {"horizon": "2m"}}).dedup.horizon_ms == 120_000


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"horizon": "soon"}, "dedup.horizon: expected a duration"),
        ({"max_ids": 0}, "dedup.max_ids: expected a positive integer"),
        ({"max_ids": "many"}, "dedup.max_ids: expected a positive integer"),
        ({"window": "1m"}, "dedup.window: unknown key; valid keys here are horizon, max_ids"),
    ],
)
def test_dedup_config_errors_name_the_key(table, error):
    with pytest.raises(ConfigError, match=error.replace("(", r"\(")):
        from_mapping({"dedup": table})

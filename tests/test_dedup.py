"""Cross-batch de-duplication: the per-span rule, its bounds, its state and its hash."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.batch import BatchProcessor, RawBatch
from spanpulse.schemas.dedup import SeenSpanIds, drop_duplicates, span_hashes, state_version
from tests.memsource import FakeDecoder, FakeMessage

MIN = 60_000


def _frame(ids: list[tuple[str | None, str | None]], ends: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"trace_id": [t for t, _ in ids], "span_id": [s for _, s in ids], "end_time_ms": ends},
        schema={"trace_id": pl.String, "span_id": pl.String, "end_time_ms": pl.Int64},
    )


def _reference(ids: list[int], ends: list[int], horizon: int) -> list[bool]:
    """The module's rule, span by span, with an unbounded dict: the oracle."""
    last: dict[int, int] = {}
    progress = None
    out = []
    for i, e in zip(ids, ends, strict=True):
        progress = e if progress is None else max(progress, e)
        out.append(i in last and last[i] >= progress - horizon)
        last[i] = max(last.get(i, e), e)
    return out


def _stream(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Roughly time-ordered spans, ~20 % of them copies delivered up to 400 positions later."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    ends = np.sort(rng.integers(0, 30 * MIN, n)) + rng.integers(-5_000, 5_000, n)
    copies = rng.random(n) < 0.2
    for i in np.flatnonzero(copies):
        j = min(n - 1, i + int(rng.integers(1, 400)))
        ids[j], ends[j] = ids[i], ends[i]
    return ids, ends.astype(np.int64)


def test_a_span_delivered_again_in_a_later_batch_is_dropped():
    seen = SeenSpanIds(horizon_ms=MIN, max_ids=100)
    first = _frame([("t1", "s1"), ("t1", "s2")], [1000, 2000])
    kept, dropped = drop_duplicates(first, seen)
    assert (kept.height, dropped) == (2, 0)
    again = _frame([("t1", "s2"), ("t1", "s3"), ("t2", "s1")], [2000, 3000, 3000])
    kept, dropped = drop_duplicates(again, seen)
    assert dropped == 1
    assert kept.select("trace_id", "span_id").rows() == [("t1", "s3"), ("t2", "s1")]


def test_copies_within_a_batch_keep_the_first_and_missing_ids_are_never_duplicates():
    seen = SeenSpanIds(horizon_ms=MIN, max_ids=100)
    batch = _frame([("t", "a"), (None, "a"), ("t", "a"), (None, "a"), ("t", None)], [1, 2, 3, 4, 5])
    kept, dropped = drop_duplicates(batch, seen)
    assert dropped == 1
    assert kept["end_time_ms"].to_list() == [1, 2, 4, 5]
    _, dropped = drop_duplicates(batch, seen)
    assert dropped == 2  # both ("t", "a") rows now; rows without both ids still pass
    assert len(seen) == 1


def test_a_copy_older_than_the_horizon_is_counted_as_usual():
    seen = SeenSpanIds(horizon_ms=MIN, max_ids=100)
    drop_duplicates(_frame([("t", "old")], [0]), seen)
    drop_duplicates(_frame([("t", "new")], [MIN]), seen)  # progress exactly one horizon on
    assert drop_duplicates(_frame([("t", "old")], [0]), seen)[1] == 1  # still within
    drop_duplicates(_frame([("t", "newer")], [MIN + 1]), seen)
    kept, dropped = drop_duplicates(_frame([("t", "old")], [0]), seen)
    assert (kept.height, dropped) == (1, 0)


def test_progress_inside_a_batch_counts_span_by_span():
    # The copy comes after a span that moves the partition past the original's horizon.
    seen = SeenSpanIds(horizon_ms=MIN, max_ids=100)
    drop_duplicates(_frame([("t", "a")], [0]), seen)
    ids, _ = span_hashes(_frame([("t", "a"), ("t", "b"), ("t", "a")], [0, 0, 0]))
    dup = seen.check_and_add(ids, np.array([0, 2 * MIN, 0]))
    assert dup.tolist() == [True, False, False]  # the first copy is dropped, the second is not


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decisions_match_the_reference_rule_whatever_the_batch_cuts(seed):
    ids, ends = _stream(seed)
    want = _reference(ids.tolist(), ends.tolist(), horizon=2 * MIN)
    assert 100 < sum(want) < 600  # the fixture has copies inside and outside the horizon
    rng = np.random.default_rng(seed)
    for _ in range(3):
        seen = SeenSpanIds(horizon_ms=2 * MIN, max_ids=10_000, run_ids=256)
        cuts = np.sort(rng.choice(np.arange(1, ids.size), size=40, replace=False))
        got = [
            seen.check_and_add(i, e)
            for i, e in zip(np.split(ids, cuts), np.split(ends, cuts), strict=True)
        ]
        assert np.concatenate(got).tolist() == want


def test_memory_is_bounded_by_the_horizon_and_by_max_ids():
    ids, ends = _stream(4, n=20_000)
    ends = np.sort(ends)  # 30 minutes of traffic, ~11 spans per second
    by_horizon = SeenSpanIds(horizon_ms=MIN, max_ids=100_000, run_ids=512)
    by_count = SeenSpanIds(horizon_ms=10**9, max_ids=1000, run_ids=128)
    peak = 0
    for i, e in zip(np.array_split(ids, 200), np.array_split(ends, 200), strict=True):
        by_horizon.check_and_add(i, e)
        by_count.check_and_add(i, e)
        peak = max(peak, len(by_horizon))
        assert len(by_count) <= 1000
    assert peak < 2 * 20_000 / 30 + 2 * 512  # about a minute of ids, plus unmerged runs
    assert by_horizon.forgotten == 0
    assert by_count.forgotten + len(by_count) >= np.unique(ids).size  # every id went in once


def test_forgotten_ids_are_the_oldest_ones():
    seen = SeenSpanIds(horizon_ms=10**9, max_ids=10, run_ids=4)
    for k in range(20):
        seen.check_and_add(np.array([k], np.uint64), np.array([k], np.int64))
    assert seen.check_and_add(np.arange(20, dtype=np.uint64), np.full(20, 20)).tolist() == [
        *[False] * 10,
        *[True] * 10,
    ]


def test_snapshot_round_trip_continues_identically_and_is_compact():
    ids, ends = _stream(5, n=20_000)
    a = SeenSpanIds(horizon_ms=10**9, max_ids=50_000, run_ids=2048)
    a.check_and_add(ids[:15_000], ends[:15_000])
    blob = pickle.dumps(a)
    assert len(blob) < 16 * len(a) + 4096  # flat arrays, not a set of Python ints
    b = pickle.loads(blob)
    assert (b.version, len(b), b.watermark_ms) == (a.version, len(a), a.watermark_ms)
    rest = ids[15_000:], ends[15_000:]
    assert np.array_equal(a.check_and_add(*rest), b.check_and_add(*rest))


def test_reconfiguring_applies_a_smaller_horizon_to_restored_state():
    seen = SeenSpanIds(horizon_ms=10 * MIN, max_ids=100)
    for k in range(10):
        seen.check_and_add(np.array([k], np.uint64), np.array([k * MIN], np.int64))
    seen.configure(horizon_ms=2 * MIN, max_ids=100)
    again = seen.check_and_add(np.array([6, 7], np.uint64), np.array([6 * MIN, 7 * MIN]))
    assert again.tolist() == [False, True]
    seen.configure(horizon_ms=2 * MIN, max_ids=3)
    assert len(seen) <= 3
    with pytest.raises(ValueError, match="horizon_ms and max_ids must be > 0"):
        seen.configure(horizon_ms=0, max_ids=100)


_HASH_SCRIPT = """
import polars as pl
from spanpulse.schemas.dedup import span_hashes
df = pl.DataFrame({"trace_id": ["a" * 32, "0af7651916cd43dd8448eb211c80319c", None],
                   "span_id": ["b7ad6b7169203331", "00f067aa0ba902b7", "x"]})
print(span_hashes(df)[0].tolist())
"""


def test_the_id_hash_is_the_same_in_another_process_with_another_hash_seed():
    df = pl.DataFrame(
        {
            "trace_id": ["a" * 32, "0af7651916cd43dd8448eb211c80319c", None],
            "span_id": ["b7ad6b7169203331", "00f067aa0ba902b7", "x"],
        }
    )
    here, known = span_hashes(df)
    assert known.tolist() == [True, True, False]
    assert len(set(here.tolist())) == 3
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", _HASH_SCRIPT],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        assert out.stdout.strip() == str(here.tolist())
    assert state_version().endswith(pl.__version__)


def _raw(rows: list[dict], first_offset: int) -> RawBatch:
    msgs = [FakeMessage((r,), "t", 0, first_offset + i) for i, r in enumerate(rows)]
    return RawBatch("t#0", "fake", msgs, 0)  # type: ignore[arg-type]


def test_the_processor_counts_dropped_copies_as_skipped_duplicate_spans():
    rows = [
        {"end_time_ms": 1000 * k, "trace_id": "t", "span_id": f"s{k}", "input_tokens": 10}
        for k in range(4)
    ]
    proc = BatchProcessor({"fake": FakeDecoder()}, Aggregator(grains=(("tenant",),), window_ms=MIN))
    seen = SeenSpanIds(horizon_ms=MIN, max_ids=100)
    proc.preaggregate(proc.decode(_raw(rows[:3], 0)), seen)
    out = proc.preaggregate(proc.decode(_raw([rows[2], rows[1], rows[3]], 3)), seen)
    assert (out.spans_seen, out.records, dict(out.skipped)) == (3, 1, {"duplicate_span": 2})
    assert out.max_event_ms == 3000
    assert int(out.partials["calls"].sum()) == 1
    assert out.seen_ids == 4
    repeat = proc.preaggregate(proc.decode(_raw([rows[3]], 6)), seen)
    assert (repeat.records, repeat.max_event_ms, repeat.partials.height) == (0, None, 0)

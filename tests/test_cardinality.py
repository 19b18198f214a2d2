"""CardinalityLimiter: exact totals, bounded values and state, stickiness, recovery."""

from __future__ import annotations

import pickle
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spanpulse.schemas.cardinality import CardinalityLimiter
from spanpulse.schemas.histogram import HIST_DTYPE, merge_counts
from spanpulse.schemas.record import DIMENSIONS, OTHER, UNKNOWN
from spanpulse.schemas.rollup_schema import ADDITIVE_COLUMNS, HIST_COLUMNS, ROLLUP_SCHEMA

T0 = datetime(2024, 5, 1, tzinfo=UTC)
WINDOW = timedelta(minutes=1)
SUMMED = [c for c in ADDITIVE_COLUMNS if c != "overflow_calls"]


def window_rows(
    window: int,
    calls: Mapping[tuple[str, ...], int],
    dims: Sequence[str] = ("tenant",),
    *,
    late: bool = False,
) -> pl.DataFrame:
    """Rollup rows of one window; every counter and histogram is derived from ``calls``."""
    keys = list(calls)
    frame = pl.DataFrame(
        {**{d: [k[i] for k in keys] for i, d in enumerate(dims)}, "calls": list(calls.values())},
        schema={**dict.fromkeys(dims, pl.String()), "calls": pl.Int64()},
    )
    return rollup_frame(frame.with_columns(pl.lit(window).alias("window")), dims, late=late)


def rollup_frame(frame: pl.DataFrame, dims: Sequence[str], *, late: bool = False) -> pl.DataFrame:
    """Contract rows from a frame of ``window`` (index), dimension values and ``calls``."""
    c = pl.col("calls")
    start = pl.lit(T0) + pl.duration(minutes=pl.col("window"))
    label = pl.concat_str([pl.col(d) for d in dims], separator="|")
    frame = frame.with_columns(
        start.alias("window_start"),
        (start + WINDOW).alias("window_end"),
        pl.lit(".".join(dims)).alias("grain"),
        pl.lit(late).alias("late"),
        *(pl.lit(None, pl.String()).alias(d) for d in DIMENSIONS if d not in dims),
        *(((c * (j + 3)) % 1009).alias(col) for j, col in enumerate(SUMMED) if col != "calls"),
        pl.lit(0).alias("overflow_calls"),
        pl.concat_list(
            pl.format("{}@{}/{}", label, pl.col("window"), pl.lit(i)) for i in range(2)
        ).alias("exemplar_trace_ids"),
    )
    counts = frame["calls"].to_numpy()
    usd = pl.Series(frame["cost_nanos"].to_numpy() / 1e9)
    hists = [hist_series(col, counts, h) for h, col in enumerate(HIST_COLUMNS)]
    return frame.with_columns(*hists, cost_usd=usd).select(
        pl.col(n).cast(t) for n, t in ROLLUP_SCHEMA.items()
    )


def hist_series(name: str, calls: np.ndarray, shift: int) -> pl.Series:
    """Two cells per row (``calls`` in one bucket, 1 in another); empty when calls is 0.

    Built through Arrow: Polars list-of-struct expressions are slow on a million rows.
    """
    nonzero = calls > 0
    buckets = np.stack([calls % 7 + shift, calls % 3 + 40], axis=1)[nonzero].ravel()
    counts = np.stack([calls, np.ones_like(calls)], axis=1)[nonzero].ravel()
    offsets = np.concatenate([[0], np.cumsum(np.where(nonzero, 2, 0))]).astype(np.int32)
    cells = pa.StructArray.from_arrays(
        [pa.array(buckets.astype(np.int32)), pa.array(counts.astype(np.int64))], names=["b", "n"]
    )
    return pl.Series(name, pa.ListArray.from_arrays(pa.array(offsets), cells)).cast(HIST_DTYPE)


def hist_totals(frame: pl.DataFrame) -> dict[str, dict[int, int]]:
    return {h: merge_counts(frame[h].to_list()) for h in HIST_COLUMNS}


def assert_totals_preserved(before: pl.DataFrame, after: pl.DataFrame) -> None:
    for col in SUMMED:
        assert after[col].sum() == before[col].sum(), col
    assert hist_totals(after) == hist_totals(before)
    assert np.allclose(after["cost_usd"].to_numpy(), after["cost_nanos"].to_numpy() / 1e9)


def values(frame: pl.DataFrame, dim: str) -> set[str]:
    return set(frame[dim].drop_nulls().to_list()) - {OTHER, UNKNOWN}


# -- exact totals under hostile input ----------------------------------------------------------

KEYS = st.tuples(
    st.sampled_from([f"t{i}" for i in range(12)] + [UNKNOWN]),
    st.sampled_from([f"m{i}" for i in range(6)]),
)
WINDOWS = st.lists(
    st.tuples(
        st.integers(0, 3),  # gap before the window (0 = next window)
        st.dictionaries(KEYS, st.integers(0, 1000), min_size=1, max_size=30),
        st.booleans(),  # also send a late batch for an earlier window
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(
    windows=WINDOWS,
    tenant_limit=st.integers(1, 4),
    model_limit=st.integers(1, 3),
    series_limit=st.integers(1, 8),
    admit_after=st.integers(1, 2),
    evict_after=st.integers(1, 3),
    decay=st.sampled_from([0.5, 0.9, 1.0]),
)
def test_totals_exact_and_bounds_hold_under_random_input(
    windows: list[tuple[int, dict[tuple[str, ...], int], bool]],
    tenant_limit: int,
    model_limit: int,
    series_limit: int,
    admit_after: int,
    evict_after: int,
    decay: float,
) -> None:
    dims = ("tenant", "model")
    limiter = CardinalityLimiter(
        dims,
        {"tenant": tenant_limit, "model": model_limit},
        series_limit,
        decay=decay,
        admit_after=admit_after,
        evict_after=evict_after,
        idle_windows=3,
    )
    index = 0
    for gap, calls, with_late in windows:
        index += 1 + gap
        batches = [window_rows(index, calls, dims)]
        if with_late:
            batches.append(window_rows(index - 1, dict(list(calls.items())[:5]), dims, late=True))
        for rows in batches:
            out = limiter.apply(rows)
            assert_totals_preserved(rows, out)
            assert out.schema == pl.Schema(ROLLUP_SCHEMA)
            assert len(values(out, "tenant")) <= tenant_limit
            assert len(values(out, "model")) <= model_limit
            assert out.height <= series_limit
            assert out.select(pl.struct(dims).n_unique()).item() == out.height
            # admitted tuples keep their exact numbers; everything else is counted as overflow
            kept = out.filter((pl.col("tenant") != OTHER) & (pl.col("model") != OTHER))
            original = rows.join(kept.select(dims), on=list(dims))
            assert kept.sort(dims).equals(original.sort(dims))
            assert out["overflow_calls"].sum() == rows["calls"].sum() - kept["calls"].sum()
            ids = set(rows["exemplar_trace_ids"].explode().to_list())
            assert set(out["exemplar_trace_ids"].explode().drop_nulls().to_list()) <= ids
            assert out["exemplar_trace_ids"].list.len().max() <= 3
            stats = limiter.stats()
            assert stats["admitted.tenant"] <= tenant_limit
            assert stats["candidates.tenant"] <= 4 * tenant_limit
            assert stats["candidates.model"] <= 4 * model_limit


def test_reserved_values_pass_through_and_are_not_counted() -> None:
    limiter = CardinalityLimiter(("tenant",), {"tenant": 1}, 100)
    rows = window_rows(0, {("a",): 10, ("b",): 5, (UNKNOWN,): 50, (OTHER,): 7})
    out = limiter.apply(rows)
    assert out["tenant"].to_list() == [OTHER, UNKNOWN, "a"]
    assert out.filter(pl.col("tenant") == OTHER)["calls"].item() == 12
    assert out.filter(pl.col("tenant") == OTHER)["overflow_calls"].item() == 5  # only "b" folded
    assert limiter.admitted("tenant") == {"a"}
    assert_totals_preserved(rows, out)


def test_merged_rows_merge_histograms_and_keep_first_exemplars() -> None:
    limiter = CardinalityLimiter(("tenant",), {"tenant": 1}, 100, max_exemplars=3)
    rows = window_rows(0, {("a",): 100, ("b",): 3, ("c",): 2})
    out = limiter.apply(rows).filter(pl.col("tenant") == OTHER)
    assert out["calls"].item() == 5
    cells = {c["b"]: c["n"] for c in out["input_tokens_hist"].item()}
    assert cells == merge_counts(
        rows.filter(pl.col("tenant") != "a")["input_tokens_hist"].to_list()
    )
    assert [c["b"] for c in out["input_tokens_hist"].item()] == sorted(cells)
    assert out["exemplar_trace_ids"].to_list() == [["b@0/0", "b@0/1", "c@0/0"]]


def test_series_limit_folds_the_smallest_tuples() -> None:
    dims = ("tenant", "model")
    limiter = CardinalityLimiter(dims, {"tenant": 10, "model": 10}, 3)
    calls: dict[tuple[str, ...], int] = {("a", "x"): 50, ("a", "y"): 40, ("b", "x"): 30}
    calls |= {("b", "y"): 30, ("c", "z"): 1}
    rows = window_rows(0, calls, dims)
    out = limiter.apply(rows)
    assert out.select(*dims, "calls", "overflow_calls").rows() == [
        (OTHER, OTHER, 61, 61),
        ("a", "x", 50, 0),
        ("a", "y", 40, 0),
    ]
    assert limiter.stats()["series_folded_rows"] == 3
    assert_totals_preserved(rows, out)


# -- the admission policy ----------------------------------------------------------------------


def run(limiter: CardinalityLimiter, windows: Sequence[Mapping[str, int]]) -> list[set[str]]:
    """Apply one window per mapping; return the real tenant values kept in each window."""
    kept = []
    for i, calls in enumerate(windows):
        out = limiter.apply(window_rows(i, {(k,): v for k, v in calls.items()}))
        kept.append(values(out, "tenant"))
    return kept


def test_values_alternating_at_the_boundary_do_not_flap() -> None:
    windows = [{"a": 100, "b": 90} if i % 2 == 0 else {"a": 90, "b": 100} for i in range(30)]
    sticky = run(CardinalityLimiter(("tenant",), {"tenant": 1}, 10, evict_after=3), windows)
    assert sticky == [{"a"}] * 30
    # without hysteresis the same input flaps, so the assertion above can fail
    flappy = run(CardinalityLimiter(("tenant",), {"tenant": 1}, 10, evict_after=1), windows)
    assert len({frozenset(k) for k in flappy}) == 2


def test_new_heavy_hitter_replaces_incumbent_after_hysteresis() -> None:
    windows = [{"a": 100}] * 5 + [{"a": 10, "c": 1000}] * 5
    kept = run(CardinalityLimiter(("tenant",), {"tenant": 1}, 10, evict_after=3), windows)
    assert kept == [{"a"}] * 7 + [{"c"}] * 3  # c outranks a from window 5; a leaves after 3


def test_admit_after_and_min_share_delay_admission() -> None:
    windows = [{"a": 100, "b": 1}] * 4
    kept = run(CardinalityLimiter(("tenant",), {"tenant": 2}, 10, admit_after=3), windows)
    assert kept == [set(), set(), {"a", "b"}, {"a", "b"}]
    kept = run(CardinalityLimiter(("tenant",), {"tenant": 2}, 10, min_share=0.05), windows)
    assert kept == [{"a"}] * 4


def test_idle_values_are_evicted_and_their_slot_reused() -> None:
    limiter = CardinalityLimiter(("tenant",), {"tenant": 2}, 10, idle_windows=5)
    limiter.apply(window_rows(0, {("a",): 10, ("b",): 10}))
    for i in range(1, 5):
        limiter.apply(window_rows(i, {("a",): 10}))
    assert limiter.admitted("tenant") == {"a", "b"}  # b idle for 4 windows: still admitted
    limiter.apply(window_rows(5, {("a",): 10}))
    assert limiter.admitted("tenant") == {"a"}
    assert limiter.stats()["candidates.tenant"] == 1
    out = limiter.apply(window_rows(6, {("a",): 10, ("c",): 1}))
    assert values(out, "tenant") == {"a", "c"}


def test_windows_without_traffic_count_toward_idleness() -> None:
    limiter = CardinalityLimiter(("tenant",), {"tenant": 2}, 10, idle_windows=5)
    limiter.apply(window_rows(0, {("a",): 10, ("b",): 10}))
    limiter.apply(window_rows(6, {("a",): 10}))  # five empty windows were never applied
    assert limiter.admitted("tenant") == {"a"}


def test_late_and_replayed_windows_never_push_out_an_incumbent() -> None:
    limiter = CardinalityLimiter(("tenant",), {"tenant": 1}, 10)
    limiter.apply(window_rows(0, {("a",): 10}))
    limiter.apply(window_rows(1, {("a",): 10}))
    before = limiter.snapshot()
    late = limiter.apply(window_rows(0, {("b",): 10_000}, late=True))
    replay = limiter.apply(window_rows(1, {("b",): 10_000}))
    after = limiter.snapshot()
    assert after["last_window"] == before["last_window"]
    assert limiter.admitted("tenant") == {"a"}
    assert after["counters"]["overflow_calls"] == 20_000
    assert late["tenant"].to_list() == replay["tenant"].to_list() == [OTHER]
    # The late traffic was counted: b outranks a at the next on-time window, and takes the slot
    # once a has been out of the top for evict_after windows (a late batch cannot evict).
    limiter.apply(window_rows(2, {("a",): 10, ("b",): 1}))
    assert limiter.admitted("tenant") == {"a"}


def test_a_value_first_seen_late_takes_a_free_slot() -> None:
    # A tenant whose exporter lags past the allowed lateness sends only late rows; with free
    # slots it must get its own label, not __other__ (the e2e run found this under load).
    limiter = CardinalityLimiter(("tenant",), {"tenant": 3}, 10)
    limiter.apply(window_rows(0, {("a",): 10}))
    limiter.apply(window_rows(1, {("a",): 10}))
    clock = limiter.snapshot()["last_window"]
    late = limiter.apply(window_rows(0, {("b",): 2, ("c",): 1, ("d",): 1}, late=True))
    # Two free slots: the busiest late value first, then ties by value.
    assert set(late["tenant"].to_list()) == {"b", "c", OTHER}
    assert limiter.admitted("tenant") == {"a", "b", "c"}
    assert limiter.snapshot()["last_window"] == clock
    # The late-admitted value keeps its slot on its next on-time window.
    out = limiter.apply(window_rows(2, {("a",): 10, ("b",): 1}))
    assert values(out, "tenant") == {"a", "b"}


def test_late_values_wait_like_on_time_ones_when_admission_is_strict() -> None:
    strict = CardinalityLimiter(("tenant",), {"tenant": 3}, 10, admit_after=2)
    strict.apply(window_rows(0, {("a",): 10}))
    late = strict.apply(window_rows(0, {("b",): 5}, late=True))
    assert late["tenant"].to_list() == [OTHER]
    floor = CardinalityLimiter(("tenant",), {"tenant": 3}, 10, min_share=0.5)
    floor.apply(window_rows(0, {("a",): 10}))
    late = floor.apply(window_rows(0, {("b",): 1}, late=True))
    assert late["tenant"].to_list() == [OTHER]


def zipf_windows(
    *, seed: int, windows: int, rows: int, a: float, max_calls: int
) -> list[dict[tuple[str, ...], int]]:
    """Skewed tenant traffic: a few heavy tenants and a long tail."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(windows):
        ids, calls = rng.zipf(a, rows), rng.integers(1, max_calls, rows)
        window: dict[tuple[str, ...], int] = {}
        for k, v in zip(ids, calls, strict=True):
            window[(f"t{int(k)}",)] = int(v)
        out.append(window)
    return out


def test_deterministic_for_the_same_input_sequence() -> None:
    windows = zipf_windows(seed=11, windows=8, rows=300, a=1.3, max_calls=50)
    outs = []
    for _ in range(2):
        limiter = CardinalityLimiter(("tenant",), {"tenant": 5}, 8)
        outs.append(([limiter.apply(window_rows(i, w)) for i, w in enumerate(windows)], limiter))
    for a, b in zip(outs[0][0], outs[1][0], strict=True):
        assert a.equals(b)
    assert outs[0][1].snapshot() == outs[1][1].snapshot()


def test_snapshot_round_trip_continues_identically() -> None:
    windows = zipf_windows(seed=5, windows=10, rows=200, a=1.5, max_calls=9)
    config = (("tenant",), {"tenant": 4}, 6)
    original = CardinalityLimiter(*config, decay=0.8)
    for i in range(5):
        original.apply(window_rows(i, windows[i]))
    state = pickle.loads(pickle.dumps(original.snapshot()))
    restored = CardinalityLimiter.from_snapshot(state, *config, decay=0.8)
    unpickled = pickle.loads(pickle.dumps(original))  # what a Bytewax stateful step stores
    assert restored.snapshot() == original.snapshot() == unpickled.snapshot()
    for i in range(5, 10):
        rows = window_rows(i, windows[i])
        expected = original.apply(rows)
        assert expected.equals(restored.apply(rows))
        assert expected.equals(unpickled.apply(rows))
    changed = CardinalityLimiter.from_snapshot(state, *config, decay=0.7)
    assert changed.stats()["admitted.tenant"] == 0  # a changed parameter starts fresh
    assert CardinalityLimiter.from_snapshot(None, *config).stats()["windows"] == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((("tenant",), {"tenant": 0}, 10), {}, "every limit"),
        ((("tenant",), {"tenant": 1}, 0), {}, "series_limit"),
        ((("user",), {}, 10), {}, "grain_dims"),
        ((("tenant",), {"tenant": 1}, 10), {"decay": 0.0}, "decay"),
        ((("tenant",), {"tenant": 1}, 10), {"min_share": 1.0}, "min_share"),
    ],
)
def test_invalid_parameters_are_named(
    args: tuple[object, ...], kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        CardinalityLimiter(*args, **kwargs)


def test_rows_of_another_grain_are_refused() -> None:
    limiter = CardinalityLimiter(("tenant",), {"tenant": 1}, 10)
    with pytest.raises(ValueError, match="grain 'tenant' got rows of grains"):
        limiter.apply(window_rows(0, {("a", "m"): 1}, ("tenant", "model")))


# -- bounded state under a flood ---------------------------------------------------------------


def flood_windows(distinct: int, windows: int, heavy: int) -> list[pl.DataFrame]:
    """``distinct`` one-call tenant ids spread over ``windows`` plus ``heavy`` steady tenants."""
    per = distinct // windows
    flood = pl.DataFrame({"i": np.arange(per * windows)}).select(
        (pl.col("i") // per).alias("window"),
        pl.format("flood-{}", pl.col("i")).alias("tenant"),
        pl.lit(1, pl.Int64).alias("calls"),
    )
    steady = pl.DataFrame(
        {
            "window": np.repeat(np.arange(windows), heavy),
            "tenant": [f"heavy-{h}" for h in range(heavy)] * windows,
            "calls": np.full(windows * heavy, 500),
        }
    )
    rows = rollup_frame(pl.concat([flood, steady], how="vertical_relaxed"), ("tenant",))
    return rows.partition_by("window_start", maintain_order=True)


def test_flood_of_distinct_ids_keeps_state_bounded() -> None:
    limit, heavy = 50, 10
    windows = flood_windows(120_000, 60, heavy)
    limiter = CardinalityLimiter(("tenant",), {"tenant": limit}, 200)
    started = time.perf_counter()
    peak = 0
    for rows in windows:
        out = limiter.apply(rows)
        stats = limiter.stats()
        peak = max(peak, stats["candidates.tenant"] + stats["admitted.tenant"])
        assert out.height <= heavy + 1
        assert out["calls"].sum() == rows["calls"].sum()
    elapsed = time.perf_counter() - started
    assert peak <= 4 * limit + limit
    assert limiter.admitted("tenant") == {f"heavy-{h}" for h in range(heavy)}
    assert limiter.stats()["overflow_calls"] == 120_000
    assert elapsed < 20

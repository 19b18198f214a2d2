"""A row's own percentiles, estimated for a whole window at once, equal the per-row path exactly.

The detector bank hands rows to the engines without their histogram cells (turning cells into
Python dicts was most of detection at 200 k calls per window); these tests hold the fast path
to the definition: :func:`with_own_percentiles` equals :func:`quantile` of each row's cells, and
a bank fed through it ends in the same state with the same alerts as engines fed full rows.
"""

from __future__ import annotations

import functools
from collections import deque
from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from spanpulse.detectors.config import DetectorConfig
from spanpulse.detectors.engine import SeriesDetector
from spanpulse.detectors.series_bank import DetectorBank
from spanpulse.detectors.signals import (
    OWN_PERCENTILES,
    PERCENTILES,
    PercentilePool,
    derive_signals,
    with_own_percentiles,
)
from spanpulse.schemas.histogram import HIST_DTYPE, merge_counts, quantile

CELLS = st.lists(
    st.tuples(st.integers(-40, 300), st.integers(0, 10**6)), max_size=12, unique_by=lambda c: c[0]
)
HIST = st.one_of(st.none(), CELLS.map(lambda cs: [{"b": b, "n": n} for b, n in sorted(cs)]))


def _frame(hists: list[list[dict[str, int]] | None]) -> pl.DataFrame:
    return pl.DataFrame({"latency_s_hist": hists}, schema={"latency_s_hist": HIST_DTYPE})


@settings(max_examples=200, deadline=None)
@given(st.lists(HIST, min_size=1, max_size=30))
def test_own_percentiles_equal_the_per_row_quantile(hists: list) -> None:
    got = with_own_percentiles(_frame(hists))[OWN_PERCENTILES["latency_p95"]].to_list()
    q = PERCENTILES["latency_p95"][1]
    assert got == [quantile(merge_counts([h]), q) if h else None for h in hists]


@settings(max_examples=100, deadline=None)
@given(st.lists(HIST, min_size=2, max_size=30), st.data())
def test_a_zero_copy_slice_reads_its_own_rows(hists: list, data: st.DataObject) -> None:
    # A slice shares the parent's Arrow buffers: its list offsets do not start at 0.
    start = data.draw(st.integers(0, len(hists) - 1))
    length = data.draw(st.integers(0, len(hists) - start))
    got = with_own_percentiles(_frame(hists).slice(start, length))
    want = [quantile(merge_counts([h]), 0.95) if h else None for h in hists[start : start + length]]
    assert got[OWN_PERCENTILES["latency_p95"]].to_list() == want


def test_unsorted_cells_take_the_per_row_path() -> None:
    hists = [[{"b": 7, "n": 1}, {"b": 2, "n": 5}], [{"b": 1, "n": 3}]]
    got = with_own_percentiles(_frame(hists))[OWN_PERCENTILES["latency_p95"]].to_list()
    assert got == [quantile(merge_counts([h]), 0.95) for h in hists]


def test_derive_signals_prefers_the_own_column_and_the_pool_skips_cells() -> None:
    # A deliberately different own value proves which one is read.
    row = {
        "calls": 100,
        "latency_s_hist": [{"b": 10, "n": 100}],
        OWN_PERCENTILES["latency_p95"]: 9.0,
    }
    assert derive_signals(row, 10)["latency_p95"] == 9.0
    pool = PercentilePool(min_calls=50)
    assert not pool.needs_cells(100)
    own = {k: None for k in OWN_PERCENTILES.values()} | {OWN_PERCENTILES["latency_p95"]: 9.0}
    assert pool.add({"calls": 100, **own}) == {"latency_p95": 9.0}
    assert pool.needs_cells(10)  # a small window is pooled from its cells
    pool.add({"calls": 10, "latency_s_hist": [{"b": 10, "n": 10}], **own})
    assert pool.needs_cells(100)  # ... and so is every window until the pool is full


def _windows() -> list[pl.DataFrame]:
    """Windows of three series: busy, pooling (small) and one that alternates."""
    t0 = datetime(2025, 3, 4, 9, tzinfo=UTC)
    frames = []
    for w in range(40):
        rows = []
        for tenant, calls in (("busy", 400), ("small", 7), ("mixed", 300 if w % 3 else 5)):
            spike = 4 if (tenant == "busy" and w >= 30) else 0
            rows.append(
                {
                    "window_start": t0 + timedelta(minutes=w),
                    "window_end": t0 + timedelta(minutes=w + 1),
                    "grain": "tenant",
                    "tenant": tenant,
                    "late": False,
                    "calls": calls,
                    "finish_length": calls // 50,
                    "latency_s_hist": [
                        {"b": 10 + (w % 4), "n": calls - calls // 10},
                        {"b": 20 + spike, "n": calls // 10},
                    ],
                    "input_tokens_hist": [{"b": 100, "n": calls}],
                }
            )
        frames.append(
            pl.DataFrame(rows).with_columns(
                pl.col("latency_s_hist").cast(HIST_DTYPE),
                pl.col("input_tokens_hist").cast(HIST_DTYPE),
            )
        )
    return frames


def test_a_bank_ends_as_engines_fed_full_rows() -> None:
    cfg = DetectorConfig()
    bank = DetectorBank(("tenant",), factory=functools.partial(SeriesDetector, cfg))
    direct: dict[str, SeriesDetector] = {}
    bank_alerts, direct_alerts = [], []
    for frame in _windows():
        bank_alerts += [a.to_dict() for a in bank.observe_window(frame)]
        for row in frame.iter_rows(named=True):
            det = direct.setdefault(row["tenant"], SeriesDetector(cfg))
            direct_alerts += [a.to_dict() for a in det.observe(row)]
    assert bank_alerts == direct_alerts
    assert bank.detectors.keys() == {(k,) for k in direct}
    for key, det in bank.detectors.items():
        assert _diff(_state(det), _state(direct[key[0]])) is None


def _state(obj: object) -> object:
    """A comparable picture of a detector's whole state (pickle bytes differ in memo layout)."""
    if isinstance(obj, dict):
        return {k: _state(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | deque):
        return [type(obj).__name__, *(_state(v) for v in obj)]
    if hasattr(obj, "__getstate__") and type(obj).__module__.startswith("spanpulse"):
        state = obj.__getstate__()
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
            state = state[1]  # slots only
        return [type(obj).__name__, _state(state)]
    return obj


def _diff(a: object, b: object, path: str = "") -> str | None:
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        for k in a.keys() | b.keys():  # type: ignore[attr-defined]
            d = _diff(a.get(k), b.get(k), f"{path}.{k}")  # type: ignore[attr-defined]
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):  # type: ignore[arg-type]
            return f"{path}: len {len(a)} != {len(b)}"  # type: ignore[arg-type]
        for i, (x, y) in enumerate(zip(a, b, strict=True)):  # type: ignore[call-overload]
            d = _diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"

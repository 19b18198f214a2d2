"""The numpy histogram helpers equal a naive per-group computation, with the edge cases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl

from spanpulse.schemas.histogram import (
    NO_BUCKET,
    grouped_hists,
    merge_hist_column,
    merge_hist_frame,
)


def _naive(groups: np.ndarray, buckets: np.ndarray, n: int) -> list[list[dict[str, int]]]:
    out: list[Counter[int]] = [Counter() for _ in range(n)]
    for g, b in zip(groups.tolist(), buckets.tolist(), strict=True):
        if b != NO_BUCKET:
            out[g][b] += 1
    return [[{"b": b, "n": c} for b, c in sorted(cnt.items())] for cnt in out]


def test_grouped_hists_equals_naive_counting_including_negative_and_missing_buckets() -> None:
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 7, 2000).astype(np.int64)
    buckets = rng.integers(-40, 40, 2000).astype(np.int64)
    buckets[rng.random(2000) < 0.1] = NO_BUCKET
    got = grouped_hists(groups, 9, buckets, "h")  # groups 7 and 8 have no values
    assert got.to_list() == _naive(groups, buckets, 9)
    assert got.to_list()[8] == []


def test_merge_hist_column_adds_counts_per_group_and_defers_null_cells() -> None:
    hists = pl.Series(
        "h",
        [[{"b": 1, "n": 2}, {"b": 3, "n": 1}], [{"b": 1, "n": 5}], [], [{"b": -2, "n": 4}]],
    )
    merged = merge_hist_column(hists, np.array([0, 0, 1, 1], dtype=np.int64), 2)
    assert merged is not None
    assert merged.to_list() == [[{"b": 1, "n": 7}, {"b": 3, "n": 1}], [{"b": -2, "n": 4}]]
    with_null = pl.Series("h", [[{"b": 1, "n": None}], [{"b": 1, "n": 1}]])
    assert merge_hist_column(with_null, np.array([0, 0], dtype=np.int64), 1) is None


def test_merge_hist_frame_gives_empty_lists_not_nulls() -> None:
    df = pl.DataFrame(
        {"k": ["a", "a", "b"], "h": [[{"b": 2, "n": 1}], [{"b": 2, "n": 3}], []]},
        schema={"k": pl.String, "h": pl.List(pl.Struct({"b": pl.Int32, "n": pl.Int64}))},
    )
    out = dict(merge_hist_frame(df, "k", ["h"]).iter_rows())
    assert out == {"a": [{"b": 2, "n": 4}], "b": []}

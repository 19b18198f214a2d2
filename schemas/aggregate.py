"""Windowed pre-aggregation and merging of LLM-call records (the vectorized hot path).

Why pre-aggregate: the dataflow never moves single spans.  Each Kafka batch is decoded into a
record frame and immediately reduced, with one Polars ``group_by`` per grain, to *partial* rows
keyed by ``(grain, window_start, dimension values)``.  Partials are exactly mergeable: every
counter is an integer sum, histograms are fixed-scale exponential histograms (bucket counts add),
and exemplars are a top-N under a total order.  Hence merging partials in any grouping and any
order yields the same final rows, bit for bit -- the property that makes crash replays and
multi-worker runs produce identical Parquet files.

How: the ``group_by`` computes the sums (Polars fast-path aggregations) and each group's rows;
histograms and exemplars are then computed for all groups at once with numpy sorts
(:func:`~.histogram.grouped_hists`, :func:`_group_heads`) and handed back as Arrow lists.
Per-group Polars expressions (``value_counts``, ``sort_by().head()`` inside ``agg``) are
evaluated group by group and cost ~10x more with the thousands of groups of a dense batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from spanpulse.schemas.histogram import (
    HIST_DTYPE,
    NO_BUCKET,
    bucket_expr,
    group_index,
    grouped_hists,
    merge_hist_column,
    merge_hist_frame,
)
from spanpulse.schemas.record import DIMENSIONS, FINISH_CLASSES, UNKNOWN
from spanpulse.schemas.rollup_schema import ROLLUP_SCHEMA, cost_usd_expr

#: Integer columns that add up when partials merge.
ADDITIVE: Final = (
    "calls", "errors", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens",
    "cost_nanos", "unpriced_calls",
    *(f"finish_{c}" for c in ("stop", "length", "content_filter", "tool_calls", "error", "other")),
    "refusals", "parse_attempts", "parse_failures", "context_fill_over_threshold",
    "latency_ms_sum", "ttft_count", "overflow_calls",
)  # fmt: skip

#: Histogram columns and the record column each one summarizes.
HISTOGRAMS: Final = {
    "input_tokens_hist": "input_tokens",
    "output_tokens_hist": "output_tokens",
    "latency_s_hist": "latency_s",
    "ttft_s_hist": "ttft_s",
    "context_fill_hist": "context_fill",
}

EXEMPLAR_DTYPE: Final = pl.List(pl.Struct({"p": pl.Int8(), "v": pl.Float64(), "t": pl.String()}))
_KEY: Final = "_k"
_ROW: Final = "_row"

#: Per-group sums of one grain (Polars fast-path aggregations only).
_SUMS: Final = (
    pl.len().cast(pl.Int64).alias("calls"),
    *(pl.col(c).fill_null(0).sum().cast(pl.Int64) for c in (
        "errors", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens",
        "cost_nanos", "unpriced_calls", *(f"finish_{c}" for c in FINISH_CLASSES),
        "refusals", "parse_attempts", "parse_failures", "context_fill_over_threshold",
        "latency_ms_sum", "ttft_count",
    )),
)  # fmt: skip


@dataclass(frozen=True)
class _Rows:
    """What every grain of one batch shares: bucket arrays and the exemplar order of the rows."""

    buckets: dict[str, npt.NDArray[np.int64]]
    ranked: npt.NDArray[np.int64]  # rows with a trace id, best exemplar first
    ex: pl.Series  # the ``ex`` struct column

    @staticmethod
    def of(prepared: pl.DataFrame) -> _Rows:
        """Extract the arrays once per batch (the exemplar order is one sort for every grain)."""
        ex = pl.col("ex")
        t = ex.struct.field("t")
        ranked = (
            prepared.lazy()
            .filter(t != "")
            .sort([ex.struct.field("p"), ex.struct.field("v"), t], descending=[False, True, False])
            .select(_ROW)
            .collect()
        )
        return _Rows(
            buckets={h: prepared.get_column(h).to_numpy().astype(np.int64) for h in HISTOGRAMS},
            ranked=ranked.to_series().to_numpy().astype(np.int64),
            ex=prepared.get_column("ex"),
        )

    def top(self, group_of: npt.NDArray[np.int64], n_rows: int, n_groups: int, n: int) -> pl.Series:
        """Each group's first ``n`` exemplars in the batch order: ``EXEMPLAR_DTYPE`` rows.

        ``group_of`` holds the group of every row once per grain (``n_rows`` per grain).
        """
        copies = group_of.size // n_rows
        picks = np.tile(self.ranked, copies)
        shifted = picks + np.repeat(np.arange(copies, dtype=np.int64) * n_rows, self.ranked.size)
        return _group_heads(self.ex, picks, group_of[shifted], n_groups, n)


def _group_heads(
    cells: pl.Series,
    picks: npt.NDArray[np.int64],
    groups: npt.NDArray[np.int64],
    n_groups: int,
    n: int,
) -> pl.Series:
    """Return lists of the first ``n`` of ``cells[picks]`` per group, in ``picks`` order.

    ``groups`` is the group of each pick; the result has ``n_groups`` rows (empty lists for
    groups without picks).
    """
    order = np.argsort(groups, kind="stable")  # by group, pick order kept within it
    groups = groups[order]
    starts = np.searchsorted(groups, np.arange(n_groups + 1, dtype=np.int64))
    keep = np.arange(groups.size) - starts[groups] < n
    offsets = np.searchsorted(groups[keep], np.arange(n_groups + 1, dtype=np.int64))
    chosen = cells.gather(picks[order][keep]).to_arrow()
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), chosen)
    return pl.Series("ex", lists).cast(EXEMPLAR_DTYPE)


def _merge_exemplars(
    ex: pl.Series, group_of: npt.NDArray[np.int64], n_groups: int, n: int
) -> pl.Series:
    """Top ``n`` distinct exemplars per group from partial rows' exemplar lists.

    Same order as the partials (failed first, then slowest, then trace id); null entries are
    dropped and a repeated (p, v, t) counts once.
    """
    lists = ex.cast(EXEMPLAR_DTYPE).to_arrow()
    cells = pl.DataFrame(
        {
            "g": group_of[pc.list_parent_indices(lists).to_numpy().astype(np.int64)],
            "ex": pl.Series(pc.list_flatten(lists)),
        }
    )
    e = pl.col("ex")
    ranked = (
        cells.lazy()
        .filter(e.is_not_null())
        .sort(
            ["g", e.struct.field("p"), e.struct.field("v"), e.struct.field("t")],
            descending=[False, False, True, False],
        )
        .unique(maintain_order=True)
        .collect()
    )
    picks = np.arange(ranked.height, dtype=np.int64)
    groups = ranked.get_column("g").to_numpy().astype(np.int64)
    return _group_heads(ranked.get_column("ex"), picks, groups, n_groups, n)


@dataclass(frozen=True)
class Aggregator:
    """Pre-aggregates record frames into partial rows and merges partials into final rows.

    Args:
        grains: group-by sets as tuples of dimension names (see ``DIMENSIONS``).
        window_ms: tumbling window length in milliseconds.
        fill_threshold: a call counts in ``context_fill_over_threshold`` above this fill ratio.
        exemplars: trace ids kept per row (failed first, then slowest, then most expensive).
    """

    grains: tuple[tuple[str, ...], ...]
    window_ms: int = 60_000
    fill_threshold: float = 0.8
    exemplars: int = 3

    def partials(self, records: pl.DataFrame) -> pl.DataFrame:
        """Reduce one batch of normalized records to partial rows for every grain."""
        if records.is_empty():
            return pl.DataFrame(schema=partial_schema())
        prepared = self._prepare(records)
        rows = _Rows.of(prepared)
        frames = [self._group(prepared, dims) for dims in self.grains]
        # Every grain's groups numbered in one sequence (grain after grain, like the concat
        # below): histograms and exemplars of all grains come from one sort each.
        firsts = np.cumsum([0] + [f.height for f in frames])
        group_of = np.concatenate(
            [group_index(f.get_column(_ROW), prepared.height) + first
             for f, first in zip(frames, firsts[:-1], strict=True)]
        )  # fmt: skip
        n_groups, n_grains = int(firsts[-1]), len(frames)
        hists = [
            grouped_hists(group_of, n_groups, np.tile(rows.buckets[h], n_grains), h)
            for h in HISTOGRAMS
        ]
        top = rows.top(group_of, prepared.height, n_groups, self.exemplars)
        merged = pl.concat([f.drop(_ROW) for f in frames], how="diagonal_relaxed")
        return _conform_partial(merged.with_columns(*hists, top))

    def _prepare(self, records: pl.DataFrame) -> pl.DataFrame:
        w = self.window_ms
        fc = pl.col("finish_class")
        failed = pl.col("is_error") | fc.is_in(["length", "content_filter"]) | pl.col("is_refusal")
        return records.with_columns(
            ((pl.col("end_time_ms") // w) * w).alias("window_start_ms"),
            *(pl.col(d).fill_null(UNKNOWN) for d in DIMENSIONS),
            *(bucket_expr(pl.col(src)).fill_null(NO_BUCKET).alias(h)
              for h, src in HISTOGRAMS.items()),
            *((fc == c).cast(pl.Int64).alias(f"finish_{c}") for c in FINISH_CLASSES),
            pl.col("is_error").cast(pl.Int64).alias("errors"),
            pl.col("is_refusal").cast(pl.Int64).alias("refusals"),
            pl.col("parse_attempt").cast(pl.Int64).alias("parse_attempts"),
            pl.col("parse_failure").cast(pl.Int64).alias("parse_failures"),
            (pl.col("context_fill") > self.fill_threshold).fill_null(False).cast(pl.Int64)
            .alias("context_fill_over_threshold"),
            pl.col("cost_nanos").is_null().cast(pl.Int64).alias("unpriced_calls"),
            (pl.col("latency_s") * 1000).round(0).cast(pl.Int64).fill_null(0).alias("latency_ms_sum"),
            pl.col("ttft_s").is_not_null().cast(pl.Int64).alias("ttft_count"),
            pl.struct(
                pl.when(failed).then(0).otherwise(1).cast(pl.Int8).alias("p"),
                pl.col("latency_s").fill_null(0.0).alias("v"),
                pl.col("trace_id").fill_null("").alias("t"),
            ).alias("ex"),
            pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW),
        )  # fmt: skip

    def _group(self, df: pl.DataFrame, dims: Sequence[str]) -> pl.DataFrame:
        """One grain's groups: their sums (Polars fast-path aggregations) and rows (``_row``)."""
        keys = ["window_start_ms", *dims]
        return (
            df.group_by(keys)
            .agg(*_SUMS, pl.col(_ROW))
            .with_columns(
                pl.lit(".".join(dims)).alias("grain"),
                pl.lit(0, dtype=pl.Int64).alias("overflow_calls"),
            )
        )

    def merge(self, partials: Sequence[pl.DataFrame]) -> pl.DataFrame:
        """Merge partial frames (any grouping, any order) into one row per key."""
        frames = [p for p in partials if not p.is_empty()]
        if not frames:
            return pl.DataFrame(schema=partial_schema())
        df = pl.concat(frames, how="vertical_relaxed").with_columns(_key_expr())
        if df.height == df.select(pl.col(_KEY).n_unique()).item():
            return df.drop(_KEY).select(_partial_columns())
        df = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW))
        sums = df.group_by(_KEY).agg(
            pl.col("window_start_ms", "grain", *DIMENSIONS).first(),
            *(pl.col(c).sum() for c in ADDITIVE),
            pl.col(_ROW),
        )
        group_of = group_index(sums.get_column(_ROW), df.height)
        hists = [merge_hist_column(df.get_column(h), group_of, sums.height) for h in HISTOGRAMS]
        merged = sums.with_columns(
            _merge_exemplars(df.get_column("ex"), group_of, sums.height, self.exemplars)
        )
        if any(h is None for h in hists):  # a cell with a null field: the Polars merge
            frame = merge_hist_frame(df, _KEY, list(HISTOGRAMS))
            merged = merged.join(frame, on=_KEY, how="left")
        else:
            merged = merged.with_columns(h for h in hists if h is not None)
        return merged.select(_partial_columns())

    def finalize(self, merged: pl.DataFrame, *, late: bool = False) -> pl.DataFrame:
        """Turn merged partial rows into rollup rows (the Parquet contract), sorted deterministically."""
        w = self.window_ms
        start = pl.from_epoch(pl.col("window_start_ms"), time_unit="ms").dt.replace_time_zone("UTC")
        return (
            merged.with_columns(
                start.dt.cast_time_unit("us").alias("window_start"),
                (start + pl.duration(milliseconds=w)).dt.cast_time_unit("us").alias("window_end"),
                pl.lit(late).alias("late"),
                cost_usd_expr(),
                pl.col("ex").list.eval(pl.element().struct.field("t")).alias("exemplar_trace_ids"),
            )
            .drop("ex", "window_start_ms")
            .sort(["grain", "window_start", *DIMENSIONS], nulls_last=True)
            # The contract's column order, so every later conform_rollups is only a check.
            .select(list(ROLLUP_SCHEMA))
        )


def _key_expr() -> pl.Expr:
    parts = [pl.col("grain"), pl.col("window_start_ms").cast(pl.String)]
    parts += [pl.col(d).fill_null("\x00") for d in DIMENSIONS]
    return pl.concat_str(parts, separator="\x1f").alias(_KEY)


def _partial_columns() -> list[str]:
    return list(partial_schema())


def _conform_partial(df: pl.DataFrame) -> pl.DataFrame:
    """Select partial columns in order, adding all-null columns for dimensions no grain uses."""
    return df.select(
        (pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c)
        for c, t in partial_schema().items()
    )


def partial_schema() -> dict[str, pl.DataType]:
    """Return the schema of partial rows (what crosses Bytewax between steps)."""
    schema: dict[str, pl.DataType] = {"window_start_ms": pl.Int64(), "grain": pl.String()}
    schema.update({d: pl.String() for d in DIMENSIONS})
    schema.update({c: pl.Int64() for c in ADDITIVE})
    schema.update({h: HIST_DTYPE for h in HISTOGRAMS})
    schema["ex"] = EXEMPLAR_DTYPE
    return schema

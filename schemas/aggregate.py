"""Windowed pre-aggregation and merging of LLM-call records (the vectorized hot path).

Why pre-aggregate: the dataflow never moves single spans.  Each Kafka batch is decoded into a
record frame and immediately reduced, with one Polars ``group_by`` per grain, to *partial* rows
keyed by ``(grain, window_start, dimension values)``.  Partials are exactly mergeable: every
counter is an integer sum, histograms are fixed-scale exponential histograms (bucket counts add),
and exemplars are a top-N under a total order.  Hence merging partials in any grouping and any
order yields the same final rows, bit for bit -- the property that makes crash replays and
multi-worker runs produce identical Parquet files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import polars as pl

from spanpulse.schemas.histogram import (
    HIST_DTYPE,
    bucket_expr,
    hist_agg,
    hist_finish,
    merge_hist_frame,
)
from spanpulse.schemas.record import DIMENSIONS, FINISH_CLASSES, UNKNOWN
from spanpulse.schemas.rollup_schema import cost_usd_expr

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
        frames = [self._group(prepared, dims) for dims in self.grains]
        return _conform_partial(pl.concat(frames, how="diagonal_relaxed"))

    def _prepare(self, records: pl.DataFrame) -> pl.DataFrame:
        w = self.window_ms
        fc = pl.col("finish_class")
        failed = pl.col("is_error") | fc.is_in(["length", "content_filter"]) | pl.col("is_refusal")
        return records.with_columns(
            ((pl.col("end_time_ms") // w) * w).alias("window_start_ms"),
            *(pl.col(d).fill_null(UNKNOWN) for d in DIMENSIONS),
            *(bucket_expr(pl.col(src)).alias(h) for h, src in HISTOGRAMS.items()),
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
        )  # fmt: skip

    def _group(self, df: pl.DataFrame, dims: Sequence[str]) -> pl.DataFrame:
        keys = ["window_start_ms", *dims]
        sums = [
            pl.len().cast(pl.Int64).alias("calls"),
            *(pl.col(c).fill_null(0).sum().cast(pl.Int64) for c in (
                "errors", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens",
                "cost_nanos", "unpriced_calls", *(f"finish_{c}" for c in FINISH_CLASSES),
                "refusals", "parse_attempts", "parse_failures", "context_fill_over_threshold",
                "latency_ms_sum", "ttft_count",
            )),
        ]  # fmt: skip
        # Sort keys must come from the *filtered* expression, or their lengths differ from it
        # (a call without a trace id would crash the group-by).
        ex = pl.col("ex").filter(pl.col("ex").struct.field("t") != "")
        top = ex.sort_by(
            [ex.struct.field("p"), ex.struct.field("v"), ex.struct.field("t")],
            descending=[False, True, False],
        )
        out = df.group_by(keys).agg(
            *sums,
            *(hist_agg(h) for h in HISTOGRAMS),
            top.head(self.exemplars).alias("ex"),
        )
        return out.with_columns(
            *(hist_finish(h) for h in HISTOGRAMS),
            pl.lit(".".join(dims)).alias("grain"),
            pl.lit(0, dtype=pl.Int64).alias("overflow_calls"),
        )

    def merge(self, partials: Sequence[pl.DataFrame]) -> pl.DataFrame:
        """Merge partial frames (any grouping, any order) into one row per key."""
        frames = [p for p in partials if not p.is_empty()]
        if not frames:
            return pl.DataFrame(schema=partial_schema())
        df = pl.concat(frames, how="vertical_relaxed").with_columns(_key_expr())
        if df.height == df.select(pl.col(_KEY).n_unique()).item():
            return df.drop(_KEY).select(_partial_columns())
        ex = pl.col("ex").list.explode(keep_nulls=False, empty_as_null=False)
        ex = ex.filter(ex.is_not_null())
        top = ex.sort_by(
            [ex.struct.field("p"), ex.struct.field("v"), ex.struct.field("t")],
            descending=[False, True, False],
        ).unique(maintain_order=True)
        sums = df.group_by(_KEY).agg(
            pl.col("window_start_ms", "grain", *DIMENSIONS).first(),
            *(pl.col(c).sum() for c in ADDITIVE),
            top.head(self.exemplars).alias("ex"),
        )
        hists = merge_hist_frame(df, _KEY, list(HISTOGRAMS))
        return sums.join(hists, on=_KEY, how="left").drop(_KEY).select(_partial_columns())

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

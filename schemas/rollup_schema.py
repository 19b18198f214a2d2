"""The rollup row contract as a Polars schema: what every Parquet rollup file holds.

One row per ``(grain, window, dimension values, late)``.  Users' SQL depends on these exact
column names and types (see ``docs/query.md``), so the writer conforms every frame to
:data:`ROLLUP_SCHEMA` and refuses columns it does not know instead of dropping them silently.
Kept apart from the sinks so pure code (cardinality control, tests) can import it without I/O.
"""

from __future__ import annotations

from typing import Final

import polars as pl

from spanpulse.schemas.histogram import HIST_DTYPE
from spanpulse.schemas.record import DIMENSIONS, NANOS_PER_USD

#: Integer columns that add up when rows of the same window are merged (totals must stay exact).
ADDITIVE_COLUMNS: Final = (
    "calls", "errors", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens",
    "cost_nanos", "unpriced_calls",
    "finish_stop", "finish_length", "finish_content_filter", "finish_tool_calls", "finish_error",
    "finish_other",
    "refusals", "parse_attempts", "parse_failures", "context_fill_over_threshold",
    "latency_ms_sum", "ttft_count", "overflow_calls",
)  # fmt: skip

#: Histogram columns (:data:`~spanpulse.schemas.histogram.HIST_DTYPE`), merged by bucket.
HIST_COLUMNS: Final = (
    "input_tokens_hist",
    "output_tokens_hist",
    "latency_s_hist",
    "ttft_s_hist",
    "context_fill_hist",
)

_TS: Final = pl.Datetime("us", "UTC")


def _build_schema() -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {"window_start": _TS, "window_end": _TS, "grain": pl.String()}
    schema.update({d: pl.String() for d in DIMENSIONS})
    schema["late"] = pl.Boolean()
    for col in ADDITIVE_COLUMNS[:7]:  # calls .. cost_nanos
        schema[col] = pl.Int64()
    schema["cost_usd"] = pl.Float64()
    for col in ADDITIVE_COLUMNS[7:20]:  # unpriced_calls .. ttft_count
        schema[col] = pl.Int64()
    schema.update({h: HIST_DTYPE for h in HIST_COLUMNS})
    schema["exemplar_trace_ids"] = pl.List(pl.String())
    schema["overflow_calls"] = pl.Int64()
    return schema


#: The exact contract columns, in contract order (``docs/query.md`` documents each one).
ROLLUP_SCHEMA: Final[dict[str, pl.DataType]] = _build_schema()


def _exact_usd(nanos: pl.Series) -> pl.Series:
    values = nanos.cast(pl.Float64).to_numpy() / NANOS_PER_USD
    return pl.Series(nanos.name, values, dtype=pl.Float64, nan_to_null=True)


def cost_usd_expr(nanos_col: str = "cost_nanos") -> pl.Expr:
    """``cost_nanos / 1e9`` correctly rounded, equal to what DuckDB and Python compute.

    Polars divides a column by a scalar through a reciprocal multiplication, which is off by
    one ulp for about 40 % of values (``9 / 1e9`` gives ``9.000000000000001e-09``).  The
    contract promises ``cost_usd = cost_nanos / 1e9``, so the division goes through NumPy.
    """
    return pl.col(nanos_col).map_batches(_exact_usd, return_dtype=pl.Float64).alias("cost_usd")


_COLUMNS: Final = list(ROLLUP_SCHEMA)
_SCHEMA: Final = pl.Schema(ROLLUP_SCHEMA)


def empty_rollups() -> pl.DataFrame:
    """Return an empty frame with :data:`ROLLUP_SCHEMA`."""
    return pl.DataFrame(schema=ROLLUP_SCHEMA)


def conform_rollups(df: pl.DataFrame) -> pl.DataFrame:
    """Cast and order ``df`` to exactly :data:`ROLLUP_SCHEMA`.

    Unlike the record schema, every column is required: a rollup missing a counter would
    read as zero traffic in users' SQL, which is worse than failing at the sink.

    Raises:
        ValueError: on columns outside the contract or contract columns that are missing.
    """
    extra = sorted(set(df.columns) - set(ROLLUP_SCHEMA))
    missing = [c for c in ROLLUP_SCHEMA if c not in df.columns]
    if extra or missing:
        msg = f"rollup frame does not match the contract: unknown {extra}, missing {missing}"
        raise ValueError(msg)
    if df.columns == _COLUMNS and df.schema == _SCHEMA:
        return df
    return df.select(pl.col(name).cast(dtype) for name, dtype in ROLLUP_SCHEMA.items())

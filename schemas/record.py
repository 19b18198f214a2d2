"""The normalized LLM-call record: the one schema every decoder produces.

Every encoding (``otlp_proto``, ``otlp_json``, ``span_json``) and every attribute convention
(OTel GenAI current and deprecated, Traceloop, OpenInference, Anthropic native) is reduced to
this single Polars schema before anything is aggregated.  Keeping one schema means the
aggregation, the detectors and the sinks never need to know where a span came from.

Units are chosen so that sums are exact and replay-deterministic: times are integer epoch
milliseconds and cost is carried as integer nano-dollars (``cost_nanos``) next to the
float ``cost_usd`` convenience column.  Float sums depend on addition order, integer sums do
not, so a window aggregated from different batch boundaries (after a crash, on two workers)
comes out bit-identical.

The record never carries prompt or completion content: decoders only extract the
attribute keys listed in :mod:`spanpulse.schemas.conventions`.
"""

from __future__ import annotations

from typing import Final

import polars as pl

#: Normalized finish classes, in order of severity (used when a call has several choices).
FINISH_CLASSES: Final = ("error", "content_filter", "length", "tool_calls", "stop", "other")

#: Dimensions a rollup grain may group by.
DIMENSIONS: Final = (
    "tenant",
    "service",
    "environment",
    "feature",
    "provider",
    "model",
    "response_model",
    "operation",
    "prompt_version",
)

#: Value used for a dimension that a grain groups by but the span did not carry.
UNKNOWN: Final = "__unknown__"

#: Value that cardinality control folds non-admitted dimension values into.
OTHER: Final = "__other__"

#: One cost unit in USD: costs are summed as integer nano-dollars.
NANOS_PER_USD: Final = 1_000_000_000

RECORD_SCHEMA: Final[dict[str, pl.DataType]] = {
    # event time: span end, epoch milliseconds UTC
    "end_time_ms": pl.Int64(),
    "trace_id": pl.String(),
    "span_id": pl.String(),
    # dimensions (null when absent)
    "tenant": pl.String(),
    "service": pl.String(),
    "environment": pl.String(),
    "feature": pl.String(),
    "provider": pl.String(),
    "model": pl.String(),  # request model, falling back to the response model
    "response_model": pl.String(),
    "operation": pl.String(),
    "prompt_version": pl.String(),
    # usage
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "cached_input_tokens": pl.Int64(),
    "reasoning_tokens": pl.Int64(),
    # outcome
    "finish_reason": pl.String(),  # raw, first reported value
    "finish_class": pl.String(),  # one of FINISH_CLASSES
    "is_error": pl.Boolean(),
    "latency_s": pl.Float64(),
    "ttft_s": pl.Float64(),
    "context_window": pl.Int64(),
    "context_fill": pl.Float64(),
    "is_refusal": pl.Boolean(),
    "parse_attempt": pl.Boolean(),
    "parse_failure": pl.Boolean(),
    # cost
    "cost_usd": pl.Float64(),
    "cost_nanos": pl.Int64(),  # null when the price is unknown ("unpriced")
}


def empty_records() -> pl.DataFrame:
    """Return an empty frame with :data:`RECORD_SCHEMA`, e.g. for a batch with no LLM calls."""
    return pl.DataFrame(schema=RECORD_SCHEMA)


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Cast and order ``df`` to exactly :data:`RECORD_SCHEMA` (missing columns become null).

    Raises:
        ValueError: when ``df`` has columns that are not part of the schema, which would
            otherwise be silently dropped.
    """
    extra = set(df.columns) - set(RECORD_SCHEMA)
    if extra:
        msg = f"columns not in the record schema: {sorted(extra)}"
        raise ValueError(msg)
    return df.select(
        [
            (pl.col(name) if name in df.columns else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in RECORD_SCHEMA.items()
        ]
    )

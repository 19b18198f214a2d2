"""From extracted span values to validated, normalized LLM-call rows, vectorized over a batch.

The decoders (:mod:`.otlp_proto`, :mod:`.otlp_json`, :mod:`.span_json`) only *extract*: one row of
raw, type-checked values per LLM-call span (:data:`RAW_SCHEMA`).  Everything that can be computed
column-wise happens here, once per batch, in Polars:

* **Validation** (:func:`reject_reasons`): a span with a bad attribute type, a NaN/inf, negative or
  absurd (> ``max_tokens``) token counts, a negative or absurd cost, a negative TTFT, an end time
  before ``min_time_ms`` or after ``now + max_future_skew_ms`` (or missing), or an end before its
  start is rejected on its own; the rest of its message is kept.
* **Token coalescing**: a missing input or output count is derived from the total when the total
  and the other side are known.  Input tokens include cached tokens (OTel rule, and what every
  current instrumentation reports, S15); when a span reports fewer input tokens than its cache
  read + cache write, it used the raw Anthropic API meaning (input excludes cache) and the cache
  tokens are added back.  ``cached_input_tokens`` is the cache *read* count; cache writes are only
  used for cost.
* **Finish class**: every raw reason is lower-cased and mapped with
  :data:`~.conventions.FINISH_CLASS_OF`; with several choices the most severe class in
  ``FINISH_CLASSES`` order wins.  With no reason at all the class is ``error`` for a failed call and
  ``other`` otherwise, so class counts always add up to calls.  ``finish_reason`` keeps the first
  raw value.
* **Flags**: error = status ERROR or ``error.type`` present.  Refusal = any choice classed
  ``content_filter`` (which includes Anthropic's ``refusal``), ``app.refusal`` true, or a legacy
  Traceloop ``gen_ai.completion.N.refusal`` key (presence only; its text is never read).  Parse
  attempt = the parse flag is present; failure = it is false.
* **De-duplication** within the batch (:func:`deduplicate`): identical (trace_id, span_id) keep the
  first (``duplicate_span``); identical (provider, ``gen_ai.response.id``) keep the span with the
  most non-null normalized fields, first on ties (``duplicate_call``, S14: Traceloop plus the
  Anthropic SDK's native tracing emit one span each for the same call, in *separate* traces).
  Calls without a response id (e.g. failed calls) cannot be matched and are kept; duplicates split
  across batches are not detected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Final

import polars as pl

from spanpulse.schemas.conventions import (
    FINISH_CLASS_OF,
    MAX_INDEXED_CHOICES,
    PROVIDER_ALIASES,
    Slot,
    operation_of,
)
from spanpulse.schemas.record import FINISH_CLASSES

#: Joins several raw finish reasons in one string column (cheaper to build than a List column).
FINISH_SEPARATOR: Final = "\x1f"

#: Largest token count a single call may report; above it the span is rejected as absurd.
MAX_TOKENS_PER_CALL: Final = 10_000_000

#: Largest span-reported cost (USD) of one call; above it the span is rejected as absurd.  Ten
#: million tokens at today's dearest price cost a few thousand dollars; the bound also keeps
#: ``cost_nanos`` (and window sums of it) far inside Int64, whose overflow used to fail the batch.
MAX_COST_USD_PER_CALL: Final = 100_000.0

#: Longest dimension, provider or model value kept, in characters.  Longer values are garbage or
#: hostile: a 4 MB model name cost ~1 s of price-catalogue matching per call and every admitted
#: value is kept in cardinality state, so they are cut here to keep both bounded.
MAX_VALUE_CHARS: Final = 1024

_I64_MAX: Final = (1 << 63) - 1
_NS_PER_MS: Final = 1_000_000

TOKEN_COLUMNS: Final = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
DIMENSION_COLUMNS: Final = ("tenant", "service", "environment", "feature", "prompt_version")

#: One row per LLM-call span, as the decoders extract it (values type-checked, not validated).
RAW_SCHEMA: Final[dict[str, pl.DataType]] = {
    "msg_index": pl.Int64(),
    "span_index": pl.Int64(),
    "trace_id": pl.String(),
    "span_id": pl.String(),
    "start_ns": pl.Int64(),
    "end_ns": pl.Int64(),
    "status_error": pl.Boolean(),
    "operation": pl.String(),
    "provider": pl.String(),
    "request_model": pl.String(),
    "response_model": pl.String(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "total_tokens": pl.Int64(),
    "cache_read_tokens": pl.Int64(),
    "cache_write_tokens": pl.Int64(),
    "reasoning_tokens": pl.Int64(),
    "finish_reasons": pl.String(),  # raw reasons joined with FINISH_SEPARATOR
    "response_id": pl.String(),
    "has_error_type": pl.Boolean(),
    "ttft_s": pl.Float64(),
    "span_cost_usd": pl.Float64(),
    "legacy_refusal": pl.Boolean(),
    "app_refusal": pl.Boolean(),
    "parse_ok": pl.Boolean(),
    "tenant": pl.String(),
    "service": pl.String(),
    "environment": pl.String(),
    "feature": pl.String(),
    "prompt_version": pl.String(),
    "bad_reason": pl.String(),
    "bad_detail": pl.String(),
}

#: Raw columns safe to echo in a per-span dead letter (ids, dimensions, numbers; never content).
DEAD_LETTER_FIELDS: Final = (
    "trace_id",
    "span_id",
    "start_ns",
    "end_ns",
    "operation",
    "provider",
    "request_model",
    "response_model",
    *TOKEN_COLUMNS,
    "finish_reasons",
    "response_id",
    "ttft_s",
    "span_cost_usd",
    *DIMENSION_COLUMNS,
)

Row = tuple[object, ...]


class SpanRejected(ValueError):
    """An attribute of an LLM-call span has an unusable value (raised during extraction)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def build_row(
    vals: list[object],
    ids: tuple[int, int, str | None, str | None],
    times: tuple[int, int],
    status_error: bool,
    bad: SpanRejected | None,
) -> Row | str:
    """Turn one span's extracted slot values into a :data:`RAW_SCHEMA` row, or a skip reason.

    ``ids`` is (msg_index, span_index, trace_id, span_id) and ``times`` (start_ns, end_ns) with 0
    meaning unset.  Returns ``"not_llm"`` for spans without an LLM operation and ``"no_model"``
    for LLM operations without any model; those spans are counted, not decoded further.
    """
    head = _HEAD(vals)  # (operation, request type, OpenInference kind, provider, models...)
    operation = operation_of(head[0], head[1], head[2], head[3])
    if operation is None:
        return "not_llm"
    return llm_row(vals, operation, ids, times, status_error, bad)


def llm_row(
    vals: list[object],
    operation: str,
    ids: tuple[int, int, str | None, str | None],
    times: tuple[int, int],
    status_error: bool,
    bad: SpanRejected | None,
) -> Row | str:
    """:func:`build_row` for a span whose LLM ``operation`` the caller already determined."""
    head = _HEAD(vals)
    request_model = head[4]
    if request_model is None and head[6] is not None:
        request_model = _model_from_invocation_parameters(head[6])
    if request_model is None and head[5] is None and bad is None:
        return "no_model"
    start_ns, end_ns = times
    return (
        *ids,
        start_ns if 0 < start_ns <= _I64_MAX else None,
        end_ns if 0 < end_ns <= _I64_MAX else None,
        status_error,
        operation,
        head[3],
        request_model,
        *_USAGE(vals),
        _finish_reasons(vals),
        vals[_RESPONSE_ID],
        vals[_ERROR_TYPE] is not None,
        vals[_TTFT],
        vals[_COST],
        vals[_LEGACY_REFUSAL] is not None,
        *_FLAGS_AND_DIMENSIONS(vals),
        None if bad is None else bad.reason,
        None if bad is None else bad.detail,
    )


# C-level getters: indexing a list with IntEnum members costs ~100 ns each in the hot loop.
_HEAD: Final = itemgetter(
    *(
        int(s)
        for s in (
            Slot.OPERATION,
            Slot.REQUEST_TYPE,
            Slot.OPENINFERENCE_KIND,
            Slot.PROVIDER,
            Slot.REQUEST_MODEL,
            Slot.RESPONSE_MODEL,
            Slot.INVOCATION_PARAMETERS,
        )
    )
)
_USAGE: Final = itemgetter(
    *(
        int(s)
        for s in (
            Slot.RESPONSE_MODEL,
            Slot.INPUT_TOKENS,
            Slot.OUTPUT_TOKENS,
            Slot.TOTAL_TOKENS,
            Slot.CACHE_READ,
            Slot.CACHE_WRITE,
            Slot.REASONING,
        )
    )
)
_FLAGS_AND_DIMENSIONS: Final = itemgetter(
    *(
        int(s)
        for s in (
            Slot.APP_REFUSAL,
            Slot.PARSE_OK,
            Slot.TENANT,
            Slot.SERVICE,
            Slot.ENVIRONMENT,
            Slot.FEATURE,
            Slot.PROMPT_VERSION,
        )
    )
)
_RESPONSE_ID, _ERROR_TYPE = int(Slot.RESPONSE_ID), int(Slot.ERROR_TYPE)
_TTFT, _COST, _LEGACY_REFUSAL = int(Slot.TTFT), int(Slot.COST), int(Slot.LEGACY_REFUSAL)
_FINISH_LIST, _FINISH_SCALAR = int(Slot.FINISH_LIST), int(Slot.FINISH_SCALAR)
_FINISH_INDEXED = int(Slot.FINISH_INDEXED)


def _finish_reasons(vals: list[object]) -> object:
    listed = vals[_FINISH_LIST]
    if listed is not None:
        return FINISH_SEPARATOR.join(listed)  # type: ignore[arg-type]
    scalar = vals[_FINISH_SCALAR]
    indexed = [str(v) for v in vals[_FINISH_INDEXED : _FINISH_INDEXED + MAX_INDEXED_CHOICES] if v]
    if indexed:
        return FINISH_SEPARATOR.join(indexed)
    return scalar


def _model_from_invocation_parameters(raw: object) -> str | None:
    """Read the ``"model"`` key of OpenInference's ``llm.invocation_parameters`` JSON (S9)."""
    if not isinstance(raw, str) or '"model"' not in raw:
        return None
    try:
        params = json.loads(raw)
    except ValueError:
        return None
    model = params.get("model") if isinstance(params, dict) else None
    return model if isinstance(model, str) and model else None


def raw_frame(rows: Sequence[Row]) -> pl.DataFrame:
    r"""Build the batch's raw frame from extracted rows (one transpose, one Series per column).

    A JSON string may hold a lone UTF-16 surrogate (escaped as ``\ud800`` it is legal JSON
    syntax) that Python keeps but UTF-8 cannot encode; Polars then raises for the whole batch.
    Only in that rare case are the strings cleaned (surrogates become U+FFFD), so one hostile
    message cannot fail its batch and the common path costs nothing extra.
    """
    if not rows:
        return pl.DataFrame(schema=RAW_SCHEMA)
    columns = list(zip(*rows, strict=True))
    try:
        return _frame(columns)
    except UnicodeEncodeError:
        return _frame([tuple(map(without_surrogates, col)) for col in columns])


def _frame(columns: Sequence[Sequence[object]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            pl.Series(name, col, dtype=dtype, strict=False)
            for (name, dtype), col in zip(RAW_SCHEMA.items(), columns, strict=True)
        ]
    )


_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


def without_surrogates(value: object) -> object:
    """Replace lone UTF-16 surrogates in a string by U+FFFD; other values pass unchanged."""
    return _SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value


# ----------------------------------------------------------------------------------------------
# Validation.

_REASON_DETAILS: Final[dict[str, str]] = {
    "non_finite_value": "a numeric attribute (ttft or cost) is NaN or infinite",
    "negative_tokens": "a token count is negative",
    "absurd_tokens": "a token count exceeds the per-call maximum",
    "negative_cost": "the span-reported cost is negative",
    "absurd_cost": "the span-reported cost exceeds the per-call maximum",
    "negative_duration": "the time to first token is negative",
    "timestamp_out_of_range": "the span end time is missing or too far in the future, or a span "
    "time is before the minimum time",
    "end_before_start": "the span ends before it starts",
}


def reject_reasons(
    now_ms: int,
    min_time_ms: int,
    max_future_skew_ms: int,
    max_tokens: int = MAX_TOKENS_PER_CALL,
) -> tuple[pl.Expr, pl.Expr]:
    """Return (reason, detail) expressions over a raw frame; reason is null for a valid span."""
    tokens = [pl.col(c) for c in TOKEN_COLUMNS]
    numeric = [pl.col("ttft_s"), pl.col("span_cost_usd")]
    end = pl.col("end_ns")
    lo_ns, hi_ns = min_time_ms * _NS_PER_MS, (now_ms + max_future_skew_ms) * _NS_PER_MS
    reason = (
        pl.when(pl.col("bad_reason").is_not_null())
        .then(pl.col("bad_reason"))
        .when(pl.any_horizontal([c.is_nan() | c.is_infinite() for c in numeric]))
        .then(pl.lit("non_finite_value"))
        .when(pl.any_horizontal([c < 0 for c in tokens]))
        .then(pl.lit("negative_tokens"))
        .when(pl.any_horizontal([c > max_tokens for c in tokens]))
        .then(pl.lit("absurd_tokens"))
        .when(pl.col("span_cost_usd") < 0)
        .then(pl.lit("negative_cost"))
        .when(pl.col("span_cost_usd") > MAX_COST_USD_PER_CALL)
        .then(pl.lit("absurd_cost"))
        .when(pl.col("ttft_s") < 0)
        .then(pl.lit("negative_duration"))
        .when(end.is_null() | (end < lo_ns) | (end > hi_ns) | (pl.col("start_ns") < lo_ns))
        .then(pl.lit("timestamp_out_of_range"))  # a 1970 start would be a 56-year latency
        .when(end < pl.col("start_ns"))
        .then(pl.lit("end_before_start"))
    )
    detail = (
        pl.when(pl.col("bad_reason").is_not_null())
        .then(pl.col("bad_detail"))
        .otherwise(reason.replace_strict(_REASON_DETAILS, default=None, return_dtype=pl.String))
    )
    return reason, detail


# ----------------------------------------------------------------------------------------------
# Normalization.

_CLASS_RANK: Final[dict[str, int]] = {c: i for i, c in enumerate(FINISH_CLASSES)}
_RANK_CLASS: Final[dict[int, str]] = dict(enumerate(FINISH_CLASSES))


def _clean_str(value: pl.Expr) -> pl.Expr:
    """Strip and cut a string; empty strings become null (a blank tenant is no tenant)."""
    s = value.str.strip_chars().str.slice(0, MAX_VALUE_CHARS)
    return pl.when(s.str.len_bytes() > 0).then(s)


def _provider(value: pl.Expr) -> pl.Expr:
    """Clean a provider name, lower-case it and map aliases to the OTel spelling."""
    low = value.str.strip_chars().str.slice(0, MAX_VALUE_CHARS).str.to_lowercase()
    canonical = low.replace(PROVIDER_ALIASES)
    return pl.when(low.str.len_bytes() > 0).then(canonical)


Cleaner = Callable[[pl.Expr], pl.Expr]

#: String columns cleaned by :func:`normalize`, with their cleaning function.
_CLEANERS: Final[dict[str, Cleaner]] = {
    **{c: _clean_str for c in (*DIMENSION_COLUMNS, "request_model", "response_model")},
    "provider": _provider,
}


def _tokens() -> list[pl.Expr]:
    inp, out, total = pl.col("input_tokens"), pl.col("output_tokens"), pl.col("total_tokens")
    inp2 = pl.coalesce(inp, pl.when(total - out >= 0).then(total - out))
    out2 = pl.coalesce(out, pl.when(total - inp >= 0).then(total - inp))
    cache = pl.col("cache_read_tokens").fill_null(0) + pl.col("cache_write_tokens").fill_null(0)
    inp3 = pl.when(inp2 < cache).then(inp2 + cache).otherwise(inp2)
    return [inp3.alias("input_tokens"), out2.alias("output_tokens")]


def normalize(valid: pl.DataFrame) -> pl.DataFrame:
    """Normalize validated rows: record columns plus cache writes, response id and message index.

    Cost and context window are added later by :class:`~.pricing.Pricing`.

    The string columns repeat a few values many times, so every per-value computation (cleaning,
    finish classes) runs on the batch's *distinct* values only; a column whose distinct values
    are all clean is not rewritten at all, and finish reasons are mapped with one join.  The
    expressions applied are the same as row by row, so the result is identical.
    """
    first = valid.with_columns(*_changed(valid, _CLEANERS), *_tokens())
    return _with_finish(first).select(
        (pl.col("end_ns") // _NS_PER_MS).alias("end_time_ms"),
        "trace_id",
        "span_id",
        *DIMENSION_COLUMNS,
        "provider",
        pl.coalesce("request_model", "response_model").alias("model"),
        "response_model",
        "operation",
        "input_tokens",
        "output_tokens",
        pl.col("cache_read_tokens").alias("cached_input_tokens"),
        "reasoning_tokens",
        *_FINISH_OUT,
        ((pl.col("end_ns") - pl.col("start_ns")) / 1e9).alias("latency_s"),
        "ttft_s",
        "span_cost_usd",
        "cache_write_tokens",
        "response_id",
        "msg_index",  # the message each record came from: lateness is judged per message
    )


def _changed(frame: pl.DataFrame, cleaners: Mapping[str, Cleaner]) -> list[pl.Expr]:
    """Return replacements for the columns that cleaning changes, computed on distinct values.

    Each cleaner maps null to null.  It is evaluated on its column's distinct non-null values
    only (all columns in one query); a column it leaves unchanged is not touched, and a changed
    one gets a value -> cleaned value replacement (one hash lookup per row instead of the string
    operations).
    """
    lazy = frame.lazy()
    table = pl.concat(
        [
            lazy.select(pl.col(name).drop_nulls().unique().alias("old"))
            .with_columns(clean(pl.col("old")).alias("new"), pl.lit(name).alias("column"))
            .filter(~pl.col("old").eq_missing(pl.col("new")))
            for name, clean in cleaners.items()
        ]
    ).collect()
    if not table.height:
        return []
    changes = table.partition_by("column", as_dict=True, include_key=False)
    out = []
    for name in cleaners:
        change = changes.get((name,))
        if change is not None:
            out.append(pl.col(name).replace(change.get_column("old"), change.get_column("new")))
    return out


def _with_finish(frame: pl.DataFrame) -> pl.DataFrame:
    """Add the finish columns: classes of the distinct reason strings, joined back per row."""
    table = (
        frame.lazy()
        .select(pl.col("finish_reasons").unique())
        .with_columns(*_finish_per_reasons())
        .collect()
    )
    return frame.join(
        table, on="finish_reasons", how="left", nulls_equal=True, maintain_order="left"
    )


def _finish_per_reasons() -> list[pl.Expr]:
    """Return what only depends on the raw reasons: first reason, severest rank, refusal."""
    reasons = pl.col("finish_reasons").str.split(FINISH_SEPARATOR)
    classes = reasons.list.eval(
        pl.element()
        .str.strip_chars()
        .str.to_lowercase()
        .replace_strict(FINISH_CLASS_OF, default="other", return_dtype=pl.String)
    )
    rank = classes.list.eval(
        pl.element().replace_strict(_CLASS_RANK, return_dtype=pl.Int8)
    ).list.min()
    return [
        reasons.list.first().alias("_first_reason"),
        rank.alias("_rank"),
        classes.list.contains("content_filter").fill_null(False).alias("_filtered"),
    ]


def _finish_columns() -> list[pl.Expr]:
    is_error = pl.col("status_error").fill_null(False) | pl.col("has_error_type").fill_null(False)
    rank = pl.col("_rank")
    finish_class = (
        pl.when(rank.is_not_null())
        .then(rank.replace_strict(_RANK_CLASS, default=None, return_dtype=pl.String))
        .when(is_error)
        .then(pl.lit("error"))
        .otherwise(pl.lit("other"))
    )
    refusal = (
        pl.col("_filtered")
        | pl.col("app_refusal").fill_null(False)
        | pl.col("legacy_refusal").fill_null(False)
    )
    return [
        pl.col("_first_reason").alias("finish_reason"),
        finish_class.alias("finish_class"),
        is_error.alias("is_error"),
        refusal.alias("is_refusal"),
        pl.col("parse_ok").is_not_null().alias("parse_attempt"),
        (pl.col("parse_ok") == pl.lit(False)).fill_null(False).alias("parse_failure"),
    ]


_FINISH_OUT: Final = _finish_columns()


#: Normalized fields counted to decide which of two duplicate-call spans is more complete.
_COMPLETENESS_FIELDS: Final = (
    "tenant",
    "service",
    "environment",
    "feature",
    "prompt_version",
    "model",
    "response_model",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "finish_reason",
    "latency_s",
    "ttft_s",
    "span_cost_usd",
    "cache_write_tokens",
)


def deduplicate(df: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Drop duplicate spans and duplicate calls within one batch; return kept rows and counts."""
    ids_known = pl.col("trace_id").is_not_null() & pl.col("span_id").is_not_null()
    first_span = ~ids_known | pl.struct("trace_id", "span_id").is_first_distinct()
    keyed = pl.col("provider").is_not_null() & pl.col("response_id").is_not_null()
    copies = df.select(
        (~first_span).any().alias("spans"),
        pl.struct("provider", "response_id").filter(keyed).is_duplicated().any().alias("calls"),
    ).row(0)
    if not any(copies):  # the usual batch: nothing to drop, skip the per-key ranking
        return df, {"duplicate_span": 0, "duplicate_call": 0}
    df = df.with_row_index("_row").with_columns(first_span.alias("_first_span"))
    dup_spans = df.height - int(df["_first_span"].sum())
    df = df.filter(pl.col("_first_span"))
    key = ["provider", "response_id"]
    completeness = pl.sum_horizontal([pl.col(c).is_not_null() for c in _COMPLETENESS_FIELDS])
    best = (
        pl.col("_row")
        .sort_by([pl.col("_completeness"), pl.col("_row")], descending=[True, False])
        .first()
        .over(key)
    )
    kept = (
        df.with_columns(completeness.alias("_completeness"))
        .with_columns((~keyed | (pl.col("_row") == best)).alias("_keep"))
        .filter(pl.col("_keep"))
    )
    counts = {"duplicate_span": dup_spans, "duplicate_call": df.height - kept.height}
    return kept.drop("_row", "_first_span", "_completeness", "_keep"), counts

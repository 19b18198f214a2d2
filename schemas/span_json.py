"""Decode ``span_json`` messages: one flat JSON object per LLM call (``span_json.schema.json``).

For applications that publish calls directly.  A batch is decoded in one go: the message values
are joined with newlines and read by ``pl.read_ndjson`` with an explicit schema (a raw newline in a
JSON text can only be whitespace, so it is blanked first).  When that read fails (a syntax error,
a wrong type) or a string field holds a stringified array/object, the batch falls back to
per-message ``json.loads`` plus :func:`validate_object` to isolate the bad messages; the
fallback applies the same type rules as the fast path.  Unknown fields are never read.

Whole-message failures: unparsable JSON is ``json_decode_error``; a non-object, a wrong type, a
missing ``end_time``/``model`` or an unparsable time is ``schema_violation``.  Range problems
(negative tokens, times out of range, ...) are per-span rejections decided in
:mod:`.normalize`, like for OTLP.

Numbers given for string fields are accepted as their decimal text (the fast reader does that).
An ``operation`` that is not an LLM operation (e.g. ``embeddings``) is skipped as ``not_llm``; a
missing operation is accepted (the publisher declares every object an LLM call) and stays null.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import polars as pl

from spanpulse.schemas.conventions import LLM_OPERATIONS
from spanpulse.schemas.normalize import FINISH_SEPARATOR, RAW_SCHEMA, without_surrogates

STRING_FIELDS: Final = (
    "end_time",
    "start_time",
    "model",
    "response_model",
    "provider",
    "operation",
    "trace_id",
    "span_id",
    "tenant",
    "service",
    "environment",
    "feature",
    "prompt_version",
    "finish_reason",
)
INT_FIELDS: Final = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
NUMBER_FIELDS: Final = ("latency_ms", "ttft_ms", "cost_usd")
BOOL_FIELDS: Final = ("error", "refusal", "parse_ok")

READ_SCHEMA: Final[dict[str, pl.DataType]] = {
    **{f: pl.String() for f in STRING_FIELDS},
    **{f: pl.Int64() for f in INT_FIELDS},
    **{f: pl.Float64() for f in NUMBER_FIELDS},
    **{f: pl.Boolean() for f in BOOL_FIELDS},
}

_RFC3339: Final = (
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%:z",
)
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_EPOCH_MS_DIGITS: Final = 13  # larger epoch-ms values overflow int64 nanoseconds


class SchemaViolation(ValueError):
    """A span_json object does not match the schema (wrong type, not an object)."""


@dataclass
class SpanJsonBatch:
    """Result of decoding a batch of span_json messages."""

    raw: pl.DataFrame  # RAW_SCHEMA rows of LLM calls
    failures: list[tuple[int, str, str]] = field(
        default_factory=list
    )  # (msg_index, reason, detail)
    skipped: dict[str, int] = field(default_factory=dict)
    spans: int = 0  # well-formed messages (one span each)


def decode_batch(values: Sequence[bytes], msg_indexes: Sequence[int]) -> SpanJsonBatch:
    """Decode the given message values (already known to be non-empty and not too large)."""
    frame = _read_fast(values)
    failures: list[tuple[int, str, str]] = []
    if frame is None:
        frame, failures = _read_slow(values)
        index = [msg_indexes[i] for i in frame["_pos"].to_list()]
        frame = frame.drop("_pos").with_columns(pl.Series("msg_index", index, dtype=pl.Int64))
        failures = [(msg_indexes[i], r, d) for i, r, d in failures]
    else:
        frame = frame.with_columns(pl.Series("msg_index", msg_indexes, dtype=pl.Int64))
    return _to_raw(frame, failures)


def _read_fast(values: Sequence[bytes]) -> pl.DataFrame | None:
    """One ``read_ndjson`` over the batch; None when anything looks off (then: slow path)."""
    joined = b"".join(values)  # two memchr scans decide for the whole batch
    if b"\n" in joined or b"\r" in joined:
        values = [
            v.replace(b"\n", b" ").replace(b"\r", b" ") if b"\n" in v or b"\r" in v else v
            for v in values
        ]
    data = b"\n".join(values)
    try:
        frame = pl.read_ndjson(io.BytesIO(data), schema=READ_SCHEMA)
    except pl.exceptions.PolarsError:
        return None
    if frame.height != len(values):
        return None
    stringified = pl.any_horizontal(
        [pl.col(f).str.starts_with("[") | pl.col(f).str.starts_with("{") for f in STRING_FIELDS]
    )
    if frame.select(stringified.fill_null(False).any()).item():
        return None
    return frame


def _reject_constant(name: str) -> float:
    msg = f"{name} is not valid JSON"
    raise ValueError(msg)


def _read_slow(values: Sequence[bytes]) -> tuple[pl.DataFrame, list[tuple[int, str, str]]]:
    """Parse message by message so that only the bad ones fail."""
    good: list[dict[str, Any]] = []
    failures: list[tuple[int, str, str]] = []
    for pos, value in enumerate(values):
        try:
            doc = json.loads(value, parse_constant=_reject_constant)
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; RecursionError: nested too deep
        except (ValueError, RecursionError) as err:
            failures.append(
                (pos, "json_decode_error", f"message is not valid JSON ({type(err).__name__})")
            )
            continue
        try:
            obj = validate_object(doc)
        except SchemaViolation as err:
            failures.append((pos, "schema_violation", str(err)))
            continue
        obj["_pos"] = pos
        good.append(obj)
    schema = {**READ_SCHEMA, "_pos": pl.Int64()}
    try:
        return pl.DataFrame(good, schema=schema), failures
    except UnicodeEncodeError:  # a lone surrogate (JSON "\\ud800"): see normalize.raw_frame
        clean = [{k: without_surrogates(v) for k, v in obj.items()} for obj in good]
        return pl.DataFrame(clean, schema=schema), failures


def validate_object(doc: object) -> dict[str, Any]:
    """Return the known fields of one parsed object, typed like the fast reader would."""
    if not isinstance(doc, dict):
        msg = f"span_json message must be a JSON object, got {type(doc).__name__}"
        raise SchemaViolation(msg)
    out: dict[str, Any] = {}
    for name in READ_SCHEMA:
        value = doc.get(name)
        if value is not None:
            out[name] = _typed(name, value)
    return out


def _typed(name: str, value: object) -> object:
    if name in INT_FIELDS:
        if isinstance(value, int) and not isinstance(value, bool) and _I64_MIN <= value <= _I64_MAX:
            return value
    elif name in NUMBER_FIELDS:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif name in BOOL_FIELDS:
        if isinstance(value, bool):
            return value
    elif isinstance(value, str):
        return value
    elif isinstance(value, bool):
        return "true" if value else "false"
    elif isinstance(value, int):
        return str(value)
    elif isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    msg = f"span_json field {name!r} has the wrong type ({type(value).__name__})"
    raise SchemaViolation(msg)


def _time_ns(name: str) -> pl.Expr:
    """Parse an RFC 3339 string or epoch-ms digits to epoch nanoseconds (null if unparsable)."""
    s = pl.col(name).str.strip_chars()
    digits = s.str.contains(r"^\d+$")
    epoch = (
        pl.when(s.str.len_bytes() <= _MAX_EPOCH_MS_DIGITS)
        .then(s.cast(pl.Int64, strict=False) * 1_000_000)
        .otherwise(pl.lit(_I64_MAX))
    )
    rfc = pl.coalesce(
        [s.str.strptime(pl.Datetime("ns", "UTC"), f, strict=False) for f in _RFC3339]
    ).dt.epoch("ns")
    return pl.when(digits).then(epoch).otherwise(rfc)


def _usual_time_ns(name: str) -> pl.Expr:
    """:func:`_time_ns` for values in the first RFC 3339 format (null where it does not parse).

    That format needs ``-`` and ``T``, so no epoch-ms digit string parses with it; where it
    parses, :func:`_time_ns` gives the same value (its first format wins the coalesce).
    """
    s = pl.col(name).str.strip_chars()
    return s.str.strptime(pl.Datetime("ns", "UTC"), _RFC3339[0], strict=False).dt.epoch("ns")


def _parse_times(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``_end``/``_start``: one strptime each, the full parser only where a value needs it."""
    frame = frame.with_columns(
        _usual_time_ns("end_time").alias("_end"), _usual_time_ns("start_time").alias("_start")
    )
    unusual = frame.select(
        (pl.col(raw).is_not_null() & pl.col(parsed).is_null()).any().alias(parsed)
        for raw, parsed in (("end_time", "_end"), ("start_time", "_start"))
    ).row(0, named=True)
    redo = [
        _time_ns(raw).alias(parsed)
        for raw, parsed in (("end_time", "_end"), ("start_time", "_start"))
        if unusual[parsed]
    ]
    return frame.with_columns(redo) if redo else frame


def _to_raw(frame: pl.DataFrame, failures: list[tuple[int, str, str]]) -> SpanJsonBatch:
    """Check required fields and times, then map the flat fields onto RAW_SCHEMA."""
    frame = _parse_times(frame)
    model_ok = pl.col("model").str.strip_chars().str.len_bytes() > 0
    problem = (
        pl.when(pl.col("end_time").is_null())
        .then(pl.lit("required field 'end_time' is missing"))
        .when(~model_ok.fill_null(False))
        .then(pl.lit("required field 'model' is missing or empty"))
        .when(pl.col("_end").is_null())
        .then(pl.lit("'end_time' is neither RFC 3339 with an offset nor epoch milliseconds"))
        .when(pl.col("start_time").is_not_null() & pl.col("_start").is_null())
        .then(pl.lit("'start_time' is neither RFC 3339 with an offset nor epoch milliseconds"))
    )
    frame = frame.with_columns(problem.alias("_problem"))
    bad = frame.filter(pl.col("_problem").is_not_null()).select("msg_index", "_problem")
    failures = failures + [(i, "schema_violation", d) for i, d in bad.iter_rows()]
    ok = frame.filter(pl.col("_problem").is_null())
    op = pl.col("operation").str.strip_chars().str.to_lowercase()
    mapped = op.replace_strict(LLM_OPERATIONS, default=None, return_dtype=pl.String)
    ok = ok.with_columns(
        mapped.alias("_op"), (op.is_not_null() & mapped.is_null()).alias("_not_llm")
    )
    not_llm = int(ok["_not_llm"].sum())
    skipped = {"not_llm": not_llm} if not_llm else {}
    raw = ok.filter(~pl.col("_not_llm")).select(_raw_columns())
    return SpanJsonBatch(
        raw=raw, failures=failures, skipped=skipped, spans=frame.height - bad.height
    )


def _raw_columns() -> list[pl.Expr]:
    latency_ns = (pl.col("latency_ms") * 1_000_000).round().cast(pl.Int64, strict=False)
    exprs: dict[str, pl.Expr] = {
        "msg_index": pl.col("msg_index"),
        "span_index": pl.lit(0),
        "trace_id": pl.col("trace_id").str.to_lowercase(),
        "span_id": pl.col("span_id").str.to_lowercase(),
        "start_ns": pl.coalesce(pl.col("_start"), pl.col("_end") - latency_ns),
        "end_ns": pl.col("_end"),
        "status_error": pl.col("error").fill_null(False),
        "operation": pl.col("_op"),
        "request_model": pl.col("model"),
        "cache_read_tokens": pl.col("cached_input_tokens"),
        "finish_reasons": pl.col("finish_reason").str.replace_all(
            FINISH_SEPARATOR, " ", literal=True
        ),
        "has_error_type": pl.lit(False),
        "ttft_s": pl.col("ttft_ms") / 1000.0,
        "span_cost_usd": pl.col("cost_usd"),
        "legacy_refusal": pl.lit(False),
        "app_refusal": pl.col("refusal"),
    }
    same = {
        "provider",
        "response_model",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "parse_ok",
    }
    same |= {"tenant", "service", "environment", "feature", "prompt_version"}
    return [
        (exprs[name] if name in exprs else pl.col(name) if name in same else pl.lit(None))
        .cast(dtype)
        .alias(name)
        for name, dtype in RAW_SCHEMA.items()
    ]

"""Extract LLM-call rows from OTLP protobuf ``TracesData`` bytes (the Kafka exporter's default).

``TracesData`` and ``ExportTraceServiceRequest`` share field 1 (``repeated ResourceSpans``), so
one parser reads both.  This is the hot path: per attribute the loop does one ``kv.key`` read and
one dict lookup (:func:`~.conventions.span_lookup`); only the few keys we need are converted, and
content keys are never touched.  Resource attributes are read once per ``ResourceSpans`` and
copied as the starting values of each of its spans (span values outrank them).  Rows are plain
tuples; the batch frame is built once in :func:`~.normalize.raw_frame`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.message import DecodeError
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from spanpulse.schemas.conventions import (
    FIRST_TOKEN_EVENT,
    N_SLOTS,
    NO_RANK,
    AttributeKeys,
    Kind,
    Slot,
    Spec,
    resource_lookup,
    span_lookup,
)
from spanpulse.schemas.normalize import Row, SpanRejected, build_row

_STATUS_ERROR: Final = 2
_CLAMP: Final = 1 << 62  # keeps absurd integers inside Int64 (they are rejected later anyway)
_INT: Final = int(Kind.INT)
_STR: Final = int(Kind.STR)
_FLOAT: Final = int(Kind.FLOAT)
_BOOL: Final = int(Kind.BOOL)
_LIST: Final = int(Kind.STR_LIST)
_PRESENCE: Final = int(Kind.PRESENCE)
_TTFT: Final = int(Slot.TTFT)


@dataclass
class Extracted:
    """What one well-formed message yielded: LLM-call rows, skip counts and spans seen."""

    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    spans: int = 0

    def skip(self, reason: str) -> None:
        """Count one span that is not decoded further."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class ProtoExtractor:
    """Reusable extractor bound to the configured attribute keys."""

    def __init__(self, keys: AttributeKeys) -> None:
        self._span_lookup = span_lookup(keys)
        self._resource_lookup = resource_lookup(keys)

    def extract(self, data: bytes, msg_index: int) -> Extracted:
        """Parse one message; raises :class:`DecodeError` when the bytes are not OTLP."""
        traces = TracesData.FromString(data)
        out = Extracted()
        for resource_spans in traces.resource_spans:
            base = [None] * N_SLOTS
            base_ranks = [NO_RANK] * N_SLOTS
            res_bad = _fill(resource_spans.resource.attributes, self._resource_lookup, base, base_ranks)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self._span(span, msg_index, out, (base, base_ranks, res_bad))
        return out

    def _span(
        self,
        span: Any,
        msg_index: int,
        out: Extracted,
        resource: tuple[list[Any], list[int], SpanRejected | None],
    ) -> None:
        base, base_ranks, res_bad = resource
        vals, ranks = base.copy(), base_ranks.copy()
        bad = _fill(span.attributes, self._span_lookup, vals, ranks) or res_bad
        start = span.start_time_unix_nano
        if vals[_TTFT] is None and span.events:
            vals[_TTFT] = _first_token_s(span.events, start)
        ids = (msg_index, out.spans, span.trace_id.hex() or None, span.span_id.hex() or None)
        out.spans += 1
        row = build_row(
            vals, ids, (start, span.end_time_unix_nano), span.status.code == _STATUS_ERROR, bad
        )
        if isinstance(row, str):
            out.skip(row)
        else:
            out.rows.append(row)


def _fill(attrs: Any, lookup: dict[str, Spec], vals: list[Any], ranks: list[int]) -> SpanRejected | None:
    """Copy the wanted attributes into ``vals`` by priority; return the first bad value, if any."""
    bad = None
    get = lookup.get
    for kv in attrs:
        spec = get(kv.key)
        if spec is None:
            continue
        slot, rank, kind = spec
        if rank >= ranks[slot]:
            continue
        if kind == _PRESENCE:
            vals[slot] = True
            ranks[slot] = rank
            continue
        value = kv.value
        which = value.WhichOneof("value")
        if which is None:
            continue
        try:
            vals[slot] = _convert(value, which, kind, kv.key)
        except SpanRejected as err:
            bad = bad or err
            continue
        ranks[slot] = rank
    return bad


def _convert(value: Any, which: str, kind: int, key: str) -> Any:
    """Convert one ``AnyValue``: inline fast paths, then the shared :func:`convert_value`."""
    if kind == _INT and which == "int_value":
        return value.int_value
    if kind == _STR and which == "string_value":
        return value.string_value
    if which == "array_value":
        raw: Any = [
            (w, getattr(v, w)) for v in value.array_value.values if (w := v.WhichOneof("value"))
        ]
    else:
        raw = getattr(value, which)
    return convert_value(kind, which, raw, key)


def convert_value(kind: int, which: str, raw: Any, key: str) -> Any:
    """Convert an attribute value to what the slot's kind expects, or raise SpanRejected.

    ``which`` is the OTLP ``AnyValue`` field name (``int_value``, ``string_value``, ...) and
    ``raw`` its Python value; for ``array_value`` a list of (which, raw) elements.  Shared by
    the protobuf and JSON decoders so both accept and reject exactly the same values.
    """
    if kind == _LIST:
        if which == "array_value":
            return [_as_str(r, w, key) for w, r in raw]
        return [_as_str(raw, which, key)]
    if which == "array_value":
        raise _bad_type(key, which, Kind(kind).name.lower())
    if kind == _INT:
        return _as_int(raw, which, key)
    if kind == _FLOAT:
        return _as_float(raw, which, key)
    if kind == _BOOL:
        return _as_bool(raw, which, key)
    return _as_str(raw, which, key)


def _bad_type(key: str, which: str, kind: str) -> SpanRejected:
    return SpanRejected("bad_attribute_type", f"attribute {key!r} is {which}, expected {kind}")


def _as_int(raw: object, which: str, key: str) -> int:
    """Accept integers, integral doubles and numeric strings; reject everything else."""
    if isinstance(raw, bool):
        raise _bad_type(key, which, "an integer")
    if isinstance(raw, int):
        return max(min(raw, _CLAMP), -_CLAMP)
    if isinstance(raw, float):
        if raw != raw or raw in (float("inf"), float("-inf")):
            raise SpanRejected("non_finite_value", f"attribute {key!r} is not finite")
        if raw.is_integer():
            return int(max(min(raw, _CLAMP), -_CLAMP))
    elif isinstance(raw, str):
        try:
            return max(min(int(raw.strip()), _CLAMP), -_CLAMP)
        except ValueError:
            pass
    raise _bad_type(key, which, "an integer")


def _as_float(raw: object, which: str, key: str) -> float:
    """Accept numbers and numeric strings (NaN/inf pass through and are rejected vectorized)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            pass
    raise _bad_type(key, which, "a number")


def _as_bool(raw: object, which: str, key: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise _bad_type(key, which, "a boolean")


def _as_str(raw: object, which: str, key: str) -> str:
    """Accept strings and stringify other scalars (tenant ids are sometimes integers)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return str(raw)
    raise _bad_type(key, which, "a string")


def _first_token_s(events: Any, start_ns: int) -> float | None:
    """OpenInference's TTFT: the ``First Token Stream Event`` time minus the span start."""
    for event in events:
        if event.name == FIRST_TOKEN_EVENT and start_ns > 0:
            return float(event.time_unix_nano - start_ns) / 1e9
    return None


__all__ = ["DecodeError", "Extracted", "ProtoExtractor", "convert_value"]

"""Extract LLM-call rows from OTLP/JSON messages (the Kafka exporter's ``otlp_json`` encoding).

OTLP/JSON differs from the proto3 canonical mapping in ways the collector relies on: trace and
span ids are **hex** strings (base64 is accepted too, for generic proto3 JSON writers), enums are
integers (the enum names are accepted too), and 64-bit integers are strings.  Field names are
lowerCamelCase; the original snake_case names are accepted as well.  Values go through the same
:func:`~.otlp_proto.convert_value` as the protobuf path, so both encodings accept and reject exactly
the same attribute values.

A message whose JSON does not parse is a ``json_decode_error``; JSON whose structure is not OTLP
(e.g. ``resourceSpans`` is not a list) is a ``schema_violation``.  Either way no row of that
message is kept.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

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
from spanpulse.schemas.normalize import SpanRejected, build_row
from spanpulse.schemas.otlp_proto import Extracted, convert_value

_WHICH: Final[dict[str, str]] = {
    "stringValue": "string_value",
    "intValue": "int_value",
    "doubleValue": "double_value",
    "boolValue": "bool_value",
    "arrayValue": "array_value",
    "kvlistValue": "kvlist_value",
    "bytesValue": "bytes_value",
}
_WHICH.update({v: v for v in list(_WHICH.values())})
_STATUS_ERROR: Final = (2, "2", "STATUS_CODE_ERROR")
_PRESENCE: Final = int(Kind.PRESENCE)
_STR: Final = int(Kind.STR)


class OtlpJsonError(ValueError):
    """The JSON parsed but is not OTLP/JSON trace data."""


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _list(obj: dict[str, Any], camel: str, snake: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        msg = f"OTLP/JSON field {camel!r} must be a list"
        raise OtlpJsonError(msg)
    return value


def _dict_items(values: list[Any], what: str) -> list[dict[str, Any]]:
    if not all(isinstance(v, dict) for v in values):
        msg = f"OTLP/JSON {what} entries must be objects"
        raise OtlpJsonError(msg)
    return values


def _any_value(value: Any) -> tuple[str, Any] | None:
    """Return (proto field name, Python value) of one JSON ``AnyValue``; None when empty."""
    if not isinstance(value, dict):
        msg = "OTLP/JSON attribute value must be an object"
        raise OtlpJsonError(msg)
    for name, raw in value.items():
        which = _WHICH.get(name)
        if which is None:
            continue
        if which == "array_value":
            values = raw.get("values", []) if isinstance(raw, dict) else None
            if not isinstance(values, list):
                msg = "OTLP/JSON arrayValue must hold a values list"
                raise OtlpJsonError(msg)
            return which, [e for e in (_any_value(v) for v in values) if e is not None]
        if which in ("int_value", "double_value") and isinstance(raw, str):
            raw = _number(raw, which)
        elif which == "bytes_value":  # base64 text here, but bytes: rejected as in protobuf
            raw = b""
        return which, raw
    return None


def _number(raw: str, which: str) -> Any:
    try:
        return int(raw) if which == "int_value" else float(raw)
    except ValueError:
        return raw  # rejected as bad_attribute_type by convert_value


def _fill(
    attrs: list[Any], lookup: dict[str, Spec], vals: list[Any], ranks: list[int]
) -> SpanRejected | None:
    """Copy the wanted attributes into ``vals`` by priority; return the first bad value, if any.

    A non-object attribute or value raises AttributeError/TypeError, which the decoder reports
    as a ``schema_violation`` of the whole message.
    """
    bad = None
    get = lookup.get
    for kv in attrs:
        key = kv.get("key")
        spec = get(key) if key.__class__ is str else None
        if spec is None:
            continue
        slot, rank, kind = spec
        if rank >= ranks[slot]:
            continue
        if kind == _PRESENCE:
            vals[slot], ranks[slot] = True, rank
            continue
        raw_value = kv.get("value") or {}
        if kind == _STR and raw_value.get("stringValue").__class__ is str:
            vals[slot], ranks[slot] = raw_value["stringValue"], rank
            continue
        value = _any_value(raw_value)
        if value is None:
            continue
        try:
            vals[slot] = convert_value(kind, value[0], value[1], key)
        except SpanRejected as err:
            bad = bad or err
            continue
        ranks[slot] = rank
    return bad


def _hex_id(raw: Any, size: int) -> str | None:
    """Return a lowercase hex id from OTLP/JSON hex (or proto3-JSON base64); None when empty."""
    if not isinstance(raw, str) or not raw:
        return None
    if len(raw) == 2 * size:
        try:
            bytes.fromhex(raw)
            return raw.lower()
        except ValueError:
            pass
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == size:
        return decoded.hex()
    msg = "OTLP/JSON trace or span id is neither hex nor base64 of the right length"
    raise OtlpJsonError(msg)


def _nanos(raw: Any) -> int:
    if raw is None or raw == "":
        return 0
    msg = "OTLP/JSON timestamps must be integers or integer strings"
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise OtlpJsonError(msg)
    try:
        return int(raw)
    except ValueError:
        raise OtlpJsonError(msg) from None


class JsonExtractor:
    """Reusable OTLP/JSON extractor bound to the configured attribute keys."""

    def __init__(self, keys: AttributeKeys) -> None:
        self._span_lookup = span_lookup(keys)
        self._resource_lookup = resource_lookup(keys)

    def extract(self, data: bytes, msg_index: int) -> Extracted:
        """Parse one message; raises ValueError (json) or :class:`OtlpJsonError` (structure)."""
        doc = json.loads(data)
        if not isinstance(doc, dict):
            msg = "OTLP/JSON message must be an object"
            raise OtlpJsonError(msg)
        out = Extracted()
        for rs in _dict_items(_list(doc, "resourceSpans", "resource_spans"), "resourceSpans"):
            resource = rs.get("resource") or {}
            base: list[Any] = [None] * N_SLOTS
            base_ranks = [NO_RANK] * N_SLOTS
            res_bad = _fill(
                _list(resource, "attributes", "attributes"), self._resource_lookup, base, base_ranks
            )
            for ss in _dict_items(_list(rs, "scopeSpans", "scope_spans"), "scopeSpans"):
                for span in _dict_items(_list(ss, "spans", "spans"), "span"):
                    self._span(span, msg_index, out, (base, base_ranks, res_bad))
        return out

    def _span(
        self,
        span: dict[str, Any],
        msg_index: int,
        out: Extracted,
        resource: tuple[list[Any], list[int], SpanRejected | None],
    ) -> None:
        base, base_ranks, res_bad = resource
        vals, ranks = base.copy(), base_ranks.copy()
        bad = (
            _fill(_list(span, "attributes", "attributes"), self._span_lookup, vals, ranks)
            or res_bad
        )
        start = _nanos(_get(span, "startTimeUnixNano", "start_time_unix_nano"))
        end = _nanos(_get(span, "endTimeUnixNano", "end_time_unix_nano"))
        if vals[Slot.TTFT] is None:
            vals[Slot.TTFT] = _first_token_s(_list(span, "events", "events"), start)
        status = span.get("status") or {}
        ids = (
            msg_index,
            out.spans,
            _hex_id(_get(span, "traceId", "trace_id"), 16),
            _hex_id(_get(span, "spanId", "span_id"), 8),
        )
        out.spans += 1
        row = build_row(vals, ids, (start, end), status.get("code") in _STATUS_ERROR, bad)
        if isinstance(row, str):
            out.skip(row)
        else:
            out.rows.append(row)


def _first_token_s(events: list[Any], start_ns: int) -> float | None:
    for event in _dict_items(events, "event"):
        if event.get("name") == FIRST_TOKEN_EVENT and start_ns > 0:
            return (_nanos(_get(event, "timeUnixNano", "time_unix_nano")) - start_ns) / 1e9
    return None

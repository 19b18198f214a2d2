"""Extract LLM-call rows from OTLP protobuf ``TracesData`` bytes (the Kafka exporter's default).

``TracesData`` and ``ExportTraceServiceRequest`` share field 1 (``repeated ResourceSpans``), so
one parser reads both.  This is the hot path, and the per-attribute cost decides throughput:

* The bytes are parsed with a *lite* view of the OTLP trace schema (:func:`_lite_traces_class`,
  same field numbers as ``opentelemetry.proto.trace.v1.trace_pb2``) in which ``attributes`` is
  ``repeated bytes`` and every field we do not read is left out.  upb then never builds a
  ``KeyValue``/``AnyValue`` object per attribute.  Measured on 25-attribute spans (CPU time):
  extraction with the full ``TracesData`` and ``kv.key`` took ~40 us/span, this lite loop
  ~13 us/span; the whole ``Decoder.decode`` runs at ~55k spans per CPU-second
  (``bench/decode_bench.py``).  Pure Python cannot go much lower: merely iterating 25
  attributes and slicing their keys costs ~5.5 us/span.
* Per attribute the loop first looks the whole ``KeyValue`` encoding up in a bounded memo of
  recently decoded wanted attributes (:class:`_AttributeCache`): tenants, models, operations,
  finish reasons and token counts repeat verbatim from span to span, and a hit skips the rest.
  Otherwise it slices the key out of the encoding (``0x0a len key``) and does one dict lookup
  (:func:`~.conventions.span_lookup`).  Keys we do not need, in particular every content key,
  cost that slice and one dict miss; their values are never decoded.
* Wanted values are decoded inline for the common shapes (short string, int, double, bool);
  anything else (arrays, long strings, unusual encodings) goes through the official ``KeyValue``
  parser and the shared :func:`convert_value`, so both paths accept exactly the same values.
* A span without an LLM operation is counted as ``not_llm`` right after its attributes are
  read: its ids, times, status and events are never touched.  (Its attributes still are, so a
  malformed one fails the message exactly as before.)  On the throughput benchmark's dense OTLP
  traffic (2.1 spans per call) extraction costs ~10 CPU s per million calls, ~4.5 us/span.

The lite parse validates less than the full one: corruption inside attributes we never read goes
unnoticed; corruption in one we read makes the whole message a ``protobuf_decode_error``.
Resource attributes are read once per ``ResourceSpans`` and copied as the starting values of each
of its spans (span values outrank them).  Rows are plain tuples; the batch frame is built once in
:func:`~.normalize.raw_frame`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from spanpulse.schemas.bounded_cache import BoundedCache
from spanpulse.schemas.conventions import (
    FIRST_TOKEN_EVENT,
    N_SLOTS,
    NO_RANK,
    AttributeKeys,
    Kind,
    Slot,
    Spec,
    operation_of,
    resource_lookup,
    span_lookup,
)
from spanpulse.schemas.normalize import Row, SpanRejected, llm_row

_STATUS_ERROR: Final = 2
_CLAMP: Final = 1 << 62  # keeps absurd integers inside Int64 (they are rejected later anyway)
_INT: Final = int(Kind.INT)
_STR: Final = int(Kind.STR)
_FLOAT: Final = int(Kind.FLOAT)
_BOOL: Final = int(Kind.BOOL)
_LIST: Final = int(Kind.STR_LIST)
_PRESENCE: Final = int(Kind.PRESENCE)
_TTFT: Final = int(Slot.TTFT)
_OP, _REQUEST_TYPE = int(Slot.OPERATION), int(Slot.REQUEST_TYPE)
_OI_KIND, _PROVIDER = int(Slot.OPENINFERENCE_KIND), int(Slot.PROVIDER)
_FIRST_TOKEN_EVENT: Final = FIRST_TOKEN_EVENT.encode()
_MAX_FAST_KEY: Final = 127  # keys whose length fits the one-byte varint of the fast slice
# AnyValue wire tags (field number << 3 | wire type)
_TAG_STRING, _TAG_BOOL, _TAG_INT, _TAG_DOUBLE, _TAG_ARRAY = 0x0A, 0x10, 0x18, 0x21, 0x2A
_WHICH_OF_TAG: Final = {
    _TAG_STRING: "string_value",
    _TAG_BOOL: "bool_value",
    _TAG_INT: "int_value",
    _TAG_DOUBLE: "double_value",
}
_unpack_double = struct.Struct("<d").unpack_from


def _lite_traces_class() -> Any:
    """Build the lite ``TracesData`` message class (a private descriptor pool, once at import)."""
    fd = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="spanpulse_otlp_lite.proto", package="spanpulse.lite", syntax="proto3"
    )
    rep, opt = fd.LABEL_REPEATED, fd.LABEL_OPTIONAL
    layout: dict[str, list[tuple[str, int, int, int, str]]] = {
        "Resource": [("attributes", 1, fd.TYPE_BYTES, rep, "")],
        "Status": [("code", 3, fd.TYPE_INT32, opt, "")],
        "Event": [
            ("time_unix_nano", 1, fd.TYPE_FIXED64, opt, ""),
            ("name", 2, fd.TYPE_BYTES, opt, ""),
        ],
        "Span": [
            ("trace_id", 1, fd.TYPE_BYTES, opt, ""),
            ("span_id", 2, fd.TYPE_BYTES, opt, ""),
            ("start_time_unix_nano", 7, fd.TYPE_FIXED64, opt, ""),
            ("end_time_unix_nano", 8, fd.TYPE_FIXED64, opt, ""),
            ("attributes", 9, fd.TYPE_BYTES, rep, ""),
            ("events", 11, fd.TYPE_MESSAGE, rep, "Event"),
            ("status", 15, fd.TYPE_MESSAGE, opt, "Status"),
        ],
        "ScopeSpans": [("spans", 2, fd.TYPE_MESSAGE, rep, "Span")],
        "ResourceSpans": [
            ("resource", 1, fd.TYPE_MESSAGE, opt, "Resource"),
            ("scope_spans", 2, fd.TYPE_MESSAGE, rep, "ScopeSpans"),
        ],
        "TracesData": [("resource_spans", 1, fd.TYPE_MESSAGE, rep, "ResourceSpans")],
    }
    for name, fields in layout.items():
        message = file.message_type.add(name=name)
        for field_name, number, type_, label, type_name in fields:
            f = message.field.add(name=field_name, number=number, type=type_, label=label)
            if type_name:
                f.type_name = f".spanpulse.lite.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("spanpulse.lite.TracesData"))


LiteTracesData: Final = _lite_traces_class()


@dataclass
class Extracted:
    """What one well-formed message yielded: LLM-call rows, skip counts and spans seen."""

    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    spans: int = 0

    def skip(self, reason: str) -> None:
        """Count one span that is not decoded further."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


#: raw key -> (slot, rank, AnyValue tag of the inline fast path or -1, kind, key, cacheable)
BytesLookup = dict[bytes, tuple[int, int, int, int, str, bool]]
_FAST_TAG: Final = {_STR: _TAG_STRING, _INT: _TAG_INT, _BOOL: _TAG_BOOL, _FLOAT: _TAG_DOUBLE}

#: Values of most slots repeat across spans (dimensions, models, operation, finish reasons,
#: flags, token counts): their whole ``KeyValue`` encodings are memoized.  The values of these
#: slots are (nearly) unique per span, so caching them would only churn the cache.
_UNCACHED_SLOTS: Final = frozenset(
    int(s) for s in (Slot.INVOCATION_PARAMETERS, Slot.RESPONSE_ID, Slot.TTFT, Slot.COST)
)

#: whole raw ``KeyValue`` -> (slot, rank, decoded value), see :class:`_AttributeCache`
_Hit = tuple[int, int, Any]
#: The hit of an attribute we do not read: its rank never beats a slot's, so it is skipped.
_UNWANTED: Final[_Hit] = (0, NO_RANK + 1, None)
#: Unwanted attributes are memoized only when short (ids, enums), never content.
_MAX_UNWANTED_CACHED: Final = 96


class _AttributeCache(BoundedCache[bytes, _Hit]):
    """Decoded values of recently seen attributes, keyed by their whole encoding.

    Why: most attributes of an LLM span repeat verbatim from span to span (``tenant.id`` =
    ``t-0042``, the model, the operation, ``["stop"]``); one dict hit on the raw bytes replaces
    slicing the key, looking it up and decoding the value.  Short attributes we do not read
    (``http.route``, ``gen_ai.request.stream``) are remembered as :data:`_UNWANTED`, so they
    cost that one hit too.  Decoding is a pure function of the bytes and of the extractor's
    lookup, so a hit gives exactly what decoding would.  Bounded: cleared when ``limit``
    entries are reached.
    """


def _bytes_lookup(table: dict[str, Spec]) -> BytesLookup:
    out: BytesLookup = {}
    for key, (slot, rank, kind) in table.items():
        raw = key.encode()
        if len(raw) > _MAX_FAST_KEY:
            msg = f"attribute key {key!r} is longer than {_MAX_FAST_KEY} bytes"
            raise ValueError(msg)
        out[raw] = (slot, rank, _FAST_TAG.get(kind, -1), kind, key, slot not in _UNCACHED_SLOTS)
    return out


class ProtoExtractor:
    """Reusable extractor bound to the configured attribute keys."""

    def __init__(self, keys: AttributeKeys, cache_size: int = 65_536) -> None:
        self._span_lookup = _bytes_lookup(span_lookup(keys))
        self._resource_lookup = _bytes_lookup(resource_lookup(keys))
        # one cache per lookup table: the same bytes decode differently as span or resource
        self._span_cache = _AttributeCache(cache_size)
        self._resource_cache = _AttributeCache(cache_size)

    def extract(self, data: bytes, msg_index: int) -> Extracted:
        """Parse one message; raises :class:`DecodeError` when the bytes are not OTLP."""
        traces = LiteTracesData.FromString(data)
        out = Extracted()
        try:
            for resource_spans in traces.resource_spans:
                base: list[Any] = [None] * N_SLOTS
                base_ranks = [NO_RANK] * N_SLOTS
                res_bad = _fill(
                    resource_spans.resource.attributes,
                    self._resource_lookup,
                    self._resource_cache,
                    base,
                    base_ranks,
                )
                resource = (base, base_ranks, res_bad)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self._span(span, msg_index, out, resource)
        except (IndexError, struct.error, UnicodeDecodeError, DecodeError) as err:
            msg = f"malformed attribute encoding ({type(err).__name__})"
            raise DecodeError(msg) from err
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
        bad = _fill(span.attributes, self._span_lookup, self._span_cache, vals, ranks) or res_bad
        operation = operation_of(vals[_OP], vals[_REQUEST_TYPE], vals[_OI_KIND], vals[_PROVIDER])
        if operation is None:
            out.spans += 1  # what build_row would say, without reading ids, times and events
            out.skip("not_llm")
            return
        start = span.start_time_unix_nano
        if vals[_TTFT] is None and span.events:
            vals[_TTFT] = _first_token_s(span.events, start)
        ids = (msg_index, out.spans, span.trace_id.hex() or None, span.span_id.hex() or None)
        out.spans += 1
        row = llm_row(
            vals,
            operation,
            ids,
            (start, span.end_time_unix_nano),
            span.status.code == _STATUS_ERROR,
            bad,
        )
        if isinstance(row, str):
            out.skip(row)
        else:
            out.rows.append(row)


def _fill(
    attrs: Any, lookup: BytesLookup, cache: _AttributeCache, vals: list[Any], ranks: list[int]
) -> SpanRejected | None:
    """Copy the wanted attributes into ``vals`` by priority; return the first bad value, if any.

    ``attrs`` are raw ``KeyValue`` encodings: ``0x0a <len> key 0x12 <len> AnyValue``.  A key
    longer than 127 bytes has a two-byte length, so the one-byte slice below is >= 128 bytes
    long and cannot equal any (shorter) wanted key: long keys simply miss.  The unchecked loop
    handles well-formed attributes; anything short (an empty value, truncation) raises
    IndexError and the batch of attributes is redone by the checked loop.  Only the unchecked
    loop reads and fills ``cache``, so a hit is always what that loop would have decoded.
    """
    try:
        return _fill_unchecked(attrs, lookup, cache, vals, ranks)
    except IndexError:
        return _fill_checked(attrs, lookup, vals, ranks)


def _fill_unchecked(
    attrs: Any, lookup: BytesLookup, cache: _AttributeCache, vals: list[Any], ranks: list[int]
) -> SpanRejected | None:
    bad = None
    get = lookup.get
    cached = cache.get
    for raw in attrs:
        hit = cached(raw)
        if hit is not None:
            slot, rank, value = hit
            if rank < ranks[slot]:
                vals[slot], ranks[slot] = value, rank
            continue
        k = raw[1] + 2
        spec = get(raw[2:k])
        if spec is None or raw[0] != 0x0A:
            if len(raw) <= _MAX_UNWANTED_CACHED:
                cache.put(raw, _UNWANTED)
            continue
        slot, rank, fast, kind, key, cacheable = spec
        if rank >= ranks[slot]:
            continue
        value = None
        # inline fast path: the AnyValue has the concept's usual wire type and a short payload
        if fast == _TAG_DOUBLE:
            if raw[k + 2] == _TAG_DOUBLE and raw[k + 1] == 9 and raw[k] == 0x12:
                value = _unpack_double(raw, k + 3)[0]  # what _fast_value + _as_float return
        elif raw[k + 2] == fast and raw[k + 1] < 0x80:
            b = raw[k + 3]
            if b < 0x80:
                if fast == _TAG_STRING:
                    value = raw[k + 4 : k + 4 + b].decode()
                else:
                    value = b if fast == _TAG_INT else b != 0
            elif fast == _TAG_INT and raw[k + 4] < 0x80:
                value = (b & 0x7F) | (raw[k + 4] << 7)
        if value is None:
            try:
                value = _general_value(raw, k, kind, key)
            except SpanRejected as err:
                bad = bad or err
                continue
            if value is None:
                continue
        vals[slot], ranks[slot] = value, rank
        if cacheable:
            cache.put(raw, (slot, rank, value))
    return bad


def _fill_checked(
    attrs: Any, lookup: BytesLookup, vals: list[Any], ranks: list[int]
) -> SpanRejected | None:
    """Bounds-checked twin of :func:`_fill_unchecked` (no inline fast path)."""
    bad = None
    for raw in attrs:
        if len(raw) < 2:
            continue
        k = raw[1] + 2
        spec = lookup.get(raw[2:k])
        if spec is None or raw[0] != 0x0A:
            continue
        slot, rank, _fast, kind, key, _cacheable = spec
        if rank >= ranks[slot]:
            continue
        try:
            value = _general_value(raw, k, kind, key)
        except SpanRejected as err:
            bad = bad or err
            continue
        if value is not None:
            vals[slot], ranks[slot] = value, rank
    return bad


def _general_value(raw: bytes, k: int, kind: int, key: str) -> Any:
    """Value of one wanted attribute outside the inline fast path (presence, other types)."""
    if kind == _PRESENCE:
        return True
    return _fast_value(raw, k, kind, key)


def _fast_value(raw: bytes, k: int, kind: int, key: str) -> Any:
    """Decode the AnyValue after the key at offset ``k``; None when the value is empty."""
    if len(raw) <= k + 2 or raw[k] != 0x12 or raw[k + 1] >= 0x80:
        return _slow_value(raw, kind, key)
    tag = raw[k + 2]
    if tag == _TAG_INT:
        first = raw[k + 3]
        value: Any = first if first < 0x80 else _varint(raw, k + 3)
        if kind == _INT:
            return value
    elif tag == _TAG_STRING:
        n = raw[k + 3]
        if n >= 0x80:
            return _slow_value(raw, kind, key)
        value = raw[k + 4 : k + 4 + n].decode()
        if kind == _STR:
            return value
    elif tag == _TAG_DOUBLE:
        value = _unpack_double(raw, k + 3)[0]
    elif tag == _TAG_BOOL:
        value = raw[k + 3] != 0
    elif tag == _TAG_ARRAY and kind == _LIST:
        strings = _string_array(raw, k + 2)
        return _slow_value(raw, kind, key) if strings is None else strings
    else:
        return _slow_value(raw, kind, key)
    return convert_value(kind, _WHICH_OF_TAG[tag], value, key)


def _string_array(raw: bytes, at: int) -> list[str] | None:
    """Decode a short ``array_value`` of short strings at ``raw[at]``; None for anything else."""
    size = raw[at + 1]
    if size >= 0x80:
        return None
    pos, end, out = at + 2, at + 2 + size, []
    while pos < end:
        # element: 0x0a <len> AnyValue(0x0a <len> utf-8)
        if raw[pos] != 0x0A or raw[pos + 1] >= 0x80 or raw[pos + 2] != _TAG_STRING:
            return None
        n = raw[pos + 3]
        if n >= 0x80:
            return None
        out.append(raw[pos + 4 : pos + 4 + n].decode())
        pos += 2 + raw[pos + 1]
    return out


def _varint(raw: bytes, i: int) -> int:
    """Decode a (possibly negative, two's complement int64) varint starting at ``raw[i]``."""
    result = shift = 0
    while True:
        b = raw[i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        i += 1
        shift += 7
    return result - (1 << 64) if result >= 1 << 63 else result


def _slow_value(raw: bytes, kind: int, key: str) -> Any:
    """Decode one attribute with the official ``KeyValue`` parser (arrays, long strings...)."""
    value = KeyValue.FromString(raw).value
    which = value.WhichOneof("value")
    if which is None:
        return None
    return _convert(value, which, kind, key)


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
            reason = "non_finite_value"
            raise SpanRejected(reason, f"attribute {key!r} is not finite")
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
        if event.name == _FIRST_TOKEN_EVENT and start_ns > 0:
            return float(event.time_unix_nano - start_ns) / 1e9
    return None


__all__ = ["DecodeError", "Extracted", "ProtoExtractor", "convert_value"]

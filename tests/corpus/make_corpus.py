"""Regenerate the hand-made hostile-input corpus and its manifest (``manifest.toml``).

    /work/venv/bin/python tests/corpus/make_corpus.py        # rewrite the files in place

Why a script: the binary cases (protobuf with wrong types, invalid UTF-8, absurd timestamps)
cannot be written by hand, and a script makes them reproducible and reviewable.  The protobuf is
written straight to the wire format here (not with ``trace_pb2``) because several cases are
things the official classes refuse to serialize (invalid UTF-8 in a string field, truncations).

The expected outcome of every case is written by hand in :data:`CASES` -- never computed by
running the decoder -- so the table-driven test (``tests/test_fuzz_decoders.py``) can fail.
Every case has its own trace/span/response id, so the corpus can be decoded as one batch (as
the job does) without cross-case de-duplication.  Times are absolute: "now" for the fixed-clock
tests is 1_760_000_000_000 ms (2025-10-09) and every valid span ends one second before it, far
enough in the past that a wall-clock run (the job test) accepts it too.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
END_NS = 1_759_999_999_000_000_000
START_NS = END_NS - 1_500_000_000
END_MS = END_NS // 1_000_000
UINT64_MAX = (1 << 64) - 1
YEAR_2100_NS = 4_102_444_800_000_000_000


# ---------------------------------------------------------------------------------- protobuf wire


class Bytes(bytes):
    """An ``AnyValue.bytes_value`` (plain ``bytes`` are a string value that may be bad UTF-8)."""


def varint(n: int) -> bytes:
    """Protobuf varint; negative numbers as 64-bit two's complement (like int64)."""
    n &= UINT64_MAX
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ld(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def fixed64(field_number: int, n: int) -> bytes:
    """A fixed64 field (span and event times)."""
    return varint(field_number << 3 | 1) + struct.pack("<Q", n & UINT64_MAX)


def any_value(value: Any) -> bytes:
    """Encode an ``AnyValue``: str/bytes string, bool, int, float, list (array), dict (kvlist)."""
    if value is None:
        return b""
    if isinstance(value, Bytes):
        return ld(7, bytes(value))
    if isinstance(value, str):
        return ld(1, value.encode())
    if isinstance(value, bytes):
        return ld(1, value)
    if isinstance(value, bool):
        return varint(2 << 3) + varint(int(value))
    if isinstance(value, int):
        return varint(3 << 3) + varint(value)
    if isinstance(value, float):
        return varint(4 << 3 | 1) + struct.pack("<d", value)
    if isinstance(value, list):
        return ld(5, b"".join(ld(1, any_value(v)) for v in value))
    if isinstance(value, dict):
        return ld(6, b"".join(ld(1, key_value(k, v)) for k, v in value.items()))
    msg = f"cannot encode {type(value).__name__}"
    raise TypeError(msg)


def key_value(key: str | bytes, value: Any) -> bytes:
    """Encode a ``KeyValue`` (a bytes key may be invalid UTF-8)."""
    raw_key = key.encode() if isinstance(key, str) else key
    return ld(1, raw_key) + ld(2, any_value(value))


Attrs = Sequence[tuple[str | bytes, Any]]


def span(
    attrs: Attrs,
    idx: int,
    *,
    start_ns: int | None = START_NS,
    end_ns: int | None = END_NS,
    status_code: int = 0,
    events: Sequence[tuple[str, int]] = (),
) -> bytes:
    """Encode a ``Span`` with a trace/span id derived from ``idx`` (unique per case)."""
    out = ld(1, bytes([0xC0]) + idx.to_bytes(15, "big")) + ld(2, idx.to_bytes(8, "big"))
    out += ld(5, b"chat gpt-4o") + varint(6 << 3) + varint(3)
    if start_ns is not None:
        out += fixed64(7, start_ns)
    if end_ns is not None:
        out += fixed64(8, end_ns)
    out += b"".join(ld(9, key_value(k, v)) for k, v in attrs)
    for name, time_ns in events:
        out += ld(11, fixed64(1, time_ns) + ld(2, name.encode()))
    if status_code:
        out += ld(15, varint(3 << 3) + varint(status_code))
    return out


def traces(spans: Sequence[bytes], resource: Attrs = ()) -> bytes:
    """Encode a ``TracesData`` with one resource and one scope."""
    res = b"".join(ld(1, key_value(k, v)) for k, v in resource)
    scope = ld(1, ld(1, b"corpus.scope")) + b"".join(ld(2, s) for s in spans)
    return ld(1, ld(1, res) + ld(2, scope))


def llm_attrs(idx: int, **overrides: Any) -> list[tuple[str | bytes, Any]]:
    """A valid OTel GenAI chat span's attributes; ``overrides`` replace (None removes) keys.

    Keyword names use ``__`` for ``.``: ``gen_ai__usage__input_tokens="many"``.
    """
    attrs: dict[str | bytes, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.id": f"corpus-resp-{idx}",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.response.finish_reasons": ["stop"],
        "tenant.id": "corpus",
    }
    for key, value in overrides.items():
        name = key.replace("__", ".")
        if value is None:
            attrs.pop(name, None)
        else:
            attrs[name] = value
    return list(attrs.items())


# ---------------------------------------------------------------------------------- OTLP/JSON


def json_attrs(attrs: Attrs) -> list[dict[str, Any]]:
    """OTLP/JSON attributes from (key, value) pairs; ints become strings like the collector's."""
    out = []
    for key, value in attrs:
        if isinstance(value, str):
            v: dict[str, Any] = {"stringValue": value}
        elif isinstance(value, bool):
            v = {"boolValue": value}
        elif isinstance(value, int):
            v = {"intValue": str(value)}
        elif isinstance(value, float):
            v = {"doubleValue": value}
        elif isinstance(value, list):
            v = {"arrayValue": {"values": [{"stringValue": x} for x in value]}}
        else:
            v = value  # already a JSON AnyValue (or deliberately a wrong shape)
        out.append({"key": key, "value": v})
    return out


def json_span(attrs: Attrs, idx: int, **fields: Any) -> dict[str, Any]:
    """One OTLP/JSON span (hex ids, int64 times as strings); ``fields`` override span fields."""
    doc: dict[str, Any] = {
        "traceId": "c0" + idx.to_bytes(15, "big").hex(),
        "spanId": idx.to_bytes(8, "big").hex(),
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": str(START_NS),
        "endTimeUnixNano": str(END_NS),
        "attributes": json_attrs(attrs),
        "status": {},
    }
    doc.update(fields)
    return doc


def json_traces(spans: list[Any]) -> dict[str, Any]:
    """An OTLP/JSON ``TracesData`` document."""
    return {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": spans}]}]}


def dumps(doc: Any) -> bytes:
    """Compact JSON (NaN allowed on purpose: some writers emit it)."""
    return json.dumps(doc, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------- span_json


def flat(idx: int, **fields: Any) -> dict[str, Any]:
    """A valid span_json object; ``fields`` override (None removes) fields."""
    doc: dict[str, Any] = {
        "end_time": END_MS,
        "latency_ms": 1500,
        "model": "gpt-4o",
        "provider": "openai",
        "trace_id": "c0" + idx.to_bytes(15, "big").hex(),
        "span_id": idx.to_bytes(8, "big").hex(),
        "tenant": "corpus",
        "input_tokens": 100,
        "output_tokens": 20,
    }
    for key, value in fields.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


# ---------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One corpus file and what decoding it alone must give."""

    file: str
    encoding: str
    build: Callable[[int], bytes]  # idx -> file content (.jsonl: one message per line)
    note: str
    records: int = 0
    dead_letters: tuple[str, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)
    max_message_bytes: int | None = None


def _deep_json(levels: int) -> bytes:
    return b'{"resourceSpans":' + b"[" * levels + b"]" * levels + b"}"


def _proto_cases() -> list[Case]:
    def one(**kw: Any) -> Callable[[int], bytes]:
        return lambda i: traces([span(llm_attrs(i, **kw), i)])

    def timed(**kw: Any) -> Callable[[int], bytes]:
        return lambda i: traces([span(llm_attrs(i), i, **kw)])

    def valid(i: int) -> bytes:
        return traces([span(llm_attrs(i), i)])

    pb = "otlp_proto"
    dl = "protobuf_decode_error"
    return [
        Case("pb_valid_chat.pb", pb, valid, "baseline valid OTel GenAI span", records=1),
        Case("pb_empty.pb", pb, lambda i: b"", "zero-byte message", dead_letters=("empty_message",)),
        Case("pb_no_spans.pb", pb, lambda i: traces([]), "TracesData with a resource, no spans"),
        Case("pb_truncated_half.pb", pb, lambda i: valid(i)[: len(valid(i)) // 2],
             "valid message cut in half", dead_letters=(dl,)),
        Case("pb_truncated_one_byte.pb", pb, lambda i: valid(i)[:-1],
             "valid message missing its last byte", dead_letters=(dl,)),
        Case("pb_random_bytes.pb", pb, lambda i: bytes(range(255, 128, -1)) * 3,
             "bytes that are not protobuf", dead_letters=(dl,)),
        Case("pb_wire_type_7.pb", pb, lambda i: b"\x0f\x00\x00", "invalid wire type",
             dead_letters=(dl,)),
        Case("pb_oversize.pb", pb, valid, "valid but over a 100-byte decoder limit",
             dead_letters=("message_too_large",), max_message_bytes=100),
        Case("pb_tokens_numeric_string.pb", pb, one(gen_ai__usage__input_tokens="1000"),
             "input tokens as the string '1000' (accepted)", records=1),
        Case("pb_tokens_text.pb", pb, one(gen_ai__usage__input_tokens="many"),
             "input tokens as a word", dead_letters=("bad_attribute_type",)),
        Case("pb_tokens_bool.pb", pb, one(gen_ai__usage__input_tokens=True),
             "input tokens as a bool", dead_letters=("bad_attribute_type",)),
        Case("pb_tokens_integral_double.pb", pb, one(gen_ai__usage__input_tokens=1000.0),
             "input tokens as 1000.0 (accepted)", records=1),
        Case("pb_tokens_fraction_double.pb", pb, one(gen_ai__usage__input_tokens=1.5),
             "input tokens as 1.5", dead_letters=("bad_attribute_type",)),
        Case("pb_tokens_nan.pb", pb, one(gen_ai__usage__input_tokens=float("nan")),
             "input tokens as NaN", dead_letters=("non_finite_value",)),
        Case("pb_tokens_inf.pb", pb, one(gen_ai__usage__output_tokens=float("inf")),
             "output tokens as +inf", dead_letters=("non_finite_value",)),
        Case("pb_tokens_negative.pb", pb, one(gen_ai__usage__input_tokens=-1),
             "input tokens -1", dead_letters=("negative_tokens",)),
        Case("pb_tokens_int64_max.pb", pb, one(gen_ai__usage__input_tokens=(1 << 63) - 1),
             "input tokens 2^63-1", dead_letters=("absurd_tokens",)),
        Case("pb_tokens_int64_min.pb", pb, one(gen_ai__usage__output_tokens=-(1 << 63)),
             "output tokens -2^63", dead_letters=("negative_tokens",)),
        Case("pb_tokens_array.pb", pb, one(gen_ai__usage__input_tokens=["1", "2"]),
             "input tokens as an array", dead_letters=("bad_attribute_type",)),
        Case("pb_tokens_kvlist.pb", pb, one(gen_ai__usage__input_tokens={"n": 1}),
             "input tokens as a key-value list", dead_letters=("bad_attribute_type",)),
        Case("pb_tokens_bytes.pb", pb, one(gen_ai__usage__input_tokens=Bytes(b"100")),
             "input tokens as bytes_value", dead_letters=("bad_attribute_type",)),
        Case("pb_tokens_empty_value.pb", pb,
             lambda i: traces([span([*llm_attrs(i, gen_ai__usage__input_tokens=None),
                                     ("gen_ai.usage.input_tokens", None)], i)]),
             "input tokens with an empty AnyValue (treated as absent)", records=1),
        Case("pb_model_int.pb", pb, one(gen_ai__request__model=4),
             "model as an integer (stringified)", records=1),
        Case("pb_cost_nan.pb", pb, one(llm__cost__total=float("nan")),
             "span cost NaN", dead_letters=("non_finite_value",)),
        Case("pb_cost_negative.pb", pb, one(llm__cost__total=-0.5),
             "span cost -0.5", dead_letters=("negative_cost",)),
        Case("pb_cost_absurd.pb", pb, one(llm__cost__total=1e10),
             "span cost 10^10 USD (overflowed cost_nanos and failed the batch)",
             dead_letters=("absurd_cost",)),
        Case("pb_ttft_negative.pb", pb, one(gen_ai__response__time_to_first_chunk=-2.0),
             "time to first token -2 s", dead_letters=("negative_duration",)),
        Case("pb_end_missing.pb", pb, timed(end_ns=None), "no end time",
             dead_letters=("timestamp_out_of_range",)),
        Case("pb_end_1970.pb", pb, timed(start_ns=0, end_ns=1), "end time 1 ns after epoch",
             dead_letters=("timestamp_out_of_range",)),
        Case("pb_end_uint64_max.pb", pb, timed(end_ns=UINT64_MAX), "end time 2^64-1 ns",
             dead_letters=("timestamp_out_of_range",)),
        Case("pb_end_year_2100.pb", pb, timed(end_ns=YEAR_2100_NS), "end time in 2100",
             dead_letters=("timestamp_out_of_range",)),
        Case("pb_end_before_start.pb", pb, timed(start_ns=END_NS + 10**9),
             "ends before it starts", dead_letters=("end_before_start",)),
        Case("pb_start_uint64_max.pb", pb, timed(start_ns=UINT64_MAX),
             "absurd start, valid end (start treated as unknown)", records=1),
        Case("pb_status_absurd.pb", pb, timed(status_code=(1 << 31) - 1),
             "status code 2^31-1", records=1),
        Case("pb_ttft_event_absurd.pb", pb,
             lambda i: traces([span(llm_attrs(i, openinference__span__kind="LLM"), i,
                                    events=[("First Token Stream Event", 1)])]),
             "first-token event before the span start", dead_letters=("negative_duration",)),
        Case("pb_model_invalid_utf8.pb", pb, one(gen_ai__request__model=b"gpt-\xff\xfe"),
             "invalid UTF-8 in an attribute we read", dead_letters=(dl,)),
        Case("pb_content_invalid_utf8.pb", pb,
             lambda i: traces([span([*llm_attrs(i), ("gen_ai.input.messages", b"\xff\xc0")], i)]),
             "invalid UTF-8 in a content attribute (never decoded)", records=1),
        Case("pb_key_invalid_utf8.pb", pb,
             lambda i: traces([span([*llm_attrs(i), (b"\xffkey\xfe", "v")], i)]),
             "invalid UTF-8 in an unknown key", records=1),
        Case("pb_deep_array_value.pb", pb,
             lambda i: traces([span(llm_attrs(i, gen_ai__response__finish_reasons=_nest(200)), i)]),
             "finish reasons nested 200 arrays deep", dead_letters=(dl,)),
        Case("pb_duplicate_span.pb", pb,
             lambda i: traces([span(llm_attrs(i), i), span(llm_attrs(i), i)]),
             "the same span twice in one message", records=1, skipped={"duplicate_span": 1}),
        Case("pb_not_llm.pb", pb,
             lambda i: traces([span([("http.request.method", "GET")], i)]),
             "an HTTP span", skipped={"not_llm": 1}),
        Case("pb_no_model.pb", pb,
             one(gen_ai__request__model=None), "LLM span without any model",
             skipped={"no_model": 1}),
        Case("pb_2000_attributes.pb", pb,
             lambda i: traces([span([*llm_attrs(i), *((f"x.{n}", n) for n in range(2000))], i)]),
             "2,000 unread attributes on one span", records=1),
        Case("pb_mixed_good_and_bad.pb", pb,
             lambda i: traces([span(llm_attrs(i), i),
                               span(llm_attrs(i + 1000, gen_ai__usage__input_tokens=-5), i + 1000),
                               span([("http.route", "/")], i + 2000)]),
             "one good, one rejected and one non-LLM span", records=1,
             dead_letters=("negative_tokens",), skipped={"not_llm": 1}),
    ]  # fmt: skip


def _nest(levels: int) -> list[Any]:
    value: list[Any] = ["stop"]
    for _ in range(levels):
        value = [value]
    return value


def _json_cases() -> list[Case]:
    def one(**kw: Any) -> Callable[[int], bytes]:
        return lambda i: dumps(json_traces([json_span(llm_attrs(i, **kw), i)]))

    def fields(**kw: Any) -> Callable[[int], bytes]:
        return lambda i: dumps(json_traces([json_span(llm_attrs(i), i, **kw)]))

    def doc(value: Any) -> Callable[[int], bytes]:
        return lambda i: dumps(value)

    js = "otlp_json"
    sv, jd = "schema_violation", "json_decode_error"
    return [
        Case("json_valid_chat.json", js, one(), "baseline valid OTLP/JSON span", records=1),
        Case("json_empty_object.json", js, doc({}), "an empty object (no spans)"),
        Case("json_not_object.json", js, doc([1, 2]), "a JSON array", dead_letters=(sv,)),
        Case("json_null.json", js, doc(None), "JSON null", dead_letters=(sv,)),
        Case("json_resource_spans_object.json", js, doc({"resourceSpans": {"a": 1}}),
             "resourceSpans is an object", dead_letters=(sv,)),
        Case("json_spans_string.json", js,
             doc({"resourceSpans": [{"scopeSpans": [{"spans": "oops"}]}]}),
             "spans is a string", dead_letters=(sv,)),
        Case("json_span_is_number.json", js,
             doc({"resourceSpans": [{"scopeSpans": [{"spans": [7]}]}]}),
             "a span is a number", dead_letters=(sv,)),
        Case("json_attributes_object.json", js, fields(attributes={"k": "v"}),
             "attributes is an object", dead_letters=(sv,)),
        Case("json_attribute_value_list.json", js,
             fields(attributes=[{"key": "gen_ai.operation.name", "value": ["chat"]}]),
             "an attribute value is a list", dead_letters=(sv,)),
        Case("json_tokens_number.json", js,
             one(gen_ai__usage__input_tokens={"intValue": 100}), "int64 as a JSON number",
             records=1),
        Case("json_tokens_text.json", js,
             one(gen_ai__usage__input_tokens={"intValue": "many"}), "intValue 'many'",
             dead_letters=("bad_attribute_type",)),
        Case("json_tokens_huge.json", js,
             one(gen_ai__usage__input_tokens={"intValue": "9" * 30}), "intValue of 30 digits",
             dead_letters=("absurd_tokens",)),
        Case("json_tokens_2_63.json", js,
             one(gen_ai__usage__input_tokens={"intValue": str(1 << 63)}), "intValue 2^63",
             dead_letters=("absurd_tokens",)),
        Case("json_tokens_1e400.json", js,
             lambda i: one()(i).replace(b'"intValue":"100"', b'"intValue":1e400'),
             "intValue 1e400 (parses as inf)", dead_letters=("non_finite_value",)),
        Case("json_cost_nan_string.json", js,
             one(llm__cost__total={"doubleValue": "NaN"}), "doubleValue 'NaN'",
             dead_letters=("non_finite_value",)),
        Case("json_cost_nan_literal.json", js,
             one(llm__cost__total={"doubleValue": float("nan")}), "bare NaN literal",
             dead_letters=("non_finite_value",)),
        Case("json_cost_infinity_string.json", js,
             one(llm__cost__total={"doubleValue": "Infinity"}), "doubleValue 'Infinity'",
             dead_letters=("non_finite_value",)),
        Case("json_cost_1e300.json", js, one(llm__cost__total={"doubleValue": 1e300}),
             "span cost 1e300 USD", dead_letters=("absurd_cost",)),
        Case("json_time_text.json", js, fields(endTimeUnixNano="yesterday"),
             "end time is a word", dead_letters=(sv,)),
        Case("json_time_negative.json", js, fields(endTimeUnixNano="-5"),
             "end time negative", dead_letters=("timestamp_out_of_range",)),
        Case("json_time_huge.json", js, fields(endTimeUnixNano="9" * 40),
             "end time of 40 digits", dead_letters=("timestamp_out_of_range",)),
        Case("json_time_number.json", js, fields(endTimeUnixNano=END_NS),
             "end time as a JSON number", records=1),
        Case("json_time_float.json", js, fields(endTimeUnixNano=1.5e18),
             "end time as a float", dead_letters=(sv,)),
        Case("json_trace_id_bad.json", js, fields(traceId="not-hex"),
             "trace id neither hex nor base64", dead_letters=(sv,)),
        Case("json_status_list.json", js, fields(status=[2]), "status is a list",
             dead_letters=(sv,)),
        Case("json_invalid_utf8.json", js,
             lambda i: one()(i).replace(b'"gpt-4o"', b'"gpt-\xff"'),
             "invalid UTF-8 bytes in a value", dead_letters=(jd,)),
        Case("json_lone_surrogate.json", js,
             lambda i: one()(i).replace(b'"gpt-4o"', b'"gpt-\\ud800"'),
             "a lone surrogate escape in the model (replaced, not fatal)", records=1),
        Case("json_truncated.json", js, lambda i: one()(i)[:-7], "cut short",
             dead_letters=(jd,)),
        Case("json_trailing_garbage.json", js, lambda i: one()(i) + b"}}", "extra braces",
             dead_letters=(jd,)),
        Case("json_deep_10k.json", js, lambda i: _deep_json(10_000),
             "arrays nested 10,000 deep", dead_letters=(jd,)),
        Case("json_deep_array_value.json", js,
             lambda i: one(gen_ai__response__finish_reasons=_json_nest(100))(i),
             "finish reasons nested 100 arrayValues deep", dead_letters=("bad_attribute_type",)),
        Case("json_duplicate_span.json", js,
             lambda i: dumps(json_traces([json_span(llm_attrs(i), i)] * 2)),
             "the same span twice", records=1, skipped={"duplicate_span": 1}),
        Case("json_snake_case.json", js,
             lambda i: one()(i).replace(b"resourceSpans", b"resource_spans")
             .replace(b"scopeSpans", b"scope_spans"), "snake_case field names", records=1),
    ]  # fmt: skip


def _json_nest(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "stop"}
    for _ in range(levels):
        value = {"arrayValue": {"values": [value]}}
    return value


def _lines(*docs: Callable[[int], Any]) -> Callable[[int], bytes]:
    """span_json file content: one message per line (built from per-line builders)."""

    def build(i: int) -> bytes:
        parts = [d(i) for d in docs]
        return b"\n".join(p if isinstance(p, bytes) else dumps(p) for p in parts)

    return build


def _span_json_cases() -> list[Case]:
    def one(**kw: Any) -> Callable[[int], bytes]:
        return _lines(lambda i: flat(i, **kw))

    def raw(text: bytes) -> Callable[[int], bytes]:
        return lambda i: text

    sj = "span_json"
    sv, jd = "schema_violation", "json_decode_error"
    return [
        Case("flat_valid.jsonl", sj, one(), "baseline valid span_json", records=1),
        Case("flat_missing_end_time.jsonl", sj, one(end_time=None), "no end_time",
             dead_letters=(sv,)),
        Case("flat_missing_model.jsonl", sj, one(model=None), "no model", dead_letters=(sv,)),
        Case("flat_blank_model.jsonl", sj, one(model="   "), "blank model", dead_letters=(sv,)),
        Case("flat_tokens_string.jsonl", sj, one(input_tokens="100"), "tokens as a string",
             dead_letters=(sv,)),
        Case("flat_tokens_float.jsonl", sj, one(input_tokens=1.5), "tokens 1.5",
             dead_letters=(sv,)),
        Case("flat_tokens_bool.jsonl", sj, one(input_tokens=True), "tokens true",
             dead_letters=(sv,)),
        Case("flat_tokens_negative.jsonl", sj, one(input_tokens=-1), "tokens -1",
             dead_letters=("negative_tokens",)),
        Case("flat_tokens_2_63.jsonl", sj, one(output_tokens=1 << 63), "tokens 2^63",
             dead_letters=(sv,)),
        Case("flat_tokens_int64_max.jsonl", sj, one(output_tokens=(1 << 63) - 1),
             "tokens 2^63-1", dead_letters=("absurd_tokens",)),
        Case("flat_cost_nan.jsonl", sj, one(cost_usd=float("nan")), "bare NaN literal",
             dead_letters=(jd,)),
        Case("flat_cost_1e400.jsonl", sj,
             lambda i: one()(i).replace(b'"input_tokens":100', b'"cost_usd":1e400'),
             "cost 1e400 (inf)", dead_letters=(sv,)),
        Case("flat_cost_negative.jsonl", sj, one(cost_usd=-1.0), "cost -1",
             dead_letters=("negative_cost",)),
        Case("flat_cost_absurd.jsonl", sj, one(cost_usd=1_760_000_000_000), "cost 1.76e12 USD",
             dead_letters=("absurd_cost",)),
        Case("flat_end_time_word.jsonl", sj, one(end_time="yesterday"), "end_time a word",
             dead_letters=(sv,)),
        Case("flat_end_time_far_future.jsonl", sj, one(end_time="2100-01-01T00:00:00Z"),
             "end_time in 2100", dead_letters=("timestamp_out_of_range",)),
        Case("flat_end_time_huge_epoch.jsonl", sj, one(end_time=10**30), "end_time 10^30",
             dead_letters=("timestamp_out_of_range",)),
        Case("flat_end_time_zero.jsonl", sj, one(end_time=0), "end_time epoch 0",
             dead_letters=("timestamp_out_of_range",)),
        Case("flat_latency_negative.jsonl", sj, one(latency_ms=-5), "negative latency",
             dead_letters=("end_before_start",)),
        Case("flat_not_object.jsonl", sj, raw(b'["end_time", "model"]'), "a JSON array",
             dead_letters=(sv,)),
        Case("flat_empty_object.jsonl", sj, raw(b"{}"), "an empty object", dead_letters=(sv,)),
        Case("flat_invalid_utf8.jsonl", sj,
             lambda i: one()(i).replace(b'"gpt-4o"', b'"gpt-\xff"'), "invalid UTF-8 bytes",
             dead_letters=(jd,)),
        Case("flat_lone_surrogate_slow_path.jsonl", sj,
             _lines(lambda i: dumps(flat(i)).replace(b'"gpt-4o"', b'"gpt-\\ud800"'),
                    lambda i: b"{not json"),
             "a lone surrogate next to a broken line (slow path)", records=1,
             dead_letters=(jd,)),
        Case("flat_deep_10k.jsonl", sj, raw(b"[" * 10_000 + b"]" * 10_000),
             "arrays nested 10,000 deep", dead_letters=(jd,)),
        Case("flat_deep_in_field.jsonl", sj,
             lambda i: dumps(flat(i))[:-1] + b',"extra":' + b"[" * 5000 + b"]" * 5000 + b"}",
             "an unknown field nested 5,000 deep (past the JSON parser's depth limit)",
             dead_letters=(jd,)),
        Case("flat_stringified_array.jsonl", sj, one(tenant="[1,2]"),
             "a string field that looks like an array", records=1),
        Case("flat_duplicates.jsonl", sj, _lines(lambda i: flat(i), lambda i: flat(i)),
             "the same call twice (two messages)", records=1, skipped={"duplicate_span": 1}),
        Case("flat_embeddings.jsonl", sj, one(operation="embeddings"), "not an LLM call",
             skipped={"not_llm": 1}),
        Case("flat_truncated.jsonl", sj, lambda i: one()(i)[:-3], "cut short",
             dead_letters=(jd,)),
    ]  # fmt: skip


def cases() -> list[Case]:
    """Every corpus case, in manifest order."""
    return [*_proto_cases(), *_json_cases(), *_span_json_cases()]


def case_bytes(case: Case, idx: int) -> bytes:
    """File content of one case (``idx`` gives it unique ids)."""
    return case.build(idx + 1)


def manifest_text(all_cases: Sequence[Case]) -> str:
    """Render ``manifest.toml``."""
    lines = [
        "# Generated by make_corpus.py -- edit the CASES there, not this file.",
        "# Each case: decoded alone with now = 1_760_000_000_000 ms; .jsonl = one message a line.",
        "",
    ]
    for c in all_cases:
        lines += [
            "[[case]]",
            f'file = "{c.file}"',
            f'encoding = "{c.encoding}"',
            f"note = {json.dumps(c.note)}",
            f"records = {c.records}",
            f"dead_letters = {json.dumps(list(c.dead_letters))}",
            "skipped = {" + ", ".join(f"{k} = {v}" for k, v in c.skipped.items()) + "}",
        ]
        if c.max_message_bytes is not None:
            lines.append(f"max_message_bytes = {c.max_message_bytes}")
        lines.append("")
    return "\n".join(lines)


def write(root: Path = HERE) -> list[Path]:
    """Write every case file and the manifest under ``root``; return the paths written."""
    all_cases = cases()
    names = [c.file for c in all_cases]
    if len(set(names)) != len(names):
        msg = "duplicate corpus file names"
        raise ValueError(msg)
    written = []
    for idx, case in enumerate(all_cases):
        path = root / case.file
        path.write_bytes(case_bytes(case, idx))
        written.append(path)
    manifest = root / "manifest.toml"
    manifest.write_text(manifest_text(all_cases))
    return [*written, manifest]


if __name__ == "__main__":
    paths = write(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
    print(f"wrote {len(paths)} files")

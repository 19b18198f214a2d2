"""Shared builders for the decode tests (no tests here).

Golden span cases live in ``tests/fixtures/decode/conventions.json``; these helpers turn a case
into OTLP protobuf bytes (built with the official ``trace_pb2`` classes, like an SDK exporter) or
OTLP/JSON (the collector's shape: hex ids, integer enums, int64 as strings), and build decoders
with a fixed clock.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status, TracesData

from spanpulse.schemas.conventions import AttributeKeys
from spanpulse.schemas.decode import Decoder, Message
from spanpulse.schemas.pricing import Pricing

FIXTURES = Path(__file__).parent / "fixtures" / "decode"
NOW_MS = 1_760_000_000_000
PRICING = Pricing()  # shared: genai-prices lookups are cached per instance
CONTENT_MARKERS = ("TOP-SECRET", "hello")


def load_cases() -> list[dict[str, Any]]:
    return json.loads((FIXTURES / "conventions.json").read_text())["cases"]  # type: ignore[no-any-return]


def any_value(value: Any) -> AnyValue:
    if isinstance(value, dict) and "double" in value:
        return AnyValue(double_value=float(value["double"]))
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def key_values(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def case_span(case: dict[str, Any], index: int = 0) -> Span:
    """Build the Span of a golden case; times are relative to NOW_MS unless absolute."""
    end_ms = case.get("end_ms", NOW_MS - case.get("end_offset_ms", 1000))
    start_ms = case.get("start_ms", NOW_MS - case.get("start_offset_ms", 2000))
    span = Span(
        trace_id=(index + 1).to_bytes(16, "big"),
        span_id=(index + 1).to_bytes(8, "big"),
        name=case["name"],
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=max(start_ms, 0) * 1_000_000,
        end_time_unix_nano=max(end_ms, 0) * 1_000_000,
        attributes=key_values(case["attributes"]),
    )
    if case.get("status_error"):
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="boom"))
    for event in case.get("events", []):
        ev = span.events.add()
        ev.name = event["name"]
        ev.time_unix_nano = span.start_time_unix_nano + event["offset_ms"] * 1_000_000
    return span


def traces_bytes(spans: list[Span], resource: dict[str, Any] | None = None) -> bytes:
    data = TracesData()
    rs = data.resource_spans.add()
    rs.resource.attributes.extend(key_values(resource or {}))
    rs.scope_spans.add().spans.extend(spans)
    return data.SerializeToString()


def proto_to_otlp_json(value: bytes) -> bytes:
    """Re-encode OTLP protobuf bytes as OTLP/JSON the way the collector writes it."""
    doc = MessageToDict(TracesData.FromString(value), use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(doc).encode()


def make_decoder(encoding: str = "otlp_proto", **kwargs: Any) -> Decoder:
    kwargs.setdefault("now_ms", lambda: NOW_MS)
    keys = kwargs.pop("keys", AttributeKeys())
    return Decoder(encoding, keys, kwargs.pop("pricing", PRICING), **kwargs)  # type: ignore[arg-type]


def messages(values: list[bytes | None], topic: str = "llm-spans") -> list[Message]:
    return [Message(v, topic, 0, 100 + i) for i, v in enumerate(values)]


def assert_expected(record: dict[str, Any], expect: dict[str, Any], name: str) -> None:
    """Compare a record to the subset of fields a case expects ("priced": cost present and > 0)."""
    for field, want in expect.items():
        if field == "priced":
            assert (record["cost_nanos"] is not None and record["cost_nanos"] > 0) == want, name
            continue
        got = record[field]
        if isinstance(want, float) and got is not None:
            assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), (name, field, got, want)
        else:
            assert got == want, (name, field, got, want)


def batch_without_content(batch: Any) -> None:
    """No prompt/completion marker may appear in records or per-span dead letters."""
    text = batch.records.write_json()
    for dl in batch.dead_letters:
        if dl.span_index is not None:
            text += dl.to_json_bytes().decode() + (dl.payload or b"").decode()
        text += dl.detail
    for marker in CONTENT_MARKERS:
        assert marker not in text

"""Tests of the Kafka message encoders: parse the bytes back and check what real decoders see."""

from __future__ import annotations

import base64
import json
import math
import time
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import pytest
from google.protobuf import json_format
from opentelemetry.proto.trace.v1 import trace_pb2

from spanpulse.schemas.encode import (
    CANARY,
    CONVENTIONS,
    HTTP_SCOPE,
    MIXED_CONVENTIONS,
    SCOPES,
    SPAN_JSON_FIELDS,
    TOOL_FINISH,
    TOOL_SCOPE,
    EncodedBatch,
    anthropic_cache_write,
    convention_of,
    encode_calls,
    encode_calls_detailed,
    iter_calls,
    otel_finish_reasons,
    traceloop_finish_reasons,
)
from spanpulse.schemas.traffic import TrafficModel

START = 1_741_078_800_000
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "span_json.schema.json"
KIND_SERVER, KIND_CLIENT, KIND_INTERNAL = 2, 3, 1


@cache
def _frame() -> pl.DataFrame:
    """About 3k calls: ~15 errors, a few of them Anthropic, hundreds of tool calls."""
    return TrafficModel(seed=21, rate_per_s=10.0).calls(START, 300)


@pytest.fixture(scope="module")
def calls() -> pl.DataFrame:
    return _frame()


@pytest.fixture(scope="module")
def by_span_id(calls: pl.DataFrame) -> dict[str, Any]:
    return {c.span_id: c for c in iter_calls(calls)}


class Parsed(NamedTuple):
    """One span read back from the wire, with its resource, scope and attributes."""

    resource: dict[str, Any]
    scope: str
    span: Any
    attrs: dict[str, Any]

    @property
    def is_llm(self) -> bool:
        return self.span.kind != KIND_SERVER and (
            self.attrs.get("openinference.span.kind") == "LLM"
            or "gen_ai.request.model" in self.attrs
            or "llm.invocation_parameters" in self.attrs
        )


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind)


def _attrs(item: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in item.attributes}


def _parse(messages: list[bytes]) -> list[Parsed]:
    """Flatten OTLP messages into spans, parsing each with the generated protobuf classes."""
    out = []
    for message in messages:
        data = trace_pb2.TracesData()
        data.ParseFromString(message)
        for rs in data.resource_spans:
            resource = _attrs(rs.resource)
            for ss in rs.scope_spans:
                out.extend(Parsed(resource, ss.scope.name, sp, _attrs(sp)) for sp in ss.spans)
    return out


@cache
def _encoded(convention: str) -> tuple[EncodedBatch, list[Parsed]]:
    """The whole frame in one convention, encoded once and parsed once for several tests."""
    batch = encode_calls_detailed(_frame(), "otlp_proto", convention)  # type: ignore[arg-type]
    return batch, _parse(batch.messages)


# convention -> (input key, output key, finish key, finish value from (provider, raw))
EXPECTED: dict[str, tuple[str, str, str, Any]] = {
    "otel": ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
             "gen_ai.response.finish_reasons", lambda p, r: list(otel_finish_reasons(p, r))),
    "otel_deprecated": ("gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens",
                        "gen_ai.response.finish_reasons",
                        lambda p, r: list(otel_finish_reasons(p, r))),
    "traceloop_legacy": ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                         "gen_ai.completion.0.finish_reason", lambda p, r: r),
    "traceloop": ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                  "gen_ai.response.finish_reasons",
                  lambda p, r: list(traceloop_finish_reasons(p, r))),
    "openinference": ("llm.token_count.prompt", "llm.token_count.completion",
                      "llm.finish_reason", lambda p, r: r),
    "anthropic_native": ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                         "anthropic.message.stop_reason", lambda p, r: r),
}  # fmt: skip


def _request_model(convention: str, attrs: dict[str, Any]) -> str:
    if convention == "openinference":
        return str(json.loads(attrs["llm.invocation_parameters"])["model"])
    return str(attrs["gen_ai.request.model"])


def _check_llm_span(convention: str, p: Parsed, call: Any) -> None:
    attrs, span = p.attrs, p.span
    if convention == "anthropic_native" and call.provider != "anthropic":
        convention = "otel"  # the SDK only traces its own calls
    assert (p.resource["service.name"], p.resource["deployment.environment.name"]) == (
        call.service,
        call.environment,
    )
    assert attrs["tenant.id"] == call.tenant
    assert attrs["app.feature"] == call.feature
    assert attrs["app.prompt_version"] == call.prompt_version
    assert attrs.get("app.output.parse_ok") == call.parse_ok
    assert attrs.get("app.refusal", False) == call.refusal
    assert "app.refusal" not in attrs or attrs["app.refusal"] is True
    assert _request_model(convention, attrs) == call.model
    assert span.parent_span_id.hex() == call.trace_id[:16]
    assert span.start_time_unix_nano == call.start_time_ms * 1_000_000
    assert span.end_time_unix_nano == call.end_time_ms * 1_000_000
    in_key, out_key, finish_key, finish = EXPECTED[convention]
    if call.is_error:
        assert span.status.code == 2
        assert in_key not in attrs and finish_key not in attrs
        assert ("error.type" in attrs) == (convention != "openinference")
        return
    assert span.status.code == 0
    assert (attrs[in_key], attrs[out_key]) == (call.input_tokens, call.output_tokens)
    assert attrs[finish_key] == finish(call.provider, call.finish_reason)
    if convention == "openinference":
        assert attrs["llm.model_name"] == call.response_model
    else:
        assert attrs["gen_ai.response.model"] == call.response_model


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_otlp_proto_round_trip(
    convention: str, calls: pl.DataFrame, by_span_id: dict[str, Any]
) -> None:
    batch, spans = _encoded(convention)
    assert len(spans) == batch.llm_spans + batch.non_llm_spans
    assert batch.llm_spans + batch.dropped_llm_spans == calls.height
    llm = [p for p in spans if p.is_llm]
    assert len(llm) == batch.llm_spans
    seen: Counter[str] = Counter()
    for p in llm:
        call = by_span_id[p.span.span_id.hex()]
        concrete = convention_of(convention, call.span_id)  # type: ignore[arg-type]
        seen[concrete] += 1
        _check_llm_span(concrete, p, call)
    if convention == "mixed":
        assert set(seen) == set(MIXED_CONVENTIONS)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_non_llm_spans_are_added_and_counted(convention: str, calls: pl.DataFrame) -> None:
    batch, spans = _encoded(convention)
    servers = [p.span for p in spans if p.span.kind == KIND_SERVER]
    assert len(servers) == calls.height  # one HTTP parent per trace, even when the LLM span is lost
    assert all(s.parent_span_id == b"" for s in servers)
    tools = [p for p in spans if p.span.name.startswith("execute_tool ")]
    assert all(not p.is_llm and p.scope == TOOL_SCOPE.name for p in tools)
    ok = calls.filter(~pl.col("is_error"))
    assert len(tools) == ok["finish_reason"].is_in(list(TOOL_FINISH)).sum() > 100
    assert batch.non_llm_spans == len(servers) + len(tools)
    errors = {s.trace_id.hex() for s in servers if s.status.code == 2}
    assert errors == set(calls.filter("is_error")["trace_id"])


def test_legacy_traceloop_loses_failed_anthropic_calls(calls: pl.DataFrame) -> None:
    batch, _ = _encoded("traceloop_legacy")
    lost = calls.filter(pl.col("is_error") & (pl.col("provider") == "anthropic")).height
    assert lost > 0
    assert batch.dropped_llm_spans == lost


def test_convention_quirks(calls: pl.DataFrame, by_span_id: dict[str, Any]) -> None:
    spans = {c: _encoded(c)[1] for c in CONVENTIONS}
    gemini = [p for p in spans["otel"] if p.attrs.get("gen_ai.provider.name") == "gemini"]
    assert gemini and all(p.span.name.startswith("generate_content ") for p in gemini)
    oi = [p.span for p in spans["openinference"] if p.is_llm]
    assert {s.kind for s in oi} == {KIND_INTERNAL}
    streamed = [s for s in oi if by_span_id[s.span_id.hex()].ttft_ms is not None]
    assert streamed and all(
        e.name == "First Token Stream Event" for s in streamed for e in s.events
    )
    legacy = {p.attrs.get("gen_ai.system") for p in spans["traceloop_legacy"]}
    assert "Anthropic" in legacy
    mapped = {
        v for p in spans["traceloop"] for v in p.attrs.get("gen_ai.response.finish_reasons", [])
    }
    assert "tool_call" in mapped and "tool_calls" not in mapped and "end_turn" not in mapped
    native = [p for p in spans["anthropic_native"] if p.scope == "com.anthropic.sdk.python"]
    assert native and all(p.span.name == "anthropic.messages.create" for p in native)
    for p in native:
        call = by_span_id[p.span.span_id.hex()]
        assert "gen_ai.response.finish_reasons" not in p.attrs
        if not call.is_error:
            assert p.attrs["gen_ai.usage.cache_write.input_tokens"] == anthropic_cache_write(call)
            assert p.attrs["gen_ai.usage.cache_read.input_tokens"] == call.cached_input_tokens
    ttft = [p.attrs.get("gen_ai.response.time_to_first_chunk") for p in spans["otel"]]
    assert sum(t is not None for t in ttft) == calls["ttft_ms"].is_not_null().sum()


@pytest.mark.parametrize(
    ("provider", "raw", "otel", "traceloop"),
    [
        ("openai", "stop", "stop", "stop"),
        ("openai", "tool_calls", "tool_calls", "tool_call"),
        ("openai", "length", "length", "length"),
        ("openai", "content_filter", "content_filter", "content_filter"),
        ("anthropic", "end_turn", "stop", "stop"),
        ("anthropic", "stop_sequence", "stop", "stop"),
        ("anthropic", "max_tokens", "length", "length"),
        ("anthropic", "tool_use", "tool_calls", "tool_call"),
        ("anthropic", "refusal", "refusal", "refusal"),
        ("gcp.gemini", "STOP", "stop", "stop"),
        ("gcp.gemini", "MAX_TOKENS", "max_tokens", "length"),
        ("gcp.gemini", "SAFETY", "safety", "content_filter"),
    ],
)
def test_finish_reason_spelling_per_instrumentation(
    provider: str, raw: str, otel: str, traceloop: str
) -> None:
    """The reference's section 5 table, spelled out literally (not derived from the code)."""
    assert otel_finish_reasons(provider, raw) == (otel,)
    assert traceloop_finish_reasons(provider, raw) == (traceloop,)


def test_anthropic_finish_reasons_on_the_wire() -> None:
    wire = {
        convention: {
            v
            for p in _encoded(convention)[1]
            if p.attrs.get("gen_ai.provider.name") == "anthropic"
            for v in p.attrs.get("gen_ai.response.finish_reasons", [])
        }
        for convention in ("otel", "traceloop")
    }
    assert wire["otel"] and wire["otel"] <= {"stop", "length", "tool_calls", "refusal"}
    assert wire["traceloop"] and wire["traceloop"] <= {"stop", "length", "tool_call", "refusal"}


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode()
            if k in ("traceId", "spanId", "parentSpanId")
            else _hex_ids_to_base64(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids_to_base64(x) for x in node]
    return node


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_otlp_json_is_the_same_message_as_proto(convention: str, calls: pl.DataFrame) -> None:
    head = calls.head(300)
    protos = encode_calls(head, "otlp_proto", convention, spans_per_message=120)  # type: ignore[arg-type]
    jsons = encode_calls(head, "otlp_json", convention, spans_per_message=120)  # type: ignore[arg-type]
    assert len(protos) == len(jsons) == 3
    for proto, text in zip(protos, jsons, strict=True):
        raw = json.loads(text)
        span = raw["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16
        assert isinstance(span["startTimeUnixNano"], str) and isinstance(span["kind"], int)
        # OTLP/JSON differs from proto3 JSON only in the ids: hex instead of base64
        from_json = json_format.Parse(json.dumps(_hex_ids_to_base64(raw)), trace_pb2.TracesData())
        from_proto = trace_pb2.TracesData()
        from_proto.ParseFromString(proto)
        assert from_json == from_proto


def test_int_attributes_are_strings_in_json(calls: pl.DataFrame) -> None:
    text = encode_calls(calls.head(50), "otlp_json")[0].decode()
    assert '"key":"gen_ai.usage.input_tokens","value":{"intValue":"' in text
    assert '"arrayValue":{"values":[{"stringValue":' in text


@pytest.mark.parametrize("per_message", [1, 7, 200])
def test_spans_per_message_bounds_llm_calls(per_message: int, calls: pl.DataFrame) -> None:
    head = calls.head(300)
    messages = encode_calls(head, "otlp_proto", "otel", spans_per_message=per_message)
    assert len(messages) == math.ceil(head.height / per_message)
    counts = [sum(p.is_llm for p in _parse([m])) for m in messages]
    assert max(counts) == per_message or per_message > head.height
    assert sum(counts) == head.height


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_content_only_when_asked(convention: str, calls: pl.DataFrame) -> None:
    head = calls.head(400)
    plain = b"".join(encode_calls(head, "otlp_proto", convention))  # type: ignore[arg-type]
    assert CANARY.encode() not in plain
    rich = encode_calls(head, "otlp_proto", convention, include_content=True)  # type: ignore[arg-type]
    assert CANARY.encode() in b"".join(rich)
    text = b"".join(encode_calls(head, "otlp_json", convention, include_content=True))  # type: ignore[arg-type]
    assert CANARY.encode() in text
    assert CANARY.encode() not in b"".join(encode_calls(head, "span_json", convention))  # type: ignore[arg-type]


def test_content_keys_per_convention(calls: pl.DataFrame) -> None:
    ok = calls.filter(~pl.col("is_error") & (pl.col("provider") == "openai")).head(20)
    expected = {
        "otel": "gen_ai.input.messages",
        "traceloop": "gen_ai.output.messages",
        "traceloop_legacy": "gen_ai.prompt.0.content",
        "openinference": "input.value",
    }
    for convention, key in expected.items():
        spans = _parse(encode_calls(ok, "otlp_proto", convention, include_content=True))  # type: ignore[arg-type]
        values = [p.attrs.get(key) for p in spans if p.is_llm]
        assert all(v is not None and CANARY in v for v in values), convention
    spans = _parse(encode_calls(ok, "otlp_proto", "otel_deprecated", include_content=True))
    events = [e.name for p in spans if p.is_llm for e in p.span.events]
    assert "gen_ai.content.prompt" in events


def test_span_json_fields_and_values(calls: pl.DataFrame, by_span_id: dict[str, Any]) -> None:
    messages = encode_calls(calls, "span_json")
    assert len(messages) == calls.height
    types = {
        "input_tokens": int, "output_tokens": int, "cached_input_tokens": int,
        "reasoning_tokens": int, "error": bool, "refusal": bool,
    }  # fmt: skip
    optional = {"finish_reason": str, "ttft_ms": int, "parse_ok": bool}
    validator = _schema_validator()
    for message in messages[:1000]:
        obj = json.loads(message)
        assert tuple(obj) == tuple(k for k in SPAN_JSON_FIELDS if k in obj)
        assert set(SPAN_JSON_FIELDS) - set(obj) <= {"finish_reason", "ttft_ms", "parse_ok"}
        if validator is not None:
            validator.validate(obj)
        for key, kind in types.items():
            assert type(obj[key]) is kind, key
        for key, kind in optional.items():
            assert type(obj.get(key, kind())) is kind, key
        call = by_span_id[obj["span_id"]]
        assert obj["end_time"].endswith("Z") and len(obj["end_time"]) == 24
        end = datetime.fromisoformat(obj["end_time"]).astimezone(UTC)
        assert round(end.timestamp() * 1000) == call.end_time_ms
        start = datetime.fromisoformat(obj["start_time"])
        assert round(start.timestamp() * 1000) == call.start_time_ms
        assert (obj["tenant"], obj["model"], obj.get("finish_reason"), obj["error"]) == (
            call.tenant, call.model, call.finish_reason, call.is_error,
        )  # fmt: skip
        assert (obj.get("ttft_ms"), obj.get("parse_ok")) == (call.ttft_ms, call.parse_ok)


def _schema_validator() -> Any:
    """The shared JSON Schema, once its owner has written it (field names must agree)."""
    if not SCHEMA_PATH.exists():
        return None
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert set(SPAN_JSON_FIELDS) <= set(schema["properties"])
    return jsonschema.Draft202012Validator(schema)


def test_scopes_are_named_per_library(calls: pl.DataFrame) -> None:
    scopes = {p.scope for p in _encoded("mixed")[1]}
    expected = {s.name for by_provider in SCOPES.values() for s in by_provider.values()}
    non_llm = {HTTP_SCOPE.name, TOOL_SCOPE.name}
    assert non_llm <= scopes
    assert scopes - non_llm <= expected
    assert "com.anthropic.sdk.python" in scopes


def test_bad_arguments(calls: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="encoding"):
        encode_calls(calls.head(1), "avro")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="convention"):
        encode_calls(calls.head(1), "otlp_proto", "langfuse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spans_per_message"):
        encode_calls(calls.head(1), "otlp_proto", spans_per_message=0)
    assert encode_calls(calls.head(0), "otlp_proto") == []
    assert encode_calls(calls.head(0), "span_json") == []


@pytest.mark.parametrize("encoding", ["otlp_proto", "span_json"])
def test_encoding_is_fast(encoding: str, calls: pl.DataFrame) -> None:
    """Order-of-magnitude guard; the >= 100k spans/s figure is measured on an idle core."""
    encode_calls(calls.head(500), encoding)  # type: ignore[arg-type]
    began = time.process_time()
    batch = encode_calls_detailed(calls, encoding)  # type: ignore[arg-type]
    rate = (batch.llm_spans + batch.non_llm_spans) / (time.process_time() - began)
    assert rate > 40_000

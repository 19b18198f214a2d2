"""Encode generated calls as the Kafka message values real producers would send.

Three encodings, as the OTel Collector Kafka exporter and simple apps produce them:

- ``otlp_proto``: OTLP ``TracesData`` bytes (what ``traces::encoding: otlp_proto`` writes);
- ``otlp_json``: the OTLP/JSON mapping of the same message (hex ids, int64 as strings,
  ``kind`` and status ``code`` as integers);
- ``span_json``: one flat JSON object per call and message (apps that skip OTel).

The OTLP encodings spell every LLM call in one of several *conventions*, each a faithful copy of
what one instrumentation library writes (see ``/work/shared/reference/genai-attributes.md``):
current and deprecated OTel GenAI names, Traceloop before 0.55 and from 0.55, OpenInference,
and the Anthropic SDK's own spans.  Their quirks are kept on purpose because the decoders must
survive them: the Google GenAI instrumentation's provider value ``gemini``, OpenInference's
response model in ``llm.model_name`` and missing ``error.type``, Traceloop's ``tool_call``
mapping and legacy capitalised ``Anthropic`` (whose failed Anthropic calls produce no span at
all), the native span's raw ``anthropic.message.stop_reason`` and HTTP attributes.

Each trace also gets non-LLM spans (an HTTP server parent, and an ``execute_tool`` span after a
tool call) so "skipped non-LLM spans" paths get exercised.  ``include_content=True`` adds
prompt/completion attributes containing :data:`CANARY`, for privacy tests only.

The protobuf is written straight to the wire format with memoised attribute encodings: the
generated ``trace_pb2`` classes cost about four times more per span (measured ~28 us against ~7 us
for a 17-attribute LLM span), too slow for a benchmark producer.  Tests parse the output back
with ``trace_pb2`` to keep it honest.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, Literal, NamedTuple, TypeVar, get_args

import polars as pl

from spanpulse.schemas.traffic import FEATURE_BY_NAME

Encoding = Literal["otlp_proto", "otlp_json", "span_json"]
Convention = Literal[
    "otel",
    "otel_deprecated",
    "traceloop_legacy",
    "traceloop",
    "openinference",
    "anthropic_native",
    "mixed",
]
ENCODINGS: Final = get_args(Encoding)
CONVENTIONS: Final = get_args(Convention)
#: The conventions ``mixed`` draws from (per call, from the span id).
MIXED_CONVENTIONS: Final[tuple[str, ...]] = tuple(c for c in CONVENTIONS if c != "mixed")

#: Marker contained in every content attribute; privacy tests grep sinks for it.
CANARY: Final = "SPANPULSE-CANARY-7f3a9c"

#: Fields of a ``span_json`` message, in order (null ones are left out of a message).
SPAN_JSON_FIELDS: Final = (
    "end_time", "start_time", "trace_id", "span_id", "tenant", "service", "environment",
    "feature", "provider", "model", "response_model", "operation", "prompt_version",
    "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "finish_reason",
    "error", "ttft_ms", "refusal", "parse_ok",
)  # fmt: skip

SPAN_KIND_INTERNAL: Final = 1
SPAN_KIND_SERVER: Final = 2
SPAN_KIND_CLIENT: Final = 3
STATUS_UNSET: Final = 0
STATUS_ERROR: Final = 2

AttrValue = str | bool | int | float | tuple[str, ...]
Attrs = list[tuple[str, AttrValue]]


@dataclass(frozen=True)
class EncodedBatch:
    """Messages plus what went into them, for tests and the ``generate`` summary.

    ``dropped_llm_spans`` counts calls the chosen convention never produces a span for
    (legacy Traceloop loses failed Anthropic calls).
    """

    messages: list[bytes]
    llm_spans: int
    non_llm_spans: int
    dropped_llm_spans: int


class Scope(NamedTuple):
    """An OTel instrumentation scope (the library that produced a span)."""

    name: str
    version: str
    schema_url: str = ""


@dataclass
class Span:
    """One span in encoding-neutral form (ids as hex, times in ns)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attrs: Attrs
    scope: Scope
    events: list[tuple[int, str, Attrs]] = field(default_factory=list)
    status_code: int = STATUS_UNSET
    status_message: str = ""


class Call(NamedTuple):
    """One row of a traffic frame, in :data:`~spanpulse.schemas.traffic.CALL_SCHEMA` order."""

    end_time_ms: int
    start_time_ms: int
    trace_id: str
    span_id: str
    tenant: str
    service: str
    environment: str
    feature: str
    provider: str
    model: str
    response_model: str
    operation: str
    prompt_version: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    reasoning_tokens: int
    finish_reason: str | None
    is_error: bool
    ttft_ms: int | None
    parse_ok: bool | None
    refusal: bool


# ================================================================ convention vocabularies
#: ``gen_ai.provider.name`` as the official OTel instrumentations write it (google-genai
#: passes the lower-cased deprecated enum name ``gemini``, not the spec's ``gcp.gemini``).
OTEL_PROVIDER: Final = {"openai": "openai", "anthropic": "anthropic", "gcp.gemini": "gemini"}
#: Deprecated ``gen_ai.system`` values (pre-1.37 spelling).
OTEL_SYSTEM: Final = {"openai": "openai", "anthropic": "anthropic", "gcp.gemini": "gemini"}
TRACELOOP_LEGACY_SYSTEM: Final = {
    "openai": "openai",
    "anthropic": "Anthropic",
    "gcp.gemini": "gcp.gen_ai",
}
TRACELOOP_PROVIDER: Final = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gcp.gemini": "gcp.gen_ai",
}
OPENINFERENCE_PROVIDER: Final = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
}
OPENINFERENCE_SYSTEM: Final = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gcp.gemini": "vertexai",
}
#: ``gen_ai.operation.name`` per provider (Google's instrumentation says ``generate_content``).
OTEL_OPERATION: Final = {"gcp.gemini": "generate_content"}

_OTEL_ANTHROPIC_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
_TRACELOOP_FINISH: Final = {
    "openai": {"tool_calls": "tool_call", "function_call": "tool_call"},
    "anthropic": {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_call"},
    "gcp.gemini": {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter"},
}  # fmt: skip
#: Raw finish reasons that mean the model asked for a tool (an ``execute_tool`` span follows).
TOOL_FINISH: Final = frozenset({"tool_calls", "tool_use"})
_TOOLS: Final = ("search_docs", "get_account", "run_sql", "fetch_url")

#: Per provider: (exception class name, API error type, HTTP status), picked by span id.
ERRORS: Final = {
    "openai": (
        ("RateLimitError", "rate_limit_exceeded", 429),
        ("InternalServerError", "server_error", 500),
        ("APITimeoutError", "timeout", 408),
    ),
    "anthropic": (
        ("RateLimitError", "rate_limit_error", 429),
        ("OverloadedError", "overloaded_error", 529),
        ("InternalServerError", "api_error", 500),
    ),
    "gcp.gemini": (
        ("ClientError", "RESOURCE_EXHAUSTED", 429),
        ("ServerError", "INTERNAL", 500),
        ("ServerError", "UNAVAILABLE", 503),
    ),
}
_SERVER: Final = {
    "openai": "api.openai.com",
    "anthropic": "api.anthropic.com",
    "gcp.gemini": "generativelanguage.googleapis.com",
}

_SCHEMA_1_37: Final = "https://opentelemetry.io/schemas/1.37.0"
_SCHEMA_1_26: Final = "https://opentelemetry.io/schemas/1.26.0"
SCOPES: Final[dict[str, dict[str, Scope]]] = {
    "otel": {
        "openai": Scope("opentelemetry.instrumentation.openai_v2", "2.4b0", _SCHEMA_1_37),
        "anthropic": Scope("opentelemetry.instrumentation.anthropic", "0.1b0", _SCHEMA_1_37),
        "gcp.gemini": Scope("opentelemetry.instrumentation.google_genai", "1.3b0", _SCHEMA_1_37),
    },
    "otel_deprecated": {
        "openai": Scope("opentelemetry.instrumentation.openai_v2", "2.0b0", _SCHEMA_1_26),
        "anthropic": Scope("opentelemetry.instrumentation.anthropic", "0.0b0", _SCHEMA_1_26),
        "gcp.gemini": Scope("opentelemetry.instrumentation.google_genai", "0.1b0", _SCHEMA_1_26),
    },
    "traceloop_legacy": {
        "openai": Scope("opentelemetry.instrumentation.openai.v1", "0.52.6"),
        "anthropic": Scope("opentelemetry.instrumentation.anthropic", "0.52.6"),
        "gcp.gemini": Scope("opentelemetry.instrumentation.google_generativeai", "0.52.6"),
    },
    "traceloop": {
        "openai": Scope("opentelemetry.instrumentation.openai.v1", "0.62.4"),
        "anthropic": Scope("opentelemetry.instrumentation.anthropic", "0.62.4"),
        "gcp.gemini": Scope("opentelemetry.instrumentation.google_generativeai", "0.62.4"),
    },
    "openinference": {
        "openai": Scope("openinference.instrumentation.openai", "0.1.66"),
        "anthropic": Scope("openinference.instrumentation.anthropic", "3.1.0"),
        "gcp.gemini": Scope("openinference.instrumentation.google_genai", "0.1.9"),
    },
    "anthropic_native": {"anthropic": Scope("com.anthropic.sdk.python", "2.12.0")},
}
HTTP_SCOPE: Final = Scope("opentelemetry.instrumentation.fastapi", "0.66b2")
#: The app's agent loop, which runs the tools the model asks for.
TOOL_SCOPE: Final = Scope("app.agent", "1.0.0")
_TRACELOOP_SPAN_PREFIX: Final = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gcp.gemini": "gemini",
}
_OPENINFERENCE_SPAN_NAME: Final = {
    "openai": "ChatCompletion",
    "anthropic": "Messages",
    "gcp.gemini": "GenerateContent",
}


# ================================================================ per-convention LLM spans
def otel_finish_reasons(provider: str, raw: str) -> tuple[str, ...]:
    """Finish reasons as the official OTel instrumentations record them.

    OpenAI values stay raw (``tool_calls`` kept); the contrib Anthropic instrumentation maps
    ``end_turn``→``stop``, ``max_tokens``→``length``, ``tool_use``→``tool_calls`` and passes
    ``refusal`` through; google-genai lower-cases the raw enum (``STOP``→``stop``).
    """
    if provider == "anthropic":
        return (_OTEL_ANTHROPIC_FINISH.get(raw, raw),)
    if provider == "gcp.gemini":
        return (raw.lower(),)
    return (raw,)


def traceloop_finish_reasons(provider: str, raw: str) -> tuple[str, ...]:
    """Finish reasons as Traceloop >= 0.55 maps them (``tool_calls``→``tool_call`` ...)."""
    return (_TRACELOOP_FINISH.get(provider, {}).get(raw, raw),)


def _error_info(c: Call) -> tuple[str, str, int]:
    options = ERRORS.get(c.provider, ERRORS["openai"])
    return options[int(c.span_id[-1], 16) % len(options)]


def _app_attrs(c: Call) -> Attrs:
    attrs: Attrs = [
        ("tenant.id", c.tenant),
        ("app.feature", c.feature),
        ("app.prompt_version", c.prompt_version),
    ]
    if c.parse_ok is not None:
        attrs.append(("app.output.parse_ok", c.parse_ok))
    if c.refusal:
        attrs.append(("app.refusal", True))
    return attrs


def _prompt_text(c: Call) -> str:
    return f"{CANARY} prompt from {c.tenant} for {c.feature} ({c.span_id})"


def _completion_text(c: Call) -> str:
    return f"{CANARY} completion for {c.tenant} ({c.span_id})"


def _otel_messages(c: Call, finish: str) -> Attrs:
    user = [{"role": "user", "parts": [{"type": "text", "content": _prompt_text(c)}]}]
    attrs: Attrs = [("gen_ai.input.messages", json.dumps(user))]
    if not c.is_error:
        part = {"type": "text", "content": _completion_text(c)}
        out = [{"role": "assistant", "parts": [part], "finish_reason": finish}]
        attrs.append(("gen_ai.output.messages", json.dumps(out)))
    return attrs


def _base_span(c: Call, name: str, kind: int, scope: Scope, attrs: Attrs) -> Span:
    return Span(
        c.trace_id,
        c.span_id,
        c.trace_id[:16],
        name,
        kind,
        c.start_time_ms * 1_000_000,
        c.end_time_ms * 1_000_000,
        attrs,
        scope,
    )


def _fail(span: Span, c: Call, error_type: str | None, exception_event: bool) -> Span:
    cls, _, status = _error_info(c)
    span.status_code = STATUS_ERROR
    span.status_message = f"Error code: {status}"
    if error_type is not None:
        span.attrs.append(("error.type", error_type))
    if exception_event:
        event_attrs: Attrs = [("exception.type", cls), ("exception.message", span.status_message)]
        span.events.append((span.end_ns, "exception", event_attrs))
    return span


def _otel_span(c: Call, content: bool) -> Span:
    """OTel GenAI 1.37-1.41 (official instrumentations, latest-experimental opt-in)."""
    op = OTEL_OPERATION.get(c.provider, c.operation)
    attrs: Attrs = [
        ("gen_ai.operation.name", op),
        ("gen_ai.provider.name", OTEL_PROVIDER.get(c.provider, c.provider)),
        ("gen_ai.request.model", c.model),
    ]
    finish = ""
    if not c.is_error:
        finish = otel_finish_reasons(c.provider, c.finish_reason or "")[0]
        attrs += [
            ("gen_ai.response.model", c.response_model),
            ("gen_ai.usage.input_tokens", c.input_tokens),
            ("gen_ai.usage.output_tokens", c.output_tokens),
            ("gen_ai.response.finish_reasons", (finish,)),
        ]
        if c.cached_input_tokens:
            attrs.append(("gen_ai.usage.cache_read.input_tokens", c.cached_input_tokens))
        if c.reasoning_tokens:
            attrs.append(("gen_ai.usage.reasoning.output_tokens", c.reasoning_tokens))
    if c.ttft_ms is not None:
        attrs += [
            ("gen_ai.request.stream", True),
            ("gen_ai.response.time_to_first_chunk", c.ttft_ms / 1000.0),
        ]
    attrs += _app_attrs(c)
    if content:
        attrs += _otel_messages(c, finish)
    span = _base_span(c, f"{op} {c.model}", SPAN_KIND_CLIENT, _scope("otel", c), attrs)
    return _fail(span, c, _error_info(c)[0], False) if c.is_error else span


def _otel_deprecated_span(c: Call, content: bool) -> Span:
    """OTel GenAI before 1.37: ``gen_ai.system`` and ``prompt_tokens``/``completion_tokens``."""
    op = OTEL_OPERATION.get(c.provider, c.operation)
    attrs: Attrs = [
        ("gen_ai.operation.name", op),
        ("gen_ai.system", OTEL_SYSTEM.get(c.provider, c.provider)),
        ("gen_ai.request.model", c.model),
    ]
    if not c.is_error:
        attrs += [
            ("gen_ai.response.model", c.response_model),
            ("gen_ai.usage.prompt_tokens", c.input_tokens),
            ("gen_ai.usage.completion_tokens", c.output_tokens),
            (
                "gen_ai.response.finish_reasons",
                otel_finish_reasons(c.provider, c.finish_reason or ""),
            ),
        ]
    attrs += _app_attrs(c)
    span = _base_span(c, f"{op} {c.model}", SPAN_KIND_CLIENT, _scope("otel_deprecated", c), attrs)
    if content:  # the pre-1.28 content events
        span.events.append(
            (span.start_ns, "gen_ai.content.prompt", [("gen_ai.prompt", _prompt_text(c))])
        )
        if not c.is_error:
            span.events.append(
                (
                    span.end_ns,
                    "gen_ai.content.completion",
                    [("gen_ai.completion", _completion_text(c))],
                )
            )
    return _fail(span, c, _error_info(c)[0], False) if c.is_error else span


def _traceloop_legacy_span(c: Call, content: bool) -> Span | None:
    """Traceloop/OpenLLMetry 0.48-0.54: ``llm.*`` keys, finish only in ``gen_ai.completion.0``."""
    if c.is_error and c.provider == "anthropic":
        return None  # observed: failed Anthropic calls produce no span at all (S12)
    attrs: Attrs = [
        ("gen_ai.system", TRACELOOP_LEGACY_SYSTEM.get(c.provider, c.provider)),
        ("llm.request.type", "completion" if c.provider == "anthropic" else "chat"),
        ("gen_ai.request.model", c.model),
        ("llm.is_streaming", c.ttft_ms is not None),
        ("llm.headers", "None"),
    ]
    if not c.is_error:
        attrs += [
            ("gen_ai.response.model", c.response_model),
            ("gen_ai.usage.input_tokens", c.input_tokens),
            ("gen_ai.usage.output_tokens", c.output_tokens),
            ("llm.usage.total_tokens", c.input_tokens + c.output_tokens),
            ("gen_ai.completion.0.finish_reason", c.finish_reason or ""),
            ("gen_ai.completion.0.role", "assistant"),
        ]
        if c.cached_input_tokens:
            attrs.append(("gen_ai.usage.cache_read_input_tokens", c.cached_input_tokens))
        if c.reasoning_tokens:
            attrs.append(("llm.usage.reasoning_tokens", c.reasoning_tokens))
    attrs += _app_attrs(c)
    if content:
        attrs += _traceloop_legacy_content(c)
    prefix = _TRACELOOP_SPAN_PREFIX.get(c.provider, c.provider)
    name = f"{prefix}.generate_content" if c.provider == "gcp.gemini" else f"{prefix}.chat"
    span = _base_span(c, name, SPAN_KIND_CLIENT, _scope("traceloop_legacy", c), attrs)
    return _fail(span, c, _error_info(c)[0], True) if c.is_error else span


def _traceloop_legacy_content(c: Call) -> Attrs:
    attrs: Attrs = [("gen_ai.prompt.0.role", "user"), ("gen_ai.prompt.0.content", _prompt_text(c))]
    if c.is_error:
        return attrs
    filtered = c.finish_reason in ("content_filter", "SAFETY")
    attrs.append(("gen_ai.completion.0.content", "FILTERED" if filtered else _completion_text(c)))
    if c.refusal and c.provider == "openai":
        attrs.append(("gen_ai.completion.0.refusal", _completion_text(c)))
    return attrs


def _traceloop_span(c: Call, content: bool) -> Span:
    """Traceloop/OpenLLMetry >= 0.55: OTel-aligned names plus its non-standard extras."""
    attrs: Attrs = [
        ("gen_ai.provider.name", TRACELOOP_PROVIDER.get(c.provider, c.provider)),
        ("gen_ai.operation.name", c.operation),
        ("gen_ai.request.model", c.model),
        ("gen_ai.is_streaming", c.ttft_ms is not None),
    ]
    finish = ""
    if not c.is_error:
        finish = traceloop_finish_reasons(c.provider, c.finish_reason or "")[0]
        attrs += [
            ("gen_ai.response.model", c.response_model),
            ("gen_ai.usage.input_tokens", c.input_tokens),
            ("gen_ai.usage.output_tokens", c.output_tokens),
            ("gen_ai.usage.total_tokens", c.input_tokens + c.output_tokens),
            ("gen_ai.response.finish_reasons", (finish,)),
        ]
        if c.cached_input_tokens:
            attrs.append(("gen_ai.usage.cache_read.input_tokens", c.cached_input_tokens))
        if c.reasoning_tokens:
            attrs.append(("gen_ai.usage.reasoning_tokens", c.reasoning_tokens))
    attrs += _app_attrs(c)
    if content:
        attrs += _otel_messages(c, finish)
    prefix = _TRACELOOP_SPAN_PREFIX.get(c.provider, c.provider)
    name = f"{prefix}.generate_content" if c.provider == "gcp.gemini" else f"{prefix}.chat"
    span = _base_span(c, name, SPAN_KIND_CLIENT, _scope("traceloop", c), attrs)
    return _fail(span, c, _error_info(c)[0], True) if c.is_error else span


def _openinference_span(c: Call, content: bool) -> Span:
    """OpenInference: INTERNAL span, ``llm.model_name`` = response model, no ``error.type``."""
    attrs: Attrs = [
        ("openinference.span.kind", "LLM"),
        ("llm.provider", OPENINFERENCE_PROVIDER.get(c.provider, c.provider)),
        ("llm.system", OPENINFERENCE_SYSTEM.get(c.provider, c.provider)),
        (
            "llm.invocation_parameters",
            _invocation_parameters(c.model, c.feature, c.ttft_ms is not None),
        ),
    ]
    if c.provider == "anthropic":
        attrs.append(("llm.request.model_name", c.model))
    if not c.is_error:
        attrs += _openinference_usage(c)
    attrs += _app_attrs(c)
    if content:
        attrs += _openinference_content(c)
    name = _OPENINFERENCE_SPAN_NAME.get(c.provider, "ChatCompletion")
    span = _base_span(c, name, SPAN_KIND_INTERNAL, _scope("openinference", c), attrs)
    if c.ttft_ms is not None:
        first = (c.start_time_ms + c.ttft_ms) * 1_000_000
        span.events.append((first, "First Token Stream Event", []))
    return _fail(span, c, None, True) if c.is_error else span


@lru_cache(maxsize=1024)
def _invocation_parameters(model: str, feature: str, stream: bool) -> str:
    """Request parameters JSON: the only place OpenInference keeps the requested model."""
    params: dict[str, object] = {"model": model, "stream": stream}
    spec = FEATURE_BY_NAME.get(feature)
    if spec is not None:
        params["max_tokens"] = spec.max_tokens
    return json.dumps(params)


def _openinference_usage(c: Call) -> Attrs:
    attrs: Attrs = [("llm.model_name", c.response_model)]
    if c.provider == "anthropic":
        attrs.append(("llm.response.model_name", c.response_model))
    attrs += [
        ("llm.token_count.prompt", c.input_tokens),
        ("llm.token_count.completion", c.output_tokens),
        ("llm.token_count.total", c.input_tokens + c.output_tokens),
        ("llm.finish_reason", c.finish_reason or ""),
    ]
    if c.cached_input_tokens:
        attrs.append(("llm.token_count.prompt_details.cache_read", c.cached_input_tokens))
    if c.reasoning_tokens:
        attrs.append(("llm.token_count.completion_details.reasoning", c.reasoning_tokens))
    return attrs


def _openinference_content(c: Call) -> Attrs:
    request = {"model": c.model, "messages": [{"role": "user", "content": _prompt_text(c)}]}
    attrs: Attrs = [
        ("input.value", json.dumps(request)),
        ("input.mime_type", "application/json"),
        ("llm.input_messages.0.message.role", "user"),
        ("llm.input_messages.0.message.content", _prompt_text(c)),
    ]
    if not c.is_error:
        attrs += [
            ("output.value", json.dumps({"content": _completion_text(c)})),
            ("output.mime_type", "application/json"),
            ("llm.output_messages.0.message.role", "assistant"),
            ("llm.output_messages.0.message.content", _completion_text(c)),
        ]
    return attrs


def _anthropic_native_span(c: Call, content: bool) -> Span:
    """Spell a call as the anthropic SDK's own span (other providers fall back to OTel)."""
    if c.provider != "anthropic":
        return _otel_span(c, content)
    _, envelope, status = _error_info(c)
    attrs: Attrs = [
        ("gen_ai.provider.name", "anthropic"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", c.model),
        ("http.request.method", "POST"),
        ("server.address", _SERVER["anthropic"]),
        ("server.port", 443),
        ("http.response.status_code", status if c.is_error else 200),
    ]
    if c.ttft_ms is not None:
        attrs.append(("gen_ai.request.stream", True))
    if not c.is_error:
        attrs += [
            ("gen_ai.response.model", c.response_model),
            ("gen_ai.usage.input_tokens", c.input_tokens),
            ("gen_ai.usage.output_tokens", c.output_tokens),
            ("gen_ai.usage.cache_read.input_tokens", c.cached_input_tokens),
            ("gen_ai.usage.cache_write.input_tokens", anthropic_cache_write(c)),
            ("anthropic.message.stop_reason", c.finish_reason or ""),
        ]
        if c.reasoning_tokens:
            attrs.append(("gen_ai.usage.reasoning.output_tokens", c.reasoning_tokens))
    attrs += _app_attrs(c)
    if content:
        attrs += _otel_messages(c, c.finish_reason or "")
    scope = SCOPES["anthropic_native"]["anthropic"]
    span = _base_span(c, "anthropic.messages.create", SPAN_KIND_CLIENT, scope, attrs)
    return _fail(span, c, envelope, False) if c.is_error else span


def anthropic_cache_write(c: Call) -> int:
    """Cache-write tokens the native span reports: a deterministic share of uncached prompts.

    The traffic frame has no cache-write column; a quarter of long uncached prompts write half
    their tokens to the cache, always within ``input_tokens`` (which includes cache writes).
    """
    if c.cached_input_tokens or c.input_tokens < 2048 or int(c.span_id[-2], 16) >= 4:
        return 0
    return c.input_tokens // 2


_BUILDERS: Final[dict[str, Callable[[Call, bool], Span | None]]] = {
    "otel": _otel_span,
    "otel_deprecated": _otel_deprecated_span,
    "traceloop_legacy": _traceloop_legacy_span,
    "traceloop": _traceloop_span,
    "openinference": _openinference_span,
    "anthropic_native": _anthropic_native_span,
}


def _scope(convention: str, c: Call) -> Scope:
    scopes = SCOPES[convention]
    return scopes.get(c.provider) or next(iter(scopes.values()))


def convention_of(convention: Convention, span_id: str) -> str:
    """Return the concrete convention a call is spelled in (``mixed`` picks by span id)."""
    if convention != "mixed":
        return convention
    return MIXED_CONVENTIONS[int(span_id[:2], 16) % len(MIXED_CONVENTIONS)]


# ================================================================ non-LLM spans
def _http_parent(c: Call) -> Span:
    """Build the app's HTTP server span that every LLM call of a request hangs under."""
    status = 502 if c.is_error else 200
    route = f"/v1/{c.feature}"
    attrs: Attrs = [
        ("http.request.method", "POST"),
        ("http.route", route),
        ("url.scheme", "https"),
        ("http.response.status_code", status),
        ("tenant.id", c.tenant),
    ]
    end_ms = c.end_time_ms + 3 + (_tool_ms(c) + 2 if _has_tool(c) else 0)
    start_ns, end_ns = (c.start_time_ms - 5) * 1_000_000, end_ms * 1_000_000
    name = f"POST {route}"
    span = Span(
        c.trace_id, c.trace_id[:16], "", name, SPAN_KIND_SERVER, start_ns, end_ns, attrs, HTTP_SCOPE
    )
    if c.is_error:
        span.status_code = STATUS_ERROR
    return span


def _has_tool(c: Call) -> bool:
    return not c.is_error and c.finish_reason in TOOL_FINISH


def _tool_ms(c: Call) -> int:
    return 5 + int(c.span_id[:2], 16) // 4


def _tool_span(c: Call, convention: str) -> Span:
    """Build the ``execute_tool`` span after a tool call: GenAI-flavoured, not an LLM call."""
    tool = _TOOLS[int(c.span_id[2], 16) % len(_TOOLS)]
    if convention == "openinference":
        attrs: Attrs = [("openinference.span.kind", "TOOL"), ("tool.name", tool)]
    elif convention.startswith("traceloop"):
        attrs = [("traceloop.span.kind", "tool"), ("traceloop.entity.name", tool)]
    else:
        attrs = [
            ("gen_ai.operation.name", "execute_tool"),
            ("gen_ai.tool.name", tool),
            ("gen_ai.tool.call.id", f"call_{c.span_id}"),
            ("gen_ai.tool.type", "function"),
        ]
    start = (c.end_time_ms + 1) * 1_000_000
    end = start + _tool_ms(c) * 1_000_000
    return Span(
        c.trace_id,
        c.trace_id[16:],
        c.trace_id[:16],
        f"execute_tool {tool}",
        SPAN_KIND_INTERNAL,
        start,
        end,
        attrs,
        TOOL_SCOPE,
    )


# ================================================================ batching
_T = TypeVar("_T")
#: Rendered spans of one message, by resource (service, environment) and scope.
_Groups = dict[tuple[str, str], dict[Scope, list[_T]]]


@dataclass
class _Tally:
    llm: int = 0
    non_llm: int = 0
    dropped: int = 0


def iter_calls(df: pl.DataFrame) -> Iterator[Call]:
    """Iterate a traffic frame as :class:`Call` tuples (column order of ``CALL_SCHEMA``)."""
    columns = [df.get_column(name).to_list() for name in Call._fields]
    return map(Call._make, zip(*columns, strict=True))


def _call_spans(c: Call, convention: Convention, content: bool, tally: _Tally) -> list[Span]:
    concrete = convention_of(convention, c.span_id)
    spans = [_http_parent(c)]
    llm = _BUILDERS[concrete](c, content)
    if llm is None:
        tally.dropped += 1
    else:
        spans.append(llm)
        tally.llm += 1
    if _has_tool(c):
        spans.append(_tool_span(c, concrete))
    tally.non_llm += len(spans) - (llm is not None)
    return spans


def _grouped_batches(
    df: pl.DataFrame,
    convention: Convention,
    per_message: int,
    content: bool,
    tally: _Tally,
    render: Callable[[Span], _T],
) -> Iterator[_Groups[_T]]:
    """Render each batch of ``per_message`` calls, grouped by resource and scope.

    Spans are rendered as soon as they are built so that few Python objects stay alive
    (the cyclic GC's cost grows with them).
    """
    groups: _Groups[_T] = {}
    count = 0
    for c in iter_calls(df):
        by_scope = groups.setdefault((c.service, c.environment), {})
        for span in _call_spans(c, convention, content, tally):
            by_scope.setdefault(span.scope, []).append(render(span))
        count += 1
        if count == per_message:
            yield groups
            groups, count = {}, 0
    if groups:
        yield groups


def _resource_attrs(service: str, environment: str) -> Attrs:
    return [
        ("service.name", service),
        ("deployment.environment.name", environment),
        ("telemetry.sdk.name", "opentelemetry"),
        ("telemetry.sdk.language", "python"),
        ("telemetry.sdk.version", "1.45.2"),
    ]


# ================================================================ OTLP protobuf (wire format)
# Every field tag used here fits one byte, so tags are written as one-byte constants.
_PACK_Q: Final = struct.Struct("<Q").pack
_PACK_D: Final = struct.Struct("<d").pack
_SMALL_VARINTS: Final = tuple(bytes([i]) for i in range(0x80))


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """Length-delimited field: one-byte ``tag`` (``number << 3 | 2``), length, payload."""
    n = len(payload)
    return tag + (_SMALL_VARINTS[n] if n < 0x80 else _varint(n)) + payload


@lru_cache(maxsize=1024)
def _key_field(key: str) -> bytes:
    return _ld(b"\x0a", key.encode())


def _any_value(value: AttrValue) -> bytes:
    if isinstance(value, str):
        return _ld(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _PACK_D(value)
    return _ld(b"\x2a", b"".join(_ld(b"\x0a", _any_value(v)) for v in value))


def _kv_body(key: str, value: AttrValue) -> bytes:
    return _key_field(key) + _ld(b"\x12", _any_value(value))


@lru_cache(maxsize=1 << 18, typed=True)
def _span_attr(key: str, value: AttrValue) -> bytes:
    """Encode a span attribute (``Span.attributes`` is field 9), memoised.

    Attribute values repeat a lot (models, tenants, token counts), and a cache hit costs a
    fraction of encoding; ``typed`` keeps ``True`` and ``1`` apart.
    """
    return _ld(b"\x4a", _kv_body(key, value))


def _attrs_field(attrs: Attrs, tag: bytes) -> bytes:
    """Attributes as repeated ``KeyValue`` under ``tag`` (event attributes 3, resource 1)."""
    return b"".join(_ld(tag, _kv_body(k, v)) for k, v in attrs)


@lru_cache(maxsize=4096)
def _span_name(name: str) -> bytes:
    return _ld(b"\x2a", name.encode())


_KIND: Final = tuple(b"\x30" + bytes([k]) for k in range(6))


def _span_proto(s: Span) -> bytes:
    ids = bytes.fromhex(s.trace_id + s.span_id + s.parent_span_id)
    parts = [b"\x0a\x10", ids[:16], b"\x12\x08", ids[16:24]]
    if s.parent_span_id:
        parts += (b"\x22\x08", ids[24:])
    parts += (
        _span_name(s.name),
        _KIND[s.kind],
        b"\x39",
        _PACK_Q(s.start_ns),
        b"\x41",
        _PACK_Q(s.end_ns),
    )
    parts += [_span_attr(k, v) for k, v in s.attrs]
    for time_ns, name, attrs in s.events:
        event = b"\x09" + _PACK_Q(time_ns) + _ld(b"\x12", name.encode())
        parts.append(_ld(b"\x5a", event + _attrs_field(attrs, b"\x1a")))
    if s.status_code:
        status = _ld(b"\x12", s.status_message.encode()) if s.status_message else b""
        parts.append(_ld(b"\x7a", status + b"\x18" + _varint(s.status_code)))
    return _ld(b"\x12", b"".join(parts))


@lru_cache(maxsize=256)
def _scope_proto(scope: Scope) -> bytes:
    body = _ld(b"\x0a", scope.name.encode()) + _ld(b"\x12", scope.version.encode())
    return _ld(b"\x0a", body)


@lru_cache(maxsize=1024)
def _resource_proto(service: str, environment: str) -> bytes:
    return _ld(b"\x0a", _attrs_field(_resource_attrs(service, environment), b"\x0a"))


def _traces_proto(groups: _Groups[bytes]) -> bytes:
    out = []
    for (service, environment), by_scope in groups.items():
        scope_spans = []
        for scope, spans in by_scope.items():
            body = _scope_proto(scope) + b"".join(spans)
            if scope.schema_url:
                body += _ld(b"\x1a", scope.schema_url.encode())
            scope_spans.append(_ld(b"\x12", body))
        out.append(_ld(b"\x0a", _resource_proto(service, environment) + b"".join(scope_spans)))
    return b"".join(out)


# ================================================================ OTLP/JSON
def _any_json(value: AttrValue) -> dict[str, object]:
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"arrayValue": {"values": [_any_json(v) for v in value]}}


def _attrs_json(attrs: Attrs) -> list[dict[str, object]]:
    return [{"key": k, "value": _any_json(v)} for k, v in attrs]


def _span_json(s: Span) -> dict[str, object]:
    out: dict[str, object] = {"traceId": s.trace_id, "spanId": s.span_id}
    if s.parent_span_id:
        out["parentSpanId"] = s.parent_span_id
    out |= {
        "name": s.name,
        "kind": s.kind,
        "startTimeUnixNano": str(s.start_ns),
        "endTimeUnixNano": str(s.end_ns),
        "attributes": _attrs_json(s.attrs),
    }
    if s.events:
        out["events"] = [
            {"timeUnixNano": str(t), "name": name, "attributes": _attrs_json(attrs)}
            for t, name, attrs in s.events
        ]
    if s.status_code:
        out["status"] = {"code": s.status_code} | (
            {"message": s.status_message} if s.status_message else {}
        )
    return out


def _traces_json(groups: _Groups[dict[str, object]]) -> bytes:
    resource_spans = []
    for (service, environment), by_scope in groups.items():
        scope_spans = []
        for scope, spans in by_scope.items():
            entry: dict[str, object] = {
                "scope": {"name": scope.name, "version": scope.version},
                "spans": spans,
            }
            if scope.schema_url:
                entry["schemaUrl"] = scope.schema_url
            scope_spans.append(entry)
        resource = {"attributes": _attrs_json(_resource_attrs(service, environment))}
        resource_spans.append({"resource": resource, "scopeSpans": scope_spans})
    return json.dumps({"resourceSpans": resource_spans}, separators=(",", ":")).encode()


# ================================================================ span_json
def span_json_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Return the calls as ``span_json`` columns (RFC 3339 UTC times with milliseconds)."""
    fmt = "%Y-%m-%dT%H:%M:%S%.3fZ"
    return df.select(
        pl.from_epoch("end_time_ms", time_unit="ms").dt.strftime(fmt).alias("end_time"),
        pl.from_epoch("start_time_ms", time_unit="ms").dt.strftime(fmt).alias("start_time"),
        *SPAN_JSON_FIELDS[2:18],
        pl.col("is_error").alias("error"),
        "ttft_ms",
        "refusal",
        "parse_ok",
    )


#: ``,"field":null`` pairs; a ``,"`` can only occur between fields (quotes in values are escaped).
_NULL_FIELD: Final = re.compile(r',"[a-z_]+":null')


def _span_json_messages(df: pl.DataFrame) -> list[bytes]:
    """One object per call; absent values are left out, as producers do (``end_time`` never is)."""
    if df.height == 0:
        return []
    text = _NULL_FIELD.sub("", span_json_frame(df).write_ndjson())
    return [line.encode() for line in text.splitlines()]


# ================================================================ public API
def encode_calls_detailed(
    df: pl.DataFrame,
    encoding: Encoding,
    convention: Convention = "otel",
    spans_per_message: int = 200,
    include_content: bool = False,
) -> EncodedBatch:
    """Encode calls as Kafka message values and report the span counts.

    Args:
        df: calls with the traffic columns (:data:`~spanpulse.schemas.traffic.CALL_SCHEMA`).
        encoding: ``otlp_proto``, ``otlp_json`` or ``span_json`` (one call per message).
        convention: attribute convention of the LLM spans (OTLP encodings only).
        spans_per_message: LLM calls per OTLP message; a call's HTTP parent and tool spans
            always travel in the same message as the call.
        include_content: add prompt/completion attributes containing :data:`CANARY`.
    """
    _check(encoding, convention, spans_per_message)
    if encoding == "span_json":
        messages = _span_json_messages(df)
        return EncodedBatch(messages, df.height, 0, 0)
    tally = _Tally()
    args = (df, convention, spans_per_message, include_content, tally)
    if encoding == "otlp_proto":
        messages = [_traces_proto(g) for g in _grouped_batches(*args, render=_span_proto)]
    else:
        messages = [_traces_json(g) for g in _grouped_batches(*args, render=_span_json)]
    return EncodedBatch(messages, tally.llm, tally.non_llm, tally.dropped)


def encode_calls(
    df: pl.DataFrame,
    encoding: Encoding,
    convention: Convention = "otel",
    spans_per_message: int = 200,
    include_content: bool = False,
) -> list[bytes]:
    """Encode calls as Kafka message values (see :func:`encode_calls_detailed`)."""
    return encode_calls_detailed(
        df, encoding, convention, spans_per_message, include_content
    ).messages


def llm_spans(df: pl.DataFrame, convention: Convention = "otel") -> Iterator[Span]:
    """Yield the encoding-neutral LLM span of every call (for tests and docs)."""
    for c in iter_calls(df):
        span = _BUILDERS[convention_of(convention, c.span_id)](c, False)
        if span is not None:
            yield span


def _check(encoding: str, convention: str, spans_per_message: int) -> None:
    if encoding not in ENCODINGS:
        msg = f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}"
        raise ValueError(msg)
    if convention not in CONVENTIONS:
        msg = f"convention must be one of {', '.join(CONVENTIONS)}; got {convention!r}"
        raise ValueError(msg)
    if spans_per_message < 1:
        msg = f"spans_per_message must be >= 1, got {spans_per_message}"
        raise ValueError(msg)

"""Vectorized normalization: finish vocabularies, flags, token coalescing, validation, dedupe."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from spanpulse.schemas.conventions import FINISH_CLASS_OF, canonical_provider, operation_of
from spanpulse.schemas.normalize import (
    FINISH_SEPARATOR,
    RAW_SCHEMA,
    deduplicate,
    normalize,
    reject_reasons,
)
from spanpulse.schemas.record import FINISH_CLASSES

NOW_MS = 1_760_000_000_000
END_NS = (NOW_MS - 1000) * 1_000_000


def raw(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(RAW_SCHEMA)
    row.update(msg_index=0, span_index=0, start_ns=END_NS - 2_000_000_000, end_ns=END_NS)
    row.update(status_error=False, operation="chat", request_model="m", has_error_type=False)
    row.update(overrides)
    return row


def norm(*rows: dict[str, Any]) -> pl.DataFrame:
    return normalize(pl.DataFrame(list(rows), schema=RAW_SCHEMA))


def one(**overrides: Any) -> dict[str, Any]:
    return norm(raw(**overrides)).row(0, named=True)


FINISH_TABLE = [
    # (raw reasons, expected class) — every vocabulary of reference §5
    (["stop"], "stop"),
    (["end_turn"], "stop"),
    (["stop_sequence"], "stop"),
    (["STOP"], "stop"),
    (["length"], "length"),
    (["max_tokens"], "length"),
    (["MAX_TOKENS"], "length"),
    (["model_context_window_exceeded"], "length"),
    (["content_filter"], "content_filter"),
    (["SAFETY"], "content_filter"),
    (["content_filtered"], "content_filter"),
    (["guardrail_intervened"], "content_filter"),
    (["refusal"], "content_filter"),
    (["PROHIBITED_CONTENT"], "content_filter"),
    (["tool_calls"], "tool_calls"),
    (["tool_call"], "tool_calls"),
    (["tool_use"], "tool_calls"),
    (["function_call"], "tool_calls"),
    (["error"], "error"),
    (["pause_turn"], "other"),
    (["FINISH_REASON_UNSPECIFIED"], "other"),
    (["stop", "length"], "length"),
    (["tool_calls", "content_filter", "stop"], "content_filter"),
    (["stop", "error"], "error"),
    (["weird", "stop"], "stop"),
]


@pytest.mark.parametrize(("reasons", "expected"), FINISH_TABLE)
def test_finish_class(reasons: list[str], expected: str) -> None:
    record = one(finish_reasons=FINISH_SEPARATOR.join(reasons))
    assert record["finish_class"] == expected
    assert record["finish_reason"] == reasons[0]


def test_every_mapped_value_is_a_finish_class() -> None:
    assert set(FINISH_CLASS_OF.values()) <= set(FINISH_CLASSES)


@pytest.mark.parametrize(
    ("status_error", "has_error_type", "expected"),
    [(False, False, "other"), (True, False, "error"), (False, True, "error")],
)
def test_no_reason(status_error: bool, has_error_type: bool, expected: str) -> None:
    record = one(status_error=status_error, has_error_type=has_error_type)
    assert (record["finish_class"], record["is_error"]) == (expected, expected == "error")


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        ({"finish_reasons": "stop"}, False),
        ({"finish_reasons": "refusal"}, True),
        ({"finish_reasons": f"stop{FINISH_SEPARATOR}SAFETY"}, True),
        ({"finish_reasons": "stop", "app_refusal": True}, True),
        ({"finish_reasons": "stop", "app_refusal": False}, False),
        ({"legacy_refusal": True}, True),
    ],
)
def test_refusal(overrides: dict[str, Any], refusal: bool) -> None:
    assert one(**overrides)["is_refusal"] is refusal


@pytest.mark.parametrize(
    ("parse_ok", "attempt", "failure"),
    [(None, False, False), (True, True, False), (False, True, True)],
)
def test_parse_flags(parse_ok: bool | None, attempt: bool, failure: bool) -> None:
    record = one(parse_ok=parse_ok)
    assert (record["parse_attempt"], record["parse_failure"]) == (attempt, failure)


TOKEN_TABLE = [
    # (input, output, total, cache_read, cache_write) -> (input, output)
    ((100, 20, None, None, None), (100, 20)),
    ((100, None, 130, None, None), (100, 30)),
    ((None, 30, 130, None, None), (100, 30)),
    ((None, None, 130, None, None), (None, None)),
    ((100, None, 90, None, None), (100, None)),  # inconsistent total is not used
    ((2572, 50, None, 2048, 512), (2572, 50)),  # inclusive (OTel) semantics kept
    ((12, 50, None, 2048, 512), (2572, 50)),  # raw Anthropic semantics repaired
    ((12, 50, None, 2048, None), (2060, 50)),
]


@pytest.mark.parametrize(("given", "expected"), TOKEN_TABLE)
def test_token_coalescing(given: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    inp, out, total, cache_read, cache_write = given
    record = one(
        input_tokens=inp,
        output_tokens=out,
        total_tokens=total,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    assert (record["input_tokens"], record["output_tokens"]) == expected
    assert record["cached_input_tokens"] == cache_read


def test_dimensions_and_provider_are_cleaned() -> None:
    record = one(provider=" Anthropic ", tenant="  ", feature=" search ", response_model="r")
    assert (record["provider"], record["tenant"], record["feature"]) == (
        "anthropic",
        None,
        "search",
    )
    assert (record["model"], record["response_model"]) == ("m", "r")
    assert one(request_model=None, response_model="r")["model"] == "r"


@pytest.mark.parametrize(
    ("raw_name", "canonical"),
    [
        ("openai", "openai"),
        ("Anthropic", "anthropic"),
        ("az.ai.openai", "azure.ai.openai"),
        ("azure", "azure.ai.openai"),
        ("gemini", "gcp.gemini"),
        ("vertex_ai", "gcp.vertex_ai"),
        ("mistralai", "mistral_ai"),
        ("ollama", "ollama"),
        ("", None),
    ],
)
def test_provider_aliases(raw_name: str, canonical: str | None) -> None:
    assert canonical_provider(raw_name) == canonical
    assert one(provider=raw_name)["provider"] == canonical


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("chat", None, None, None), "chat"),
        (("generate_content", None, None, None), "generate_content"),
        (("completion", None, None, None), "text_completion"),
        (("embeddings", "chat", "LLM", None), None),
        ((None, "chat", None, None), "chat"),
        ((None, "completion", None, "openai"), "text_completion"),
        ((None, "completion", None, "Anthropic"), "chat"),
        ((None, "rerank", None, None), None),
        ((None, None, "LLM", None), "chat"),
        ((None, None, "CHAIN", None), None),
        ((None, None, None, "openai"), None),
    ],
)
def test_operation_of(args: tuple[Any, ...], expected: str | None) -> None:
    assert operation_of(*args) == expected


REJECT_TABLE = [
    ({}, None),
    ({"bad_reason": "bad_attribute_type", "bad_detail": "d"}, "bad_attribute_type"),
    ({"ttft_s": float("nan")}, "non_finite_value"),
    ({"span_cost_usd": float("inf")}, "non_finite_value"),
    ({"reasoning_tokens": -1}, "negative_tokens"),
    ({"cache_write_tokens": 10_000_001}, "absurd_tokens"),
    ({"input_tokens": 10_000_000}, None),
    ({"span_cost_usd": -0.01}, "negative_cost"),
    ({"ttft_s": -0.1}, "negative_duration"),
    ({"end_ns": None}, "timestamp_out_of_range"),
    ({"end_ns": 946_684_799_999 * 1_000_000, "start_ns": None}, "timestamp_out_of_range"),
    ({"end_ns": (NOW_MS + 3_600_001) * 1_000_000}, "timestamp_out_of_range"),
    ({"end_ns": (NOW_MS + 3_600_000) * 1_000_000}, None),
    ({"start_ns": END_NS + 1}, "end_before_start"),
    ({"start_ns": None}, None),
    ({"start_ns": 0}, "timestamp_out_of_range"),  # unset OTLP start: not a 56-year latency
    ({"start_ns": 946_684_799_999 * 1_000_000}, "timestamp_out_of_range"),
    ({"start_ns": 946_684_800_000 * 1_000_000}, None),
]


@pytest.mark.parametrize(("overrides", "reason"), REJECT_TABLE)
def test_reject_reasons(overrides: dict[str, Any], reason: str | None) -> None:
    expr, detail = reject_reasons(NOW_MS, 946_684_800_000, 3_600_000)
    frame = pl.DataFrame([raw(**overrides)], schema=RAW_SCHEMA)
    got = frame.select(expr.alias("r"), detail.alias("d")).row(0)
    assert got[0] == reason
    assert (got[1] is None) == (reason is None)


def test_latency_and_end_time() -> None:
    record = one()
    assert record["end_time_ms"] == NOW_MS - 1000
    assert record["latency_s"] == pytest.approx(2.0)
    assert one(start_ns=None)["latency_s"] is None


def test_deduplicate_spans_and_calls() -> None:
    rows = [
        raw(trace_id="t1", span_id="s1", input_tokens=1),
        raw(trace_id="t1", span_id="s1", input_tokens=2),  # duplicate span: first kept
        # S14: Traceloop + native Anthropic span of one call, separate traces
        raw(trace_id="t2", span_id="a", provider="anthropic", response_id="msg_1", input_tokens=9),
        raw(
            trace_id="t3",
            span_id="b",
            provider="Anthropic",
            response_id="msg_1",
            input_tokens=9,
            cache_write_tokens=5,
            finish_reasons="end_turn",
        ),
        raw(trace_id="t4", span_id="c", provider="openai", response_id="msg_1"),  # other provider
        raw(trace_id=None, span_id=None, response_id=None),
        raw(trace_id=None, span_id=None, response_id=None),  # unknown ids are never duplicates
    ]
    kept, counts = deduplicate(norm(*rows))
    assert counts == {"duplicate_span": 1, "duplicate_call": 1}
    assert kept["span_id"].to_list() == ["s1", "b", "c", None, None]
    assert kept["input_tokens"].to_list()[0] == 1

"""Every message and span is accounted for; dead letters are well-formed and content-free."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decode_support import (
    NOW_MS,
    batch_without_content,
    case_span,
    load_cases,
    make_decoder,
    messages,
    proto_to_otlp_json,
    traces_bytes,
)

from spanpulse.schemas.dead_letter import MAX_DETAIL_CHARS, DeadLetter
from spanpulse.schemas.decode import DecodedBatch, Decoder, Message
from spanpulse.schemas.record import RECORD_SCHEMA

CASES = load_cases()
GOOD = [c for c in CASES if "expect" in c and "resource" not in c]
BAD = [c for c in CASES if "dead" in c]
SKIP = [c for c in CASES if "skip" in c]

MESSAGE_KINDS = st.sampled_from(["spans", "empty", "none", "huge", "garbage", "duplicate"])


def check_invariants(batch: DecodedBatch, n_messages: int) -> None:
    span_dead = [d for d in batch.dead_letters if d.span_index is not None]
    message_dead = [d for d in batch.dead_letters if d.span_index is None]
    assert batch.spans_seen == batch.records.height + sum(batch.skipped.values()) + len(span_dead)
    well_formed = n_messages - len(message_dead)
    assert batch.messages == n_messages and well_formed >= 0
    assert dict(batch.records.schema) == RECORD_SCHEMA
    assert all(d.stage == "normalize" for d in span_dead)
    assert all(d.stage == "decode" or d.reason == "normalize_error" for d in message_dead)
    if batch.records.height:
        assert batch.max_event_time_ms == batch.records["end_time_ms"].max()
        # Each record's message offset, aligned and in stream order (per-message lateness).
        offsets = batch.offsets
        assert offsets is not None and len(offsets) == batch.records.height
        assert (offsets[1:] >= offsets[:-1]).all()
        dead_offsets = {d.offset for d in message_dead}
        assert dead_offsets.isdisjoint(offsets.tolist())
    else:
        assert batch.max_event_time_ms is None


def build(kinds: list[str], picks: list[int], encoding: str) -> tuple[list[bytes | None], int]:
    """Return message values and the number of spans in well-formed messages."""
    values: list[bytes | None] = []
    spans_total = 0
    for i, kind in enumerate(kinds):
        pick = picks[i % len(picks)]
        if kind in ("spans", "duplicate"):
            chosen = [GOOD[pick % len(GOOD)], BAD[pick % len(BAD)], SKIP[pick % len(SKIP)]]
            spans = [case_span(c, 1000 * i + j) for j, c in enumerate(chosen)]
            if kind == "duplicate":
                spans.append(spans[0])
            value = traces_bytes(spans)
            values.append(proto_to_otlp_json(value) if encoding == "otlp_json" else value)
            spans_total += len(spans)
        elif kind == "empty":
            values.append(b"")
        elif kind == "none":
            values.append(None)
        elif kind == "huge":
            values.append(b"x" * 5000)
        else:
            values.append(b"\x0a\xff\xff\x01garbage{")
    return values, spans_total


@settings(max_examples=40, deadline=None)
@given(
    kinds=st.lists(MESSAGE_KINDS, max_size=8),
    picks=st.lists(st.integers(0, 100), min_size=1, max_size=8),
    encoding=st.sampled_from(["otlp_proto", "otlp_json"]),
)
def test_accounting_invariants_otlp(kinds: list[str], picks: list[int], encoding: str) -> None:
    values, spans_total = build(kinds, picks, encoding)
    batch = make_decoder(encoding, max_message_bytes=4000).decode(messages(values))
    check_invariants(batch, len(values))
    assert batch.spans_seen == spans_total
    # Span ids encode their message's index (1000 * i + j + 1): offsets point at the right one.
    for span_id, offset in zip(
        batch.records["span_id"], batch.offsets if batch.records.height else [], strict=True
    ):
        assert 100 + (int(span_id, 16) - 1) // 1000 == offset
    assert batch.skipped.get("duplicate_span", 0) == kinds.count("duplicate")
    reasons = [d.reason for d in batch.dead_letters if d.span_index is None]
    assert reasons.count("empty_message") == kinds.count("empty") + kinds.count("none")
    assert reasons.count("message_too_large") == kinds.count("huge")
    batch_without_content(batch)


SPAN_JSON_VALUES = st.sampled_from(
    [
        b'{"end_time": 1759999999000, "model": "gpt-4o", "input_tokens": 5}',
        b'{"end_time": 1759999999000, "model": "gpt-4o", "input_tokens": -5}',
        b'{"end_time": 1759999999000, "model": "e", "operation": "embeddings"}',
        b'{"end_time": 1759999999000}',
        b"{oops",
        b"",
        b'"just a string"',
        b'{"end_time": 1759999999000, "model": "gpt-4o", "error": "no"}',
    ]
)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(SPAN_JSON_VALUES, max_size=10))
def test_accounting_invariants_span_json(values: list[bytes]) -> None:
    batch = make_decoder("span_json").decode(messages(list(values)))
    check_invariants(batch, len(values))
    message_dead = sum(d.span_index is None for d in batch.dead_letters)
    assert batch.spans_seen == len(values) - message_dead
    if batch.records.height:  # one span per message: each kept message once, none dead-lettered
        offsets = batch.offsets.tolist()
        assert len(set(offsets)) == len(offsets)
        assert {d.offset for d in batch.dead_letters}.isdisjoint(offsets)


def test_dead_letter_envelope_round_trip() -> None:
    letter = DeadLetter(
        reason="protobuf_decode_error",
        detail="x" * 500,
        stage="decode",
        topic="t",
        partition=3,
        offset=42,
        payload=b"\x00\xffraw",
        span_index=None,
    )
    assert len(letter.detail) == MAX_DETAIL_CHARS
    doc = json.loads(letter.to_json_bytes())
    assert doc["payload_b64"] == "AP9yYXc=" and doc["partition"] == 3
    assert DeadLetter.from_json_bytes(letter.to_json_bytes()) == letter
    assert json.loads(letter.to_json_bytes(include_payload=False))["payload_b64"] is None


def test_span_dead_letter_payload_has_fields_but_no_content() -> None:
    case = next(c for c in BAD if c["name"] == "tokens_as_text")
    attrs = {**case["attributes"], "gen_ai.input.messages": "TOP-SECRET prompt"}
    value = traces_bytes([case_span({**case, "attributes": attrs})])
    batch = make_decoder().decode(messages([value]))
    (letter,) = batch.dead_letters
    payload: dict[str, Any] = json.loads(letter.payload or b"")
    assert payload["request_model"] == "gpt-4o" and payload["trace_id"]
    assert "gen_ai.usage.input_tokens" in letter.detail and "many" not in letter.detail
    assert "TOP-SECRET" not in (letter.payload or b"").decode()


class _BrokenPricing:
    def apply(self, df: pl.DataFrame) -> pl.DataFrame:
        msg = "boom"
        raise RuntimeError(msg)


def test_decode_never_raises() -> None:
    decoder = make_decoder(pricing=_BrokenPricing())
    good = traces_bytes([case_span(GOOD[0])])
    batch = decoder.decode(messages([good, b""]))
    check_invariants(batch, 2)
    assert sorted(d.reason for d in batch.dead_letters) == ["empty_message", "normalize_error"]


def test_future_skew_uses_the_injected_clock() -> None:
    case = {"name": "f", "attributes": GOOD[0]["attributes"], "end_offset_ms": -10_000}
    value = traces_bytes([case_span({**case, "start_offset_ms": 0})])
    assert make_decoder(max_future_skew_ms=60_000).decode(messages([value])).records.height == 1
    late_clock = make_decoder(max_future_skew_ms=5_000, now_ms=lambda: NOW_MS)
    assert [d.reason for d in late_clock.decode(messages([value])).dead_letters] == [
        "timestamp_out_of_range"
    ]


def test_constructor_validates() -> None:
    for kwargs in ({"encoding": "jaeger"}, {"fill_threshold": 0.0}, {"max_message_bytes": 0}):
        try:
            make_decoder(**{"encoding": "otlp_proto", **kwargs})
        except ValueError:
            continue
        raise AssertionError(kwargs)
    assert isinstance(make_decoder(), Decoder)
    assert Message(b"", "t", 0, 0).timestamp_ms is None

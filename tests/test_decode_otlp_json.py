"""OTLP/JSON decoding: the same golden cases as protobuf must give identical records."""

from __future__ import annotations

import json
from typing import Any

import pytest
from polars.testing import assert_frame_equal
from test_decode_support import (
    batch_without_content,
    case_span,
    load_cases,
    make_decoder,
    messages,
    proto_to_otlp_json,
    traces_bytes,
)

from spanpulse.schemas.record import RECORD_SCHEMA

CASES = load_cases()


def _both(value: bytes) -> tuple[Any, Any]:
    proto = make_decoder("otlp_proto").decode(messages([value]))
    as_json = make_decoder("otlp_json").decode(messages([proto_to_otlp_json(value)]))
    return proto, as_json


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_json_matches_proto(case: dict[str, Any]) -> None:
    proto, as_json = _both(traces_bytes([case_span(case)], case.get("resource")))
    assert_frame_equal(as_json.records, proto.records)
    assert as_json.skipped == proto.skipped
    assert [(d.reason, d.span_index) for d in as_json.dead_letters] == [
        (d.reason, d.span_index) for d in proto.dead_letters
    ]
    assert [d.payload for d in as_json.dead_letters] == [d.payload for d in proto.dead_letters]
    batch_without_content(as_json)


def _doc(**span: Any) -> bytes:
    base = {
        "traceId": "0AF7651916CD43DD8448EB211C80319C",
        "spanId": "B7AD6B7169203331",
        "startTimeUnixNano": "1759999998000000000",
        "endTimeUnixNano": "1759999999000000000",
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "120"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 7}},
        ],
    }
    base.update(span)
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [base]}]}]}).encode()


def test_collector_shapes() -> None:
    batch = make_decoder("otlp_json").decode(messages([_doc(status={"code": "STATUS_CODE_ERROR"})]))
    record = batch.records.row(0, named=True)
    assert record["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert (record["input_tokens"], record["output_tokens"], record["is_error"]) == (120, 7, True)
    assert record["end_time_ms"] == 1_759_999_999_000


def test_snake_case_and_base64_ids_are_accepted() -> None:
    doc = json.loads(_doc())
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["trace_id"] = "CvdlGRbNQ92ESOshHIAxnA=="
    del span["traceId"]
    doc = {"resource_spans": [{"scope_spans": doc["resourceSpans"][0]["scopeSpans"]}]}
    batch = make_decoder("otlp_json").decode(messages([json.dumps(doc).encode()]))
    assert batch.records["trace_id"].to_list() == ["0af7651916cd43dd8448eb211c80319c"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "json_decode_error"),
        (b"\xff\xfe", "json_decode_error"),
        (b"[1, 2]", "schema_violation"),
        (b'{"resourceSpans": {"a": 1}}', "schema_violation"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": ["x"]}]}]}', "schema_violation"),
        (_doc(traceId="not-an-id"), "schema_violation"),
        (_doc(endTimeUnixNano="soon"), "schema_violation"),
    ],
)
def test_bad_messages(value: bytes, reason: str) -> None:
    batch = make_decoder("otlp_json").decode(messages([value, _doc()]))
    assert [d.reason for d in batch.dead_letters] == [reason]
    assert batch.dead_letters[0].payload == value
    assert batch.records.height == 1 and batch.spans_seen == 1


def test_empty_document_is_a_well_formed_message() -> None:
    batch = make_decoder("otlp_json").decode(messages([b"{}"]))
    assert (batch.spans_seen, batch.dead_letters, batch.records.height) == (0, [], 0)
    assert dict(batch.records.schema) == RECORD_SCHEMA

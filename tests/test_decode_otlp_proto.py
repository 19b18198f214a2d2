"""OTLP protobuf decoding: every golden convention case, one span per message and all in one."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_decode_support import (
    assert_expected,
    batch_without_content,
    case_span,
    load_cases,
    make_decoder,
    messages,
    traces_bytes,
)

from spanpulse.schemas.conventions import AttributeKeys
from spanpulse.schemas.record import RECORD_SCHEMA

CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case(case: dict[str, Any]) -> None:
    value = traces_bytes([case_span(case)], case.get("resource"))
    batch = make_decoder().decode(messages([value]))
    assert batch.spans_seen == 1
    batch_without_content(batch)
    if "skip" in case:
        assert batch.skipped == {case["skip"]: 1}
        assert batch.records.height == 0
    elif "dead" in case:
        assert [d.reason for d in batch.dead_letters] == [case["dead"]]
        dl = batch.dead_letters[0]
        assert (dl.stage, dl.span_index, dl.offset) == ("normalize", 0, 100)
    else:
        assert batch.dead_letters == [] and batch.skipped == {}
        assert_expected(batch.records.row(0, named=True), case["expect"], case["name"])


def test_all_cases_in_one_message_keep_the_good_ones() -> None:
    spans = [case_span(c, i) for i, c in enumerate(CASES) if "resource" not in c]
    batch = make_decoder().decode(messages([traces_bytes(spans)]))
    kept = [c for c in CASES if "resource" not in c]
    assert batch.spans_seen == len(kept)
    assert batch.records.height == sum("expect" in c for c in kept)
    assert len(batch.dead_letters) == sum("dead" in c for c in kept)
    assert sorted(d.span_index for d in batch.dead_letters) == [
        i for i, c in enumerate(kept) if "dead" in c
    ]
    assert dict(batch.records.schema) == RECORD_SCHEMA
    # records come out in span order, with ids in lowercase hex
    assert batch.records["trace_id"][0] == (1).to_bytes(16, "big").hex()


def test_export_request_bytes_decode_like_traces_data() -> None:
    case = CASES[0]
    value = traces_bytes([case_span(case)])
    request = ExportTraceServiceRequest.FromString(value)
    batch = make_decoder().decode(messages([request.SerializeToString()]))
    assert batch.records.height == 1


def test_resource_attribute_is_fallback_and_span_wins() -> None:
    case = {
        "name": "x",
        "attributes": {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "m",
            "tenant.id": "s",
        },
    }
    spans = [case_span(case, 0), case_span({**case, "attributes": {**case["attributes"]}}, 1)]
    del spans[1].attributes[2]  # second span has no tenant
    value = traces_bytes(spans, {"tenant.id": "r", "service.name": "svc"})
    records = make_decoder().decode(messages([value])).records
    assert records["tenant"].to_list() == ["s", "r"]
    assert records["service"].to_list() == ["svc", "svc"]


def test_configured_keys_replace_defaults() -> None:
    keys = AttributeKeys(tenant=("org.id",), feature=("my.feature",))
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
    attrs |= {"tenant.id": "ignored", "org.id": "acme", "my.feature": "f"}
    value = traces_bytes([case_span({"name": "k", "attributes": attrs})])
    record = make_decoder(keys=keys).decode(messages([value])).records.row(0, named=True)
    assert (record["tenant"], record["feature"]) == ("acme", "f")


def test_long_values_and_unusual_encodings_take_the_slow_path() -> None:
    long_model = "m" * 300  # a two-byte length varint
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": long_model,
        "gen_ai.usage.input_tokens": 5_000_000,  # a 4-byte varint
        "gen_ai.usage.output_tokens": 12.0,  # an integral double
        "gen_ai.response.finish_reasons": ["stop", "x" * 200],
        "gen_ai.prompt.version": 7,  # a number for a string concept
        "a" * 200: "a key longer than 127 bytes",
    }
    value = traces_bytes([case_span({"name": "slow", "attributes": attrs})])
    record = make_decoder().decode(messages([value])).records.row(0, named=True)
    assert record["model"] == long_model
    assert (record["input_tokens"], record["output_tokens"]) == (5_000_000, 12)
    assert (record["finish_reason"], record["prompt_version"]) == ("stop", "7")


def test_negative_int_varint() -> None:
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
    attrs["gen_ai.usage.input_tokens"] = -300
    value = traces_bytes([case_span({"name": "neg", "attributes": attrs})])
    batch = make_decoder().decode(messages([value]))
    assert [d.reason for d in batch.dead_letters] == ["negative_tokens"]


def test_corrupt_bytes_are_a_message_dead_letter() -> None:
    good = traces_bytes([case_span(CASES[0])])
    batch = make_decoder().decode(messages([b"\x0a\xff\xff\xff", good[: len(good) // 2], good]))
    assert [d.reason for d in batch.dead_letters] == ["protobuf_decode_error"] * 2
    assert batch.dead_letters[0].payload == b"\x0a\xff\xff\xff"
    assert batch.records.height == 1

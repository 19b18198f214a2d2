"""span_json decoding: golden files, schema file, fast vs. fallback path, bad messages."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from polars.testing import assert_frame_equal
from test_decode_support import (
    FIXTURES,
    assert_expected,
    batch_without_content,
    make_decoder,
    messages,
)

from spanpulse.schemas import span_json

SCHEMA = json.loads((FIXTURES.parents[2] / "schemas" / "span_json.schema.json").read_text())
VALID = (FIXTURES / "span_json_valid.jsonl").read_bytes().splitlines()
INVALID = [
    json.loads(line) for line in (FIXTURES / "span_json_invalid.jsonl").read_text().splitlines()
]


def test_schema_is_valid_and_accepts_the_golden_messages() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for line in VALID:
        validator.validate(json.loads(line))
    assert set(SCHEMA["properties"]) == set(span_json.READ_SCHEMA)


def test_golden_messages() -> None:
    batch = make_decoder("span_json").decode(messages(list(VALID)))
    assert batch.dead_letters == [] and batch.spans_seen == 3
    first, second, third = batch.records.iter_rows(named=True)
    assert_expected(
        first,
        {
            "end_time_ms": 1_759_999_999_000,  # 2025-10-09T08:53:19Z
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "latency_s": 1.5,
            "ttft_s": 0.35,
            "tenant": "acme",
            "finish_class": "stop",
            "cached_input_tokens": 600,
            "parse_attempt": True,
            "parse_failure": False,
            "priced": True,
        },
        "first",
    )
    assert_expected(
        second,
        {
            "end_time_ms": 1_760_000_000_000,
            "latency_s": 2.5,
            "provider": "anthropic",
            "finish_class": "length",
            "parse_failure": True,
            # span_json has no cache-write field: 524 uncached input tokens at $3/Mtok
            "cost_usd": (524 * 3 + 2048 * 0.3 + 50 * 15) / 1e6,
            "operation": None,
        },
        "second",
    )
    assert_expected(
        third,
        {
            "end_time_ms": 1_759_999_999_000,  # 10:53:19+02:00 == 08:53:19Z
            "latency_s": None,
            "is_error": True,
            "finish_class": "error",
            "is_refusal": True,
            "cost_nanos": 125_000_000,
        },
        "third",
    )
    batch_without_content(batch)


@pytest.mark.parametrize("case", INVALID, ids=[f"{i}-{c['reason']}" for i, c in enumerate(INVALID)])
def test_bad_message_is_isolated(case: dict[str, Any]) -> None:
    values = [VALID[0], case["value"].encode(), VALID[1]]
    batch = make_decoder("span_json").decode(messages(values))
    assert [d.reason for d in batch.dead_letters] == [case["reason"]]
    dead = batch.dead_letters[0]
    assert dead.offset == 101
    whole_message = case["reason"] in ("json_decode_error", "schema_violation")
    assert (dead.stage, dead.payload == values[1]) == (
        ("decode", True) if whole_message else ("normalize", False)
    )
    assert batch.records.height == 2
    assert batch.spans_seen == (2 if whole_message else 3)


def test_fast_and_fallback_paths_agree() -> None:
    decoder = make_decoder("span_json")
    fast = decoder.decode(messages(list(VALID)))
    slow = decoder.decode(messages([*VALID, b"{broken"]))
    assert_frame_equal(fast.records, slow.records)


def test_pretty_printed_object_and_non_llm_operation() -> None:
    pretty = json.dumps({"end_time": 1_760_000_000_000, "model": "gpt-4o"}, indent=2).encode()
    embed = json.dumps({"end_time": 1_760_000_000_000, "model": "e", "operation": "embeddings"})
    batch = make_decoder("span_json").decode(messages([pretty, embed.encode()]))
    assert batch.records["model"].to_list() == ["gpt-4o"]
    assert batch.skipped == {"not_llm": 1}


def test_validate_object_types() -> None:
    assert span_json.validate_object({"model": 5, "input_tokens": 3, "extra": [1]}) == {
        "model": "5",
        "input_tokens": 3,
    }
    with pytest.raises(span_json.SchemaViolation):
        span_json.validate_object({"input_tokens": True})

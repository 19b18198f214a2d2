"""The alert contract: JSON Schema validity, deterministic ids, fingerprint, key, times."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest

from spanpulse.schemas.alert import (
    ALERT_SCHEMA_PATH,
    Alert,
    Contributor,
    alert_id,
    build_alert,
    fingerprint,
    iso_z,
    load_alert_schema,
)

T = datetime(2025, 1, 31, 14, 5, tzinfo=UTC)


def _alert(**over: object) -> Alert:
    kw: dict[str, object] = {
        "detector": "proportion_shift",
        "metric": "length_share",
        "grain": "tenant.model",
        "dimensions": {"tenant": "acme", "model": "gpt-4o"},
        "status": "firing",
        "severity": "warning",
        "window_start": T,
        "window_end": T + timedelta(minutes=1),
        "started_at": T - timedelta(minutes=1),
        "observed": 0.213,
        "expected": 0.011,
        "score": 0.61,
        "threshold": 0.4,
        "message": "length-stop share for model gpt-4o is 21.3% (baseline 1.1%) since 14:04Z.",
        "next_step": "Open the exemplar traces; check max_tokens and output length.",
        "exemplar_trace_ids": ["a" * 32],
        "contributors": [Contributor({"tenant": "acme", "model": "gpt-4o"}, 0.2, 0.01, 0.9, 400)],
        "unit": "ratio",
        "details": {"successes": 40, "trials": 188},
    }
    kw.update(over)
    return build_alert(**kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = load_alert_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_file_is_shipped_next_to_the_module() -> None:
    assert ALERT_SCHEMA_PATH.name == "alert.schema.json" and ALERT_SCHEMA_PATH.is_file()


def test_firing_alert_validates_and_round_trips_json(validator) -> None:
    a = _alert()
    doc = json.loads(a.to_json_bytes())
    validator.validate(doc)
    assert doc["id"] == a.id and doc["fingerprint"] == a.fingerprint
    assert doc["window_start"] == "2025-01-31T14:05:00Z"
    assert doc["ended_at"] is None
    assert doc["contributors"][0]["dimensions"] == {"model": "gpt-4o", "tenant": "acme"}


def test_resolved_alert_validates(validator) -> None:
    a = _alert(status="resolved", ended_at=T, observed=None, contributors=())
    validator.validate(json.loads(a.to_json_bytes()))


@pytest.mark.parametrize(
    ("field", "bad"),
    [("status", "open"), ("severity", "page"), ("window_start", "2025-01-31 14:05"),
     ("id", "xyz"), ("dimensions", {"user": "bob"}), ("detector", "magic")],
)  # fmt: skip
def test_schema_rejects_invalid_values(validator, field: str, bad: object) -> None:
    doc = json.loads(_alert().to_json_bytes())
    doc[field] = bad
    assert list(validator.iter_errors(doc)), f"{field}={bad!r} should be rejected"


def test_schema_rejects_unknown_fields(validator) -> None:
    doc = json.loads(_alert().to_json_bytes())
    doc["prompt"] = "never ship content"
    assert list(validator.iter_errors(doc))


def test_id_is_deterministic_and_distinguishes_status_and_window() -> None:
    a, b = _alert(), _alert(score=0.9, message="other wording")
    assert a.id == b.id  # a re-delivery of the same alert keeps its id
    assert a.id != _alert(status="resolved").id
    assert a.id != _alert(window_start=T + timedelta(minutes=1)).id
    assert a.id == alert_id(a.fingerprint, T, "firing")
    assert len(a.id) == 64


def test_fingerprint_ignores_dimension_order_but_not_identity() -> None:
    f = fingerprint("level_shift", "cost_usd", "tenant.model", {"tenant": "a", "model": "m"})
    assert f == fingerprint(
        "level_shift", "cost_usd", "tenant.model", {"model": "m", "tenant": "a"}
    )
    assert f != fingerprint(
        "level_shift", "cost_usd", "tenant.model", {"tenant": "a", "model": "n"}
    )
    assert f != fingerprint("drift", "cost_usd", "tenant.model", {"tenant": "a", "model": "m"})
    assert _alert().key == _alert().fingerprint.encode("ascii")


def test_non_finite_numbers_become_null(validator) -> None:
    doc = json.loads(_alert(observed=math.nan, expected=math.inf).to_json_bytes())
    validator.validate(doc)
    assert doc["observed"] is None and doc["expected"] is None


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        iso_z(datetime(2025, 1, 1))  # noqa: DTZ001 - the point of the test


def test_non_utc_times_are_converted_to_z() -> None:
    from zoneinfo import ZoneInfo

    t = datetime(2025, 1, 31, 15, 5, tzinfo=ZoneInfo("Europe/Paris"))
    assert iso_z(t) == "2025-01-31T14:05:00Z"

"""Tenant pseudonymisation: stable, keyed, applied before aggregation, reserved values kept."""

from __future__ import annotations

import polars as pl

from spanpulse.schemas.aggregate import Aggregator
from spanpulse.schemas.privacy import TenantHasher
from spanpulse.schemas.record import UNKNOWN, conform


def _records(tenants):
    return conform(
        pl.DataFrame(
            {
                "end_time_ms": [1_790_000_000_000] * len(tenants),
                "tenant": tenants,
                "model": ["m"] * len(tenants),
                "trace_id": [f"{i:032x}" for i in range(len(tenants))],
                "finish_class": ["stop"] * len(tenants),
                "is_error": [False] * len(tenants),
                "is_refusal": [False] * len(tenants),
                "parse_attempt": [False] * len(tenants),
                "parse_failure": [False] * len(tenants),
            }
        )
    )


def test_pseudonyms_are_stable_keyed_and_unlinkable_without_the_salt():
    a, b = TenantHasher(b"salt-1"), TenantHasher(b"salt-2")
    assert a.pseudonym("acme") == TenantHasher(b"salt-1").pseudonym("acme")
    assert a.pseudonym("acme") != b.pseudonym("acme")
    assert a.pseudonym("acme") != a.pseudonym("globex")
    assert "acme" not in a.pseudonym("acme") and a.pseudonym("acme").startswith("t_")


def test_hashing_happens_before_aggregation_and_keeps_nulls_and_totals():
    df = _records(["alice@example.com", "alice@example.com", "bob@example.com", None])
    hashed = TenantHasher(b"k").apply(df)
    rows = Aggregator(grains=(("tenant",),)).partials(hashed)
    tenants = set(rows["tenant"].to_list())
    assert not any("@" in t for t in tenants)
    assert UNKNOWN in tenants and len(tenants) == 3
    assert int(rows["calls"].sum()) == 4

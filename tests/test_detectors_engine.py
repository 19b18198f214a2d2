"""SeriesDetector end to end on synthetic rollup rows: detect, explain, resolve, recover."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import jsonschema
import numpy as np
import pytest
from test_detectors_fixtures import MINUTE, T0, Traffic, make_row

from spanpulse.detectors.config import DetectorConfig, ThresholdRule
from spanpulse.detectors.engine import SeriesDetector
from spanpulse.schemas.alert import Alert, load_alert_schema

VALIDATOR = jsonschema.Draft202012Validator(load_alert_schema())
MODELS = ("gpt-4o", "gpt-4o-mini")


class Tenant:
    """A tenant row plus its tenant.model children, built from per-model traffic."""

    def __init__(self, seed: int = 0, **per_model: Traffic) -> None:
        self.rng = np.random.default_rng(seed)
        self.traffic = {m: per_model.get(m, Traffic(calls_per_min=150)) for m in MODELS}

    def window(self, i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        kids = [
            make_row(self.rng, i, t, dims={"tenant": "acme", "model": m}, grain="tenant.model")
            for m, t in self.traffic.items()
        ]
        return _sum_rows(kids), kids


def _sum_rows(kids: list[dict[str, Any]]) -> dict[str, Any]:
    row = {k: v for k, v in kids[0].items() if k != "model"}
    row["grain"] = "tenant"
    for k, v in kids[0].items():
        if isinstance(v, int) and not isinstance(v, bool):
            row[k] = sum(c[k] for c in kids)
        elif isinstance(v, float):
            row[k] = sum(c[k] for c in kids)
        elif k.endswith("_hist"):
            merged: dict[int, int] = {}
            for c in kids:
                for cell in c[k]:
                    merged[cell["b"]] = merged.get(cell["b"], 0) + cell["n"]
            row[k] = [{"b": b, "n": n} for b, n in sorted(merged.items())]
        elif k == "exemplar_trace_ids":
            row[k] = [t for c in kids for t in c[k]][:5]
    return row


def _run(det: SeriesDetector, tenant: Tenant, windows: range) -> list[tuple[int, Alert]]:
    out = []
    for i in windows:
        row, kids = tenant.window(i)
        out += [(i, a) for a in det.observe(row, kids)]
    return out


def _validate(alerts: list[tuple[int, Alert]]) -> None:
    for _, a in alerts:
        VALIDATOR.validate(json.loads(a.to_json_bytes()))


@pytest.fixture(scope="module")
def warmed() -> tuple[SeriesDetector, Tenant]:
    det, tenant = SeriesDetector(DetectorConfig()), Tenant(seed=1)
    assert _run(det, tenant, range(0, 240)) == []  # steady traffic: no alerts while learning
    return det, tenant


def _fork(warmed: tuple[SeriesDetector, Tenant]) -> tuple[SeriesDetector, Tenant]:
    det, tenant = warmed
    clone = SeriesDetector.from_snapshot(det.snapshot(), det.config)
    fresh = Tenant(seed=2)
    fresh.traffic = dict(tenant.traffic)
    return clone, fresh


def test_length_stop_incident_is_detected_explained_and_resolved(warmed) -> None:
    det, tenant = _fork(warmed)
    tenant.traffic["gpt-4o"] = replace(tenant.traffic["gpt-4o"], p_length=0.25)
    alerts = _run(det, tenant, range(240, 250))
    firing = [(i, a) for i, a in alerts if a.status == "firing" and a.metric == "length_share"]
    assert firing, [a.message for _, a in alerts]
    i, a = firing[0]
    assert i - 240 < 3  # detected within 3 windows
    assert a.detector == "proportion_shift" and a.dimensions == {"tenant": "acme"}
    assert a.contributors[0].dimensions == {"tenant": "acme", "model": "gpt-4o"}
    assert a.contributors[0].share is not None and a.contributors[0].share > 0.8
    assert "model gpt-4o" in a.message and "%" in a.message
    assert a.exemplar_trace_ids and a.expected is not None and a.expected < 0.05
    assert a.started_at == T0 + 240 * MINUTE
    tenant.traffic["gpt-4o"] = replace(tenant.traffic["gpt-4o"], p_length=0.01)
    later = _run(det, tenant, range(250, 290))
    resolved = [a for _, a in later if a.status == "resolved" and a.fingerprint == a.fingerprint]
    assert any(r.fingerprint == a.fingerprint and r.severity == a.severity for r in resolved)
    _validate(alerts + later)


def test_expensive_model_switch_fires_a_cost_per_call_level_shift(warmed) -> None:
    det, tenant = _fork(warmed)
    pricey = replace(tenant.traffic["gpt-4o-mini"], price_in=2.5e-5, price_out=1e-4)
    tenant.traffic["gpt-4o-mini"] = pricey
    alerts = _run(det, tenant, range(240, 246))
    hits = [(i, a) for i, a in alerts if a.metric == "cost_per_call" and a.status == "firing"]
    assert hits, [a.message for _, a in alerts]
    i, a = hits[0]
    assert i - 240 < 3 and a.detector == "level_shift"
    assert a.contributors and a.contributors[0].dimensions["model"] == "gpt-4o-mini"
    _validate(alerts)


def test_silence_resolves_open_alerts_and_the_series_becomes_idle(warmed) -> None:
    det, tenant = _fork(warmed)
    tenant.traffic["gpt-4o"] = replace(tenant.traffic["gpt-4o"], p_length=0.3)
    opened = [a for _, a in _run(det, tenant, range(240, 246)) if a.status == "firing"]
    assert opened
    resolved: list[Alert] = []
    for k in range(1, det.config.idle_after_windows + 2):
        resolved += det.tick(T0 + (246 + k) * MINUTE)
    assert {a.fingerprint for a in opened} <= {a.fingerprint for a in resolved}
    assert all(a.status == "resolved" for a in resolved)
    assert det.idle


def test_late_rows_are_ignored_and_rows_are_not_mutated(warmed) -> None:
    det, tenant = _fork(warmed)
    row, kids = tenant.window(240)
    before = json.dumps(row, default=str, sort_keys=True)
    assert det.observe({**row, "late": True, "finish_length": row["calls"]}, kids) == []
    det.observe(row, kids)
    assert json.dumps(row, default=str, sort_keys=True) == before


def test_snapshot_round_trip_continues_identically(warmed) -> None:
    det, tenant = warmed
    a = SeriesDetector.from_snapshot(det.snapshot(), det.config)
    b = SeriesDetector.from_snapshot(det.snapshot(), det.config)
    ta, tb = Tenant(seed=9), Tenant(seed=9)
    for t in (ta, tb):
        t.traffic["gpt-4o"] = replace(t.traffic["gpt-4o"], p_length=0.2)
    ids_a = [x.id for _, x in _run(a, ta, range(240, 260))]
    ids_b = [x.id for _, x in _run(b, tb, range(240, 260))]
    assert ids_a and ids_a == ids_b


def test_state_from_another_configuration_is_discarded(warmed) -> None:
    det, _ = warmed
    other = DetectorConfig(proportion_threshold=0.5)
    assert other.version != det.config.version
    restored = SeriesDetector.from_snapshot(det.snapshot(), other)
    assert restored.grain is None  # started fresh
    assert SeriesDetector.from_snapshot(None, other).grain is None


def test_threshold_rule_needs_for_windows_and_counts() -> None:
    cfg = DetectorConfig(
        rules=(ThresholdRule("error_rate", ">", 0.05, for_windows=3),),
        proportion_metrics=(), drift_metrics=(), level_shift_metrics={},
    )  # fmt: skip
    det = SeriesDetector(cfg)
    rng = np.random.default_rng(4)
    small = [make_row(rng, i, Traffic(p_error=0.5), calls=3) for i in range(5)]
    assert [a for r in small for a in det.observe(r)] == []  # 3 calls: below min_calls
    big = [make_row(rng, i, Traffic(p_error=0.2), calls=400) for i in range(5, 10)]
    fired = [(i, a) for i, r in enumerate(big) for a in det.observe(r)]
    assert [(i, a.status) for i, a in fired] == [(2, "firing")]  # for: 3 windows
    a = fired[0][1]
    assert a.detector == "threshold" and a.metric == "error_rate>0.05" and a.threshold == 0.05


def test_budget_burn_fires_for_a_tenant_with_a_budget() -> None:
    cfg = DetectorConfig(budgets_usd_per_hour={"acme": 5.0})
    det = SeriesDetector(cfg)
    rng = np.random.default_rng(5)
    alerts: list[Alert] = []
    for i in range(30):
        alerts += det.observe(make_row(rng, i, Traffic(calls_per_min=400)))  # ~$0.6/min
    budget = [a for a in alerts if a.detector == "budget_burn"]
    assert budget and budget[0].metric == "cost_usd_hourly" and budget[0].status == "firing"
    assert budget[0].observed is not None and budget[0].observed >= 5.0
    VALIDATOR.validate(json.loads(budget[0].to_json_bytes()))


def test_no_budget_no_budget_alerts() -> None:
    det = SeriesDetector(DetectorConfig())
    rng = np.random.default_rng(6)
    alerts = [a for i in range(30) for a in det.observe(make_row(rng, i, Traffic()))]
    assert not [a for a in alerts if a.detector == "budget_burn"]

"""Budget burn: trailing-hour spend, projected daily spend, day rollover."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from spanpulse.detectors.budget import HOURLY, PROJECTED, BudgetBurn

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def _feed(b: BudgetBurn, costs: list[float], start: datetime = T0) -> dict[str, float]:
    readings = {}
    for i, c in enumerate(costs):
        for r in b.observe(c, start + i * M, start + (i + 1) * M):
            readings[r.metric] = r.score
    return readings


def test_trailing_hour_spend_against_the_hourly_budget() -> None:
    b = BudgetBurn(budget_per_day=None, budget_per_hour=10.0)
    scores = _feed(b, [0.25] * 90)  # $15/hour
    assert scores[HOURLY] == pytest.approx(1.5)  # only the last 60 minutes count
    assert PROJECTED not in scores


def test_projection_uses_the_burn_rate_until_midnight() -> None:
    b = BudgetBurn(budget_per_day=1000.0, budget_per_hour=None)
    _feed(b, [1.0] * 120)  # $1/minute since noon: $120 spent, 10 h left at $60/h
    projected = b.projected_today(T0 + 120 * M)
    assert projected == pytest.approx(120 + 600, rel=0.02)


def test_small_spend_is_not_eligible_for_projection_alerts() -> None:
    b = BudgetBurn(budget_per_day=1000.0, budget_per_hour=None, min_spent_fraction=0.1)
    readings = b.observe(50.0, T0, T0 + M)  # a $50 minute projects $36,000 but $50 < $100
    assert readings[0].score > 1.0 and not readings[0].eligible


def test_a_new_utc_day_starts_from_zero() -> None:
    b = BudgetBurn(budget_per_day=100.0, budget_per_hour=None)
    late = datetime(2025, 3, 3, 23, 58, tzinfo=UTC)
    _feed(b, [5.0, 5.0], start=late)
    assert b.spent_today == pytest.approx(10.0)
    nxt = b.observe(0.0, late + 2 * M, late + 3 * M)  # 00:00-00:01 next day
    assert b.spent_today == 0.0
    assert not nxt[0].eligible  # the burn rate still projects, but nothing is spent yet

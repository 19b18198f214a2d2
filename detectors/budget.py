"""Budget burn: spend per tenant against configured hourly and daily budgets.

What it catches: a tenant that is spending faster than its budget allows — either the last
hour already cost more than the hourly budget, or the current burn rate projects today's
spend past the daily budget (an early warning hours before the money is gone).

How: per tenant series, the cost of each window is summed into the current UTC day and into
a trailing one-hour ring; the burn rate is an exponentially weighted rate (USD per second,
``rate_halflife_s``) so one expensive window does not project a disaster on its own.

* ``cost_usd_hourly``: score = trailing-hour spend / hourly budget; fires at 1.0.
* ``cost_usd_day_projected``: score = (spent today + rate * seconds left today) / daily
  budget; fires at 1.0 once at least ``min_spent_fraction`` of the budget is spent (the
  first minutes of a day project nothing useful).

Hysteresis and ``for: N`` come from the alert policy (default: 3 windows to fire, resolves
below 0.9).  Budgets are configuration: a tenant without one is never evaluated.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

HOURLY: Final = "cost_usd_hourly"
PROJECTED: Final = "cost_usd_day_projected"
RESOLVE_RATIO: Final = 0.9

BUDGET_LABELS: Final = {HOURLY: "spend in the trailing hour", PROJECTED: "projected spend today"}


class BudgetReading(NamedTuple):
    """One budget metric after a window."""

    metric: str
    observed: float
    budget: float
    score: float
    eligible: bool


@dataclass
class BudgetBurn:
    """Spend tracker of one tenant (plain data, picklable)."""

    budget_per_day: float | None
    budget_per_hour: float | None
    min_spent_fraction: float = 0.1
    rate_halflife_s: float = 3600.0
    _day: str = ""
    _spent_today: float = 0.0
    _rate: float | None = None
    _last_end: float | None = None
    _hour: deque[tuple[float, float]] = field(default_factory=deque)

    @property
    def spent_today(self) -> float:
        """USD spent since the start of the current UTC day."""
        return self._spent_today

    def observe(
        self, cost: float, window_start: datetime, window_end: datetime
    ) -> list[BudgetReading]:
        """Add one window's cost and return the readings of the configured budgets."""
        self._roll_day(window_start)
        self._spent_today += cost
        end = window_end.timestamp()
        self._hour.append((end, cost))
        while self._hour and self._hour[0][0] <= end - 3600.0:
            self._hour.popleft()
        self._update_rate(cost, window_start, window_end)
        return self.readings(window_end)

    def quiet(self, window_start: datetime, window_end: datetime) -> list[BudgetReading]:
        """Record a window without traffic (zero cost)."""
        return self.observe(0.0, window_start, window_end)

    def readings(self, now: datetime) -> list[BudgetReading]:
        """Return the current readings (one per configured budget)."""
        out: list[BudgetReading] = []
        if self.budget_per_hour:
            spent = sum(c for _, c in self._hour)
            out.append(
                BudgetReading(
                    HOURLY, spent, self.budget_per_hour, spent / self.budget_per_hour, True
                )
            )
        if self.budget_per_day:
            projected = self.projected_today(now)
            eligible = self._spent_today >= self.min_spent_fraction * self.budget_per_day
            out.append(
                BudgetReading(
                    PROJECTED,
                    projected,
                    self.budget_per_day,
                    projected / self.budget_per_day,
                    eligible,
                )
            )
        return out

    def projected_today(self, now: datetime) -> float:
        """Spent today plus the current burn rate until midnight UTC."""
        midnight = (now.astimezone(UTC) + timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        left = max(0.0, (midnight - now).total_seconds())
        if now.astimezone(UTC).time() == datetime.min.time():
            left = 0.0  # a window ending at midnight closes the day
        return self._spent_today + (self._rate or 0.0) * left

    def _roll_day(self, window_start: datetime) -> None:
        day = window_start.astimezone(UTC).date().isoformat()
        if day != self._day:
            self._day, self._spent_today = day, 0.0

    def _update_rate(self, cost: float, window_start: datetime, window_end: datetime) -> None:
        seconds = max(1.0, (window_end - window_start).total_seconds())
        inst = cost / seconds
        if self._rate is None:
            self._rate = inst
        else:
            w = 1.0 - 0.5 ** (seconds / self.rate_halflife_s)
            self._rate += w * (inst - self._rate)
        self._last_end = window_end.timestamp()

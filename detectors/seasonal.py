"""Time-of-day profile: removes the daily rhythm before a series is judged.

Why: call rates, spend and even token percentiles follow the working day.  A baseline of the
last few hours calls every morning ramp an anomaly and hides a midday drop to night-time
levels.  Subtracting a learned per-slot offset (24 hourly slots by default) judges each
window against "this hour on a normal day".

The profile learns only from windows the scorer accepted as normal, forgets with a memory
measured in days (so it adapts to 1-minute and 5-minute windows alike), and reports no
offset for a slot until it has seen ``min_days`` worth of observations, so the first day
behaves exactly like the plain scorer.
"""

from __future__ import annotations

import math
from array import array


class SeasonalProfile:
    """Per-slot level offsets relative to the overall level.

    Args:
        period_s: length of the cycle in seconds (86400 = daily).
        slots: number of equal slots per period (24 = hourly).
        memory_days: exponential memory of each slot, in periods.
        min_days: periods of observations a slot needs before its offset is used.
    """

    __slots__ = (
        "_count",
        "_err",
        "_level",
        "_slot",
        "_spacing",
        "gate",
        "memory_days",
        "min_days",
        "period_s",
        "slots",
    )

    def __init__(
        self,
        period_s: float = 86400.0,
        slots: int = 24,
        memory_days: float = 1.7,
        min_days: float = 1.0,
        gate: float = 0.8,
    ) -> None:
        if period_s <= 0 or slots < 1 or memory_days <= 0 or min_days < 0:
            msg = (
                "SeasonalProfile needs period_s > 0, slots >= 1, memory_days > 0, min_days >= 0; "
                f"got {period_s=}, {slots=}, {memory_days=}, {min_days=}"
            )
            raise ValueError(msg)
        self.period_s = period_s
        self.slots = slots
        self.memory_days = memory_days
        self.min_days = min_days
        self.gate = gate
        self._err = [0.0, 0.0, 0.0]  # EW absolute errors (flat level, seasonal level), count
        self._slot = array("d", bytes(8 * slots))
        self._count = array("d", bytes(8 * slots))
        self._level: float | None = None
        self._spacing: tuple[float | None, float] = (None, math.inf)  # (last t, min spacing)

    def __getstate__(self) -> tuple[object, ...]:
        return (
            self.period_s,
            self.slots,
            self.memory_days,
            self.min_days,
            self.gate,
            self._err,
            self._slot.tobytes(),
            self._count.tobytes(),
            self._level,
            self._spacing,
        )

    def __setstate__(self, state: tuple[object, ...]) -> None:
        (
            self.period_s,
            self.slots,
            self.memory_days,
            self.min_days,
            self.gate,
            self._err,
            slot,
            count,
            self._level,
            self._spacing,
        ) = state  # type: ignore[assignment]
        self._slot = array("d")
        self._slot.frombytes(slot)  # type: ignore[arg-type]
        self._count = array("d")
        self._count.frombytes(count)  # type: ignore[arg-type]

    def _index(self, t: float) -> int:
        return int((t % self.period_s) / self.period_s * self.slots) % self.slots

    def _obs_per_slot_period(self) -> float:
        spacing = self._spacing[1]
        if not math.isfinite(spacing):
            return 1.0
        return max(1.0, self.period_s / self.slots / spacing)

    def ready(self, t: float | None) -> bool:
        """Return True once ``t``'s slot has ``min_days`` of observations (a full cycle seen)."""
        if t is None or self._level is None:
            return False
        need = max(1.0, self.min_days * self._obs_per_slot_period())
        return self._count[self._index(t)] >= need

    def offset(self, t: float | None) -> float:
        """Return the learned offset of ``t``'s slot (0 until the slot is trusted)."""
        if t is None or self._level is None:
            return 0.0
        if not self.ready(t):
            return 0.0
        i = self._index(t)
        if self._err[1] >= self.gate * self._err[0]:
            return 0.0  # the profile does not predict better than a flat level: no rhythm
        return self._slot[i] - self._level

    def learn(self, t: float | None, x: float) -> None:
        """Learn a normal observation ``x`` at epoch seconds ``t`` (ignored when ``t`` is None)."""
        if t is None:
            return
        last, spacing = self._spacing
        if last is not None and t > last:
            spacing = min(spacing, t - last)
        self._spacing = (t, spacing)
        alpha = 1.0 / (self.memory_days * self._obs_per_slot_period())
        i = self._index(t)
        # Exponential memories start as plain running means, so the first value has no
        # lasting weight (a biased start would make the flat level look worse than it is).
        if self._level is not None and self._count[i] > 0:
            self._err[2] += 1.0
            a = max(alpha / self.slots, 1.0 / self._err[2])
            self._err[0] += a * (abs(x - self._level) - self._err[0])
            self._err[1] += a * (abs(x - self._slot[i]) - self._err[1])
        total = sum(self._count) + 1.0
        level = self._level if self._level is not None else x
        self._level = level + max(alpha / self.slots, 1.0 / total) * (x - level)
        a_slot = max(alpha, 1.0 / (self._count[i] + 1.0))
        self._slot[i] += a_slot * (x - self._slot[i])
        self._count[i] += 1.0

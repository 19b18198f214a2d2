r"""The alert lifecycle: when a score becomes a firing alert and when it is over.

Why separate from the scorers: "is this window unusual?" (a scorer) and "should a human be
paged, and when is it over?" (a policy) change for different reasons.  The policy wraps any
scorer's output (compose, don't subclass) and is the same for every detector family.

States, per watched signal::

    ok --trigger--> pending --persist x fire_after--> firing --clear x resolve_after--> cooldown --> ok
                      \\--not persist--> ok                \\--persist--> firing (reset clear count)

* ``trigger``: the strict condition that opens an episode (score >= threshold).
* ``persist``: the relaxed condition that keeps it open (hysteresis: score >= the lower
  resolve threshold).  With ``fire_after = N`` the signal must persist for N consecutive
  windows before the alert fires; with ``strict_pending`` it must *trigger* in each of them
  — Prometheus ``for: N`` semantics, used by the threshold rules.
* A window with no data counts as *clear* (no evidence of the symptom) and breaks a pending
  streak.
* After a resolve, the same alert cannot fire again for ``cooldown`` windows (no flapping).
* Warm-up lives in the scorers: an untrusted baseline never triggers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

State = Literal["ok", "pending", "firing", "cooldown"]
Transition = Literal["fire", "resolve"]


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """Lifecycle parameters (all counted in windows)."""

    fire_after: int = 1
    resolve_after: int = 3
    cooldown: int = 10
    strict_pending: bool = False

    def __post_init__(self) -> None:
        if self.fire_after < 1 or self.resolve_after < 1 or self.cooldown < 0:
            msg = f"PolicyParams: fire_after, resolve_after >= 1 and cooldown >= 0 ({self})"
            raise ValueError(msg)


class AlertPolicy:
    """Lifecycle state machine of one watched signal (plain data, picklable).

    >>> from datetime import UTC, datetime, timedelta
    >>> pol = AlertPolicy(PolicyParams(fire_after=2, resolve_after=1, cooldown=0))
    >>> t0 = datetime(2025, 1, 1, tzinfo=UTC)
    >>> w = [(t0 + timedelta(minutes=i), t0 + timedelta(minutes=i + 1)) for i in range(4)]
    >>> [pol.step(*w[0], True, True), pol.step(*w[1], True, True), pol.step(*w[2], False, False)]
    [None, 'fire', 'resolve']
    >>> pol.started_at == w[0][0]
    True
    """

    __slots__ = ("_clear", "_cooldown_left", "_streak", "ended_at", "params", "started_at", "state")

    def __init__(self, params: PolicyParams | None = None) -> None:
        self.params = params or PolicyParams()
        self.state: State = "ok"
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self._streak = 0
        self._clear = 0
        self._cooldown_left = 0

    @property
    def firing(self) -> bool:
        """True while an alert is open."""
        return self.state == "firing"

    @property
    def busy(self) -> bool:
        """True when the policy holds state that must not be dropped (pending/firing/cooldown)."""
        return self.state != "ok"

    def step(
        self, window_start: datetime, window_end: datetime, trigger: bool, persist: bool
    ) -> Transition | None:
        """Advance one window with data; return the transition it caused, if any."""
        if self.state == "cooldown":
            if self._cooldown_left > 0:
                self._cooldown_left -= 1
                return None
            self.state = "ok"
        if self.state == "ok":
            if not trigger:
                return None
            self.started_at, self.ended_at, self._streak = window_start, window_end, 1
            if self._streak >= self.params.fire_after:
                return self._fire()
            self.state = "pending"
            return None
        if self.state == "pending":
            if not (trigger if self.params.strict_pending else persist):
                self.state, self._streak = "ok", 0
                return None
            self._streak += 1
            self.ended_at = window_end
            return self._fire() if self._streak >= self.params.fire_after else None
        return self._while_firing(window_end, persist)

    def quiet(self, window_start: datetime, window_end: datetime) -> Transition | None:
        """Advance one window without data (no traffic): clear evidence."""
        return self.step(window_start, window_end, trigger=False, persist=False)

    def _fire(self) -> Transition:
        self.state, self._clear = "firing", 0
        return "fire"

    def _while_firing(self, window_end: datetime, persist: bool) -> Transition | None:
        if persist:
            self._clear = 0
            self.ended_at = window_end
            return None
        self._clear += 1
        if self._clear < self.params.resolve_after:
            return None
        self.state, self._cooldown_left = "cooldown", self.params.cooldown
        if self._cooldown_left == 0:
            self.state = "ok"
        return "resolve"

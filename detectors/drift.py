"""Slow drift: a signal creeping up for hours (prompt bloat, context fill growing).

What it catches: a sustained, gradual rise that never makes any single window look like a
spike — input tokens per call growing 20 % over an afternoon as retrieved context or
conversation history piles up.  The level-shift scorer misses it because its rolling
baseline follows the creep.

How: a one-sided **CUSUM** (Page's test; River's ``drift.PageHinkley`` is the same idea) on
``log(x)`` standardized against a *reference* level that moves only very slowly
(``reference_halflife`` windows) and not at all while the drift alarm is on.  Working on logs
makes the test about relative change, so one parameter set fits 200-token and 20,000-token
prompts.  Each window adds ``min((y - reference) / sigma, max_step) - allowance`` to the
statistic ``S`` (floored at 0); ``sigma`` is a robust estimate of the window-to-window noise
(EW mean absolute successive difference), so noisy low-traffic series need a larger drift,
and the step cap means a few wild windows cannot fake a drift (that is the level-shift
detector's job).

Score: for Gaussian increments the CUSUM's stationary tail is ``P(S > s) ~ exp(-2 k s)``
with ``k = allowance``; we report ``p = exp(-2 k S)`` through the shared
``s / (s + 10)`` map, so the score reads like the other statistical families.
After ``adapt_after`` windows above the alarm level the new level becomes the reference
(a drift is news once) and ``S`` restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

from spanpulse.detectors.base import p_to_score

_LOG_FLOOR: Final = 1e-9
_MAD_TO_SD: Final = 0.886  # E|X1 - X2| = 2 sd / sqrt(pi) for normal X; sd = 0.886 * E|dX|


@dataclass(frozen=True, slots=True)
class DriftParams:
    """Hyperparameters of :class:`CusumDrift`."""

    warmup: int = 60
    allowance: float = 0.5
    reference_halflife: float = 720.0
    noise_halflife: float = 120.0
    min_sigma: float = 0.01
    max_step: float = 3.0
    level_halflife: float = 10.0
    alarm_p: float = 1e-4
    adapt_after: int = 60
    direction_up: bool = True

    def __post_init__(self) -> None:
        if self.warmup < 2 or self.allowance <= 0 or self.min_sigma <= 0:
            msg = f"DriftParams: warmup >= 2, allowance > 0, min_sigma > 0 ({self})"
            raise ValueError(msg)


class DriftJudgement(NamedTuple):
    """The CUSUM state after one (hypothetical) step."""

    p: float
    statistic: float
    reference: float | None  # in the caller's units (exp of the log reference)
    level: float | None  # recent level (EW over ``level_halflife`` windows), caller's units


class CusumDrift:
    """One-sided CUSUM on log values against a slow reference; ``x`` a positive float.

    >>> det = CusumDrift()
    >>> for i in range(200):
    ...     det.learn_one(1000.0 * (1.0 + 0.02 * ((i * 7) % 5 - 2)))
    >>> det.score_one(1000.0) < 0.1
    True
    >>> for i in range(120):
    ...     det.learn_one(1000.0 * (1.0 + 0.004 * i))   # +0.4 % per window
    >>> det.score_one(1500.0) > 0.3
    True
    """

    def __init__(self, params: DriftParams | None = None) -> None:
        self.params = params or DriftParams()
        self._n = 0
        self._ref = 0.0
        self._noise = 0.0
        self._last: float | None = None
        self._s = 0.0
        self._alarmed = 0
        self._recent: float | None = None  # EW of y, for the reported recent level

    @property
    def warm(self) -> bool:
        """True after ``warmup`` observations."""
        return self._n >= self.params.warmup

    def _sigma(self) -> float:
        return max(self.params.min_sigma, _MAD_TO_SD * self._noise)

    def _y(self, x: float) -> float:
        y = math.log(max(x, _LOG_FLOOR))
        return y if self.params.direction_up else -y

    def judge(self, x: float) -> DriftJudgement:
        """Return the CUSUM statistic ``x`` would produce (pure)."""
        if not self.warm:
            return DriftJudgement(1.0, 0.0, None, None)
        k = self.params.allowance
        y = self._y(x)
        step = min((y - self._ref) / self._sigma(), self.params.max_step) - k
        s = max(0.0, self._s + step)
        sign = 1.0 if self.params.direction_up else -1.0
        recent = self._next_recent(y)
        return DriftJudgement(
            min(1.0, math.exp(-2.0 * k * s)),
            s,
            math.exp(sign * self._ref),
            math.exp(sign * recent),
        )

    def _next_recent(self, y: float) -> float:
        if self._recent is None:
            return y
        weight = 1.0 - math.pow(0.5, 1.0 / self.params.level_halflife)
        return self._recent + weight * (y - self._recent)

    def deviation_one(self, x: float) -> float:
        """Return :meth:`score_one` (the CUSUM itself carries the persistence)."""
        return self.score_one(x)

    def score_one(self, x: float) -> float:
        """Return the drift score in ``[0, 1)``."""
        return p_to_score(self.judge(x).p)

    def learn_one(self, x: float) -> None:
        """Advance the CUSUM; move the reference only while nothing accumulates."""
        p = self.params
        y = self._y(x)
        if self._last is not None:
            a = max(1.0 - 0.5 ** (1.0 / p.noise_halflife), 1.0 / max(self._n, 1))
            self._noise += a * (abs(y - self._last) - self._noise)
        self._last = y
        self._recent = self._next_recent(y)
        self._n += 1
        if self._n <= p.warmup:
            self._ref += (y - self._ref) / self._n  # plain mean of the warm-up
            return
        j = self.judge(x)
        self._s = j.statistic
        if j.p < p.alarm_p:
            self._alarmed += 1
            if self._alarmed >= p.adapt_after:  # a confirmed new level: re-anchor on it
                self._ref, self._s, self._alarmed = self._recent or y, 0.0, 0
            return
        self._alarmed = 0
        # Every calm window moves the reference a little (conditioning on S == 0 would bias
        # it low); its half-life is long enough that an hours-long creep is not absorbed.
        self._ref += (1.0 - math.pow(0.5, 1.0 / p.reference_halflife)) * (y - self._ref)

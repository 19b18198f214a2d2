"""Proportion shifts: rates with counts behind them (length-stop share, refusals, errors…).

What it catches: a window where a rate (``successes / trials``) is significantly and
materially above the series' baseline rate — 40 refusals out of 400 calls against a 1 %
baseline — while ignoring what small counts produce by chance (1 refusal out of 3 calls).

How:

* The baseline is an exponentially weighted sum of successes and trials over accepted
  windows (``halflife`` windows); windows judged anomalous stay out of it, until
  ``adapt_after`` consecutive anomalous windows replace it with the new rate.
* The test is the **beta-binomial upper tail** ``P(K >= k | n, baseline)``: the binomial
  tail with the baseline rate's own uncertainty folded in.  The baseline's effective size is
  capped at ``max_baseline_trials``, which keeps the test humble on huge tenants: a rate
  that drifts by a hair on a million calls is not reported as a 1e-300 event.
* A window must also be **material**: at least ``min_successes`` events, a rate at least
  ``min_ratio`` times the baseline and ``min_delta`` above it (absolute).  Otherwise its
  score is 0, however small the p-value.

Score range: ``[0, 1)``, ``s / (s + 10)`` with ``s = -log10(p)``; 0 when not material or
while warming up (fewer than ``warmup_trials`` baseline trials).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

from spanpulse.detectors.base import MIN_P, p_to_score

_MAX_TERMS: Final = 100_000
_REL_TOL: Final = 1e-12


@dataclass(frozen=True, slots=True)
class ProportionParams:
    """Hyperparameters of :class:`ProportionShift`."""

    halflife: float = 240.0
    warmup_trials: int = 200
    warmup_windows: int = 10
    max_baseline_trials: float = 5000.0
    min_successes: int = 5
    min_ratio: float = 2.0
    min_delta: float = 0.01
    alarm_p: float = 1e-4
    adapt_after: int = 120

    def __post_init__(self) -> None:
        if self.halflife <= 0 or self.max_baseline_trials <= 0 or self.min_ratio < 1.0:
            msg = f"ProportionParams: halflife, max_baseline_trials > 0, min_ratio >= 1 ({self})"
            raise ValueError(msg)


class ProportionJudgement(NamedTuple):
    """The test of one window."""

    p: float
    material: bool
    rate: float | None
    baseline: float | None


def betabinom_sf(k: int, n: int, a: float, b: float) -> float:
    """Return ``P(K >= k)`` for ``K ~ BetaBinomial(n, a, b)``.

    Sums the pmf from ``k`` upward with the term-ratio recurrence and stops once the terms
    are negligible, so the cost is the width of the tail, not ``n``.

    >>> round(betabinom_sf(1, 1, 1.0, 1.0), 6)   # uniform rate, one trial: P(success) = 1/2
    0.5
    >>> betabinom_sf(0, 10, 2.0, 5.0)
    1.0
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_pmf = (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + math.lgamma(k + a)
        + math.lgamma(n - k + b)
        - math.lgamma(n + a + b)
        + math.lgamma(a + b)
        - math.lgamma(a)
        - math.lgamma(b)
    )
    term = math.exp(log_pmf)
    total = term
    j = k
    while j < n and j - k < _MAX_TERMS:
        term *= (n - j) / (j + 1) * (j + a) / (n - j - 1 + b)
        total += term
        j += 1
        if term <= total * _REL_TOL:
            break
    return min(1.0, max(total, MIN_P))


class ProportionShift:
    """Online upward-shift scorer for a rate; ``x = (successes, trials)``.

    >>> det = ProportionShift()
    >>> for _ in range(50):
    ...     det.learn_one((4, 400))          # 1 % baseline
    >>> det.score_one((1, 3)) == 0.0        # 1 of 3: not material
    True
    >>> det.score_one((40, 400)) > 0.5      # 10 % of 400: an incident
    True
    """

    def __init__(self, params: ProportionParams | None = None) -> None:
        self.params = params or ProportionParams()
        self._decay = 0.5 ** (1.0 / self.params.halflife)
        self._successes = 0.0
        self._trials = 0.0
        self._windows = 0
        self._pending: list[tuple[int, int]] = []

    @property
    def warm(self) -> bool:
        """True once the baseline holds enough trials and windows to be trusted."""
        p = self.params
        return self._trials >= p.warmup_trials and self._windows >= p.warmup_windows

    @property
    def baseline_rate(self) -> float | None:
        """Current baseline rate (None before any trial)."""
        if self._trials <= 0:
            return None
        return self._successes / self._trials

    def judge(self, x: tuple[int, int]) -> ProportionJudgement:
        """Test window ``x`` against the baseline (pure)."""
        k, n = x
        base = self.baseline_rate
        if n <= 0:
            return ProportionJudgement(1.0, False, None, base)
        rate = k / n
        if not self.warm or base is None:
            return ProportionJudgement(1.0, False, rate, base)
        p = self.params
        material = (
            k >= p.min_successes and rate >= base * p.min_ratio and rate - base >= p.min_delta
        )
        n_eff = min(self._trials, p.max_baseline_trials)
        a = base * n_eff + 0.5
        b = (1.0 - base) * n_eff + 0.5
        return ProportionJudgement(betabinom_sf(k, n, a, b), material, rate, base)

    def deviation_one(self, x: tuple[int, int]) -> float:
        """Return :meth:`score_one` (this scorer has no refractory period)."""
        return self.score_one(x)

    def score_one(self, x: tuple[int, int]) -> float:
        """Return the score in ``[0, 1)``; 0 when the window is not material."""
        j = self.judge(x)
        return p_to_score(j.p) if j.material else 0.0

    def is_excursion(self, x: tuple[int, int]) -> bool:
        """Return True when ``x`` is material and significant at ``alarm_p`` (kept out)."""
        j = self.judge(x)
        return j.material and j.p < self.params.alarm_p

    def learn_one(self, x: tuple[int, int], *, excursion: bool | None = None) -> None:
        """Fold ``x`` into the baseline unless it is a material, significant excursion.

        ``excursion`` lets a caller that judged more than this window (e.g. pooled with the
        previous ones) decide; by default the window is judged alone.
        """
        k, n = x
        if n <= 0:
            return
        if excursion if excursion is not None else self.is_excursion(x):
            self._pending.append((k, n))
            if len(self._pending) >= self.params.adapt_after:  # the new normal: start over
                self._successes = self._trials = 0.0
                for pk, pn in self._pending:
                    self._accept(pk, pn)
                self._pending.clear()
            return
        self._pending.clear()
        self._accept(k, n)

    def _accept(self, k: int, n: int) -> None:
        self._successes = self._successes * self._decay + k
        self._trials = self._trials * self._decay + n
        self._windows += 1

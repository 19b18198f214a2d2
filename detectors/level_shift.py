"""Level shifts and spikes in heavy-tailed continuous signals (token p95, cost, latency, rate).

What it catches: a window whose value is far from the recent normal level — a spike, the
first window of a step change, a burst of unusual windows — in signals that are skewed,
bursty and sometimes sparse.

How (each step is one reason the defaults need no tuning):

1. **Seasonal profile** (:class:`~spanpulse.detectors.seasonal.SeasonalProfile`): when the
   caller passes the window time, the learned time-of-day offset is removed first.
2. **Robust baseline**: median and IQR-scale of the last ``window`` *accepted* values; one
   outlier moves neither, and anomalous windows are not accepted (no self-poisoning).
3. **Self-calibrated p-value** (:class:`~spanpulse.detectors.calibration.TailCalibrator`):
   the robust z-score is judged against this series' own history of z-scores with a Pareto
   tail, so a bursty series needs a bigger excursion than a smooth one for the same score.
4. **Smoothed surprise**: the mean surprise of the last ``smoothing`` windows is compared with
   its own running distribution (the HTM "anomaly likelihood" idea), which catches a shift
   made of several moderately unusual windows that no single window reveals.
5. **Range test**: a value beyond everything ever accepted by more than ``range_tolerance``
   of that range gets ``p <= range_p`` (Numenta's "spatial anomaly": new territory).
6. **Refractory period**: after an alarm (``p < alarm_p``) the score stays 0 for
   ``refractory`` observations unless the window *alone* is at least twice as strong evidence
   (its point p below the alarm's p squared; the smoothed surprise naturally keeps rising
   during an episode and does not count) — the score means *new* evidence, so one incident
   is one high score, not fifty, while a much bigger one right after a blip still shows.
7. **Adaptation**: after ``adapt_after`` consecutive anomalous windows the baseline is
   replaced by them (a permanent step is news once, not forever).

Score range: ``[0, 1)``, ``s / (s + 10)`` with ``s = -log10(p)`` (see
:func:`~spanpulse.detectors.base.surprise_to_score`); 0.23 is p = 1e-3, 0.29 is p = 1e-4.
This is the exact class and defaults scored on NAB by ``bench/nab_eval.py``; the alert
engine adds its own guards on top (materiality, history, a confirming window).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from spanpulse.detectors.base import surprise, surprise_to_score
from spanpulse.detectors.calibration import EwStats, TailCalibrator
from spanpulse.detectors.rolling import RollingQuantiles
from spanpulse.detectors.seasonal import SeasonalProfile

Direction = Literal["up", "down", "both"]

#: Cap on one window's surprise inside the smoothed statistic (one absurd window must not
#: keep the average high for ``smoothing`` windows).
_SURPRISE_CAP: Final = 10.0
_MIN_SMOOTH_SD: Final = 1e-3


@dataclass(frozen=True, slots=True)
class LevelShiftParams:
    """Hyperparameters of :class:`LevelShift` (defaults are the NAB-scored ones)."""

    window: int = 300
    warmup: int = 30
    calibration_warmup: int = 50
    tail_quantile: float = 0.99
    smoothing: int = 20
    smoothing_halflife: float = 5000.0
    refractory: int = 100
    alarm_p: float = 1e-3
    adapt_after: int = 30
    direction: Direction = "both"
    season_period_s: float = 86400.0
    season_slots: int = 48
    season_memory_days: float = 1.7
    season_min_days: float = 1.0
    season_gate: float = 0.8
    range_tolerance: float = 0.5
    range_p: float = 1e-6

    def __post_init__(self) -> None:
        if self.window < 5 or self.warmup < 1 or self.smoothing < 1 or self.adapt_after < 1:
            msg = f"LevelShiftParams: window >= 5, warmup/smoothing/adapt_after >= 1 ({self})"
            raise ValueError(msg)
        if not 0.0 < self.alarm_p < 1.0:
            msg = f"LevelShiftParams.alarm_p must be in (0, 1), got {self.alarm_p}"
            raise ValueError(msg)
        if self.direction not in ("up", "down", "both"):
            msg = f"LevelShiftParams.direction must be up, down or both, got {self.direction!r}"
            raise ValueError(msg)


class Judgement(NamedTuple):
    """Everything one observation is judged by (computed without changing state)."""

    p: float  # combined p-value (1.0 while warming up)
    p_point: float  # p-value of this window's deviation alone (no smoothing, no range test)
    z: float  # signed robust z-score vs the baseline (0.0 while warming up)
    expected: float | None  # baseline level in the caller's units (seasonal offset added back)
    point_surprise: float  # capped -log10 p of the single-window deviation
    smoothed: float  # mean point surprise of the last `smoothing` windows incl. this one


class LevelShift:
    """Online level-shift / spike scorer for one continuous series.

    ``score_one(x, t)`` / ``learn_one(x, t)``: ``x`` the value, ``t`` optional epoch seconds
    of the window (enables the time-of-day profile).  ``deviation_one`` is the same score
    without the refractory suppression; the alert policy uses it to decide when an open
    alert is over.

    >>> det = LevelShift()
    >>> for i in range(400):
    ...     x = 100.0 + (i * 37 % 11)
    ...     det.learn_one(x)
    >>> det.score_one(105.0) < 0.2, det.score_one(400.0) > 0.3
    (True, True)
    """

    def __init__(self, params: LevelShiftParams | None = None) -> None:
        self.params = p = params or LevelShiftParams()
        self._baseline = RollingQuantiles(p.window)
        self._point = TailCalibrator(p.tail_quantile, p.calibration_warmup)
        self._smooth_stats = EwStats(p.smoothing_halflife)
        self._recent: deque[float] = deque(maxlen=p.smoothing)
        self._season = SeasonalProfile(
            p.season_period_s,
            p.season_slots,
            p.season_memory_days,
            p.season_min_days,
            p.season_gate,
        )
        self._pending: list[tuple[float, float | None]] = []
        self._since_alarm = p.refractory  # no alarm yet: not refractory
        self._alarm_p = 1.0  # p-value of the alarm that started the refractory period
        self._n = 0
        self._range: tuple[float, float] | None = None  # (min, max) of accepted raw values

    # ------------------------------------------------------------------ public contract
    @property
    def warm(self) -> bool:
        """True once the baseline and calibration are trusted (scores can be non-zero)."""
        return (
            len(self._baseline) >= self.params.warmup and self._n >= self.params.calibration_warmup
        )

    def season_ready(self, t: float | None) -> bool:
        """Return True once the time-of-day profile has seen a full cycle for ``t``'s slot."""
        return self._season.ready(t)

    @property
    def observations(self) -> int:
        """Number of observations judged after the baseline warm-up."""
        return self._n

    def judge(self, x: float, t: float | None = None) -> Judgement:
        """Return the full judgement of ``x`` (pure: no state change)."""
        p = self.params
        if len(self._baseline) < p.warmup:
            return Judgement(1.0, 1.0, 0.0, None, 0.0, 0.0)
        offset = self._season.offset(t)
        y = x - offset
        med = self._baseline.median()
        z = (y - med) / self._baseline.robust_scale(med)
        d = self._directional(z)
        p_point = self._point.p_value(d) if self._n >= p.calibration_warmup else 1.0
        s_point = min(surprise(p_point), _SURPRISE_CAP)
        recent = list(self._recent)[-(p.smoothing - 1) :] if p.smoothing > 1 else []
        smoothed = (sum(recent) + s_point) / (len(recent) + 1)
        p_smooth = 1.0
        if self._smooth_stats.n >= p.calibration_warmup:
            p_smooth = self._smooth_stats.upper_p(smoothed, _MIN_SMOOTH_SD)
        p_all = min(1.0, 2.0 * min(p_point, p_smooth))
        if self._n >= p.calibration_warmup and self._outside_range(x):
            p_all = min(p_all, p.range_p)
        return Judgement(p_all, p_point, z, med + offset, s_point, smoothed)

    def deviation_one(self, x: float, t: float | None = None) -> float:
        """Score of ``x`` ignoring the refractory period (for resolving open alerts)."""
        return surprise_to_score(surprise(self.judge(x, t).p))

    def score_one(self, x: float, t: float | None = None) -> float:
        """Return the anomaly score of ``x`` in ``[0, 1)``; 0 while refractory or warming up."""
        j = self.judge(x, t)
        if self._since_alarm < self.params.refractory and j.p_point >= self._alarm_p**2:
            return 0.0  # nothing new: the open episode already reported this much evidence
        return surprise_to_score(surprise(j.p))

    def learn_one(self, x: float, t: float | None = None) -> None:
        """Learn ``x``: calibration always, the baseline only when ``x`` looked normal."""
        p = self.params
        j = self.judge(x, t)
        if len(self._baseline) < p.warmup:
            self._accept(x, t)
            return
        if self._n >= p.calibration_warmup:  # surprises are calibrated: smooth them
            self._smooth_stats.add(j.smoothed)
            self._recent.append(j.point_surprise)
        self._n += 1
        self._point.add(self._directional(j.z))
        self._since_alarm += 1
        if j.p >= p.alarm_p:
            self._pending.clear()
            self._accept(x, t)
            return
        if self._since_alarm >= p.refractory or j.p_point < self._alarm_p**2:
            self._since_alarm, self._alarm_p = 0, j.p
        self._pending.append((x, t))
        if len(self._pending) >= p.adapt_after:  # a persistent new level: the new normal
            self._baseline.clear()
            for value, ts in self._pending:
                self._accept(value, ts)
            self._pending.clear()

    # ------------------------------------------------------------------ internals
    def _directional(self, z: float) -> float:
        direction = self.params.direction
        if direction == "up":
            return max(z, 0.0)
        if direction == "down":
            return max(-z, 0.0)
        return abs(z)

    def _outside_range(self, x: float) -> bool:
        """Return True when ``x`` lies beyond every accepted value by more than the tolerance."""
        if self._range is None:
            return False
        lo, hi = self._range
        margin = self.params.range_tolerance * (hi - lo)
        if margin <= 0.0:
            return False
        direction = self.params.direction
        above = x > hi + margin and direction != "down"
        below = x < lo - margin and direction != "up"
        return above or below

    def _accept(self, x: float, t: float | None) -> None:
        self._baseline.add(x - self._season.offset(t))
        self._season.learn(t, x)
        self._range = (
            (x, x) if self._range is None else (min(self._range[0], x), max(self._range[1], x))
        )

"""One watched signal of one series: a scorer plus what "trigger" and "persist" mean for it.

Why adapters: the four families score differently (a p-value, a CUSUM, a static bound), but
the alert policy needs the same three facts from each window — the score, whether it opens
an episode (*trigger*) and whether it keeps one open (*persist*, the hysteresis bound).  Each
watch turns its scorer's judgement into those facts, and learns afterwards (score first,
then learn).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple, Protocol

from spanpulse.detectors.base import p_to_score
from spanpulse.detectors.config import ThresholdRule
from spanpulse.detectors.drift import CusumDrift, DriftParams
from spanpulse.detectors.level_shift import Direction, LevelShift, LevelShiftParams
from spanpulse.detectors.proportion import ProportionParams, ProportionShift
from spanpulse.detectors.signals import Signal, signal_value, wilson_interval

Family = Literal["threshold", "proportion_shift", "level_shift", "drift"]


class Assessment(NamedTuple):
    """What one window means for one watched signal."""

    score: float
    trigger: bool
    persist: bool
    observed: float | None
    expected: float | None
    threshold: float
    details: dict[str, float | int | str]


class Watch(Protocol):
    """Common shape of the family adapters."""

    @property
    def family(self) -> Family:
        """Detector family name used in alerts."""
        ...

    @property
    def metric(self) -> str:
        """Signal this watch reads."""
        ...

    def assess(self, signal: Signal, t: float | None, calls: int) -> Assessment:
        """Judge one window (pure)."""
        ...

    def learn(self, signal: Signal, t: float | None) -> None:
        """Learn the window after it was judged."""
        ...


@dataclass
class LevelShiftWatch:
    """Level shifts and spikes: significant, material and trusted; persists while unusual."""

    metric: str
    params: LevelShiftParams
    direction: Direction
    threshold: float
    resolve: float
    min_history: int = 0
    min_change: float = 0.0
    needs_season: bool = False
    min_calls: int = 0
    unseasoned_ratio: float = 0.0
    unseasoned_min_history: int | None = None
    jump_ratio: float = 0.0
    family: Family = "level_shift"
    scorer: LevelShift = field(init=False)

    def __post_init__(self) -> None:
        self.scorer = LevelShift(replace(self.params, direction=self.direction))

    def assess(self, signal: Signal, t: float | None, calls: int) -> Assessment:
        """Judge one window: significant (score), material (relative change) and trusted."""
        x = signal_value(signal)
        j = self.scorer.judge(x, t)
        # This window's own calibrated evidence (the point p-value), not score_one: the
        # refractory period (NAB's "report an episode once") is the policy's job here, and a
        # sub-threshold blip must not mask a real incident minutes later.  The smoothed
        # surprise and the range test are left out: their p-values are approximations that
        # are optimistic far out in the tail, where a product threshold lives; slow shifts are
        # the drift family's job and two confirming windows give the persistence instead.
        score = p_to_score(j.p_point)
        expected = max(0.0, j.expected) if j.expected is not None else None  # signals are >= 0
        material = _material(x, expected, self.min_change, self.direction)
        unusual = p_to_score(j.p_point) >= self.resolve or score >= self.threshold
        details: dict[str, float | int | str] = {"z": round(j.z, 3)}
        # Before a full daily cycle is learned, a volume signal is trusted only for a jump of
        # ``unseasoned_ratio`` x its baseline: no working-day ramp multiplies traffic that much
        # between two windows, a runaway agent loop does.
        huge = (
            self.unseasoned_ratio > 0.0
            and expected is not None
            and expected > 0.0
            and x >= self.unseasoned_ratio * expected
        )
        # A jump by ``jump_ratio`` x the baseline (latency p95 7 s -> 34 s) is an incident even
        # when the series' deviations are so heavy-tailed that its calibrated p-value stays
        # above the threshold: it triggers once the window is at least unusual, and persists
        # while the jump lasts (the calibration learns the incident's deviations and would
        # resolve it early).  Volume signals keep their own rules (the working day moves them
        # by more than that).
        jump = (
            self.jump_ratio > 0.0
            and not self.needs_season
            and expected is not None
            and _ratio(x, expected, self.direction) >= self.jump_ratio
        )
        # A huge volume jump, or a jump of another signal, is also trusted on a shorter
        # history: the job may have started minutes before a runaway loop or a latency spike,
        # and the windows it waited through would otherwise be learned into the baseline
        # before the full ``min_history`` is reached (hold-out 5: a 25-minute latency spike
        # starting 115 minutes after the job was never paged).
        history = self.min_history
        if ((self.needs_season and huge) or jump) and self.unseasoned_min_history is not None:
            history = min(history, self.unseasoned_min_history)
        trusted = (
            self.scorer.observations >= history
            and calls >= self.min_calls
            and (not self.needs_season or huge or self.scorer.season_ready(t))
        )
        return Assessment(
            score,
            trusted and material and (score >= self.threshold or (jump and unusual)),
            material and (unusual or jump),  # still 3x: not over, however used to it the tail is
            x,
            expected,
            self.threshold,
            details,
        )

    def learn(self, signal: Signal, t: float | None) -> None:
        """Learn one window."""
        self.scorer.learn_one(signal_value(signal), t)


@dataclass
class ProportionWatch:
    """Rates with counts, judged on this window and on the last ``pool_windows`` pooled.

    Pooling is what lets a mid-sized tenant's error rate going from 0.5 % to 5 % show: at
    30 calls a window no single window ever holds 5 errors, five windows do.  The better of
    the two looks is used, with a Bonferroni factor of 2 for looking twice.
    """

    metric: str
    params: ProportionParams
    threshold: float
    resolve: float
    pool_windows: int = 5
    family: Family = "proportion_shift"
    scorer: ProportionShift = field(init=False)
    recent: deque[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.scorer = ProportionShift(self.params)
        self.recent = deque(maxlen=max(0, self.pool_windows - 1))

    def assess(self, signal: Signal, t: float | None, calls: int) -> Assessment:
        """Judge one window (alone and pooled with the previous ones)."""
        k, n = signal if isinstance(signal, tuple) else (0, 0)
        looks = [(k, n, 1)]
        if self.recent:
            pooled_k = k + sum(r[0] for r in self.recent)
            pooled_n = n + sum(r[1] for r in self.recent)
            looks.append((pooled_k, pooled_n, len(self.recent) + 1))
        judged = [(self._look(kk, nn, len(looks)), kk, nn, w) for kk, nn, w in looks]
        (score, rate, baseline), kk, nn, windows = max(judged, key=lambda x: x[0][0])
        details: dict[str, float | int | str] = {"successes": kk, "trials": nn, "windows": windows}
        return Assessment(
            score, score >= self.threshold, score >= self.resolve, rate, baseline,
            self.threshold, details,
        )  # fmt: skip

    def _look(self, k: int, n: int, looks: int) -> tuple[float, float | None, float | None]:
        j = self.scorer.judge((k, n))
        score = p_to_score(min(1.0, j.p * looks)) if j.material else 0.0
        return score, j.rate, j.baseline

    def learn(self, signal: Signal, t: float | None) -> None:
        """Learn one window; it stays out of the baseline if it or its pool is an excursion."""
        if isinstance(signal, tuple):
            k, n = signal
            pooled = (k + sum(r[0] for r in self.recent), n + sum(r[1] for r in self.recent))
            excursion = self.scorer.is_excursion(signal) or (
                bool(self.recent) and self.scorer.is_excursion(pooled)
            )
            self.scorer.learn_one(signal, excursion=excursion)
            if self.recent.maxlen:
                self.recent.append(signal)


@dataclass
class DriftWatch:
    """Slow creep (CUSUM on log values)."""

    metric: str
    params: DriftParams
    threshold: float
    resolve: float
    min_change: float = 0.0
    min_calls: int = 0
    family: Family = "drift"
    scorer: CusumDrift = field(init=False)

    def __post_init__(self) -> None:
        self.scorer = CusumDrift(self.params)

    def assess(self, signal: Signal, t: float | None, calls: int) -> Assessment:
        """Judge one window."""
        x = signal_value(signal)
        j = self.scorer.judge(x)
        score = p_to_score(j.p)
        level = j.level if j.level is not None else x
        material = _material(level, j.reference, self.min_change, "up")
        details: dict[str, float | int | str] = {"cusum": round(j.statistic, 3)}
        return Assessment(
            score,
            calls >= self.min_calls and material and score >= self.threshold,
            material and score >= self.resolve,
            level,
            j.reference,
            self.threshold,
            details,
        )

    def learn(self, signal: Signal, t: float | None) -> None:
        """Learn one window."""
        self.scorer.learn_one(signal_value(signal))


@dataclass
class ThresholdWatch:
    """A static rule; ``score`` is the observed value and ``threshold`` the rule's bound."""

    rule: ThresholdRule
    family: Family = "threshold"

    @property
    def metric(self) -> str:
        """Alert metric: the rule's signal."""
        return self.rule.metric

    def assess(self, signal: Signal, t: float | None, calls: int) -> Assessment:
        """Judge one window (windows below ``min_calls`` neither trigger nor persist)."""
        enough = (signal[1] if isinstance(signal, tuple) else calls) >= self.rule.min_calls
        x = signal_value(signal)
        evidence = x
        if isinstance(signal, tuple):  # judge the rate by its confidence bound, not by luck
            lo, hi = wilson_interval(signal[0], signal[1], self.rule.confidence_z)
            evidence = lo if self.rule.op in (">", ">=") else hi
        trigger = enough and self.rule.breached(evidence)
        persist = enough and self.rule.breached(evidence, hysteresis=True)
        details: dict[str, float | int | str] = {"rule": self.rule.name}
        if isinstance(signal, tuple):
            details.update(successes=signal[0], trials=signal[1])
        return Assessment(x, trigger, persist, x, self.rule.value, self.rule.value, details)

    def learn(self, signal: Signal, t: float | None) -> None:
        """Rules have nothing to learn."""


def _ratio(x: float, expected: float, direction: Direction) -> float:
    """Return how many times ``x`` is ``expected`` in the watched direction (inf from zero)."""
    up = x / expected if expected > 0.0 else (math.inf if x > 0.0 else 1.0)
    down = expected / x if x > 0.0 else (math.inf if expected > 0.0 else 1.0)
    if direction == "up":
        return up
    if direction == "down":
        return down
    return max(up, down)


def _material(x: float, expected: float | None, min_change: float, direction: Direction) -> bool:
    """Return True when ``x`` differs from ``expected`` by at least ``min_change`` (relative).

    Statistical significance alone is not enough on a very steady series, where a 3 % wobble
    can be "20 sigma"; an alert must also be a change a human would care about.
    """
    if min_change <= 0.0:
        return True
    if expected is None:
        return False
    scale = abs(expected)
    if scale == 0.0:
        return x != 0.0
    change = (x - expected) / scale
    if direction == "up":
        return change >= min_change
    if direction == "down":
        return -change >= min_change
    return abs(change) >= min_change

"""Level-shift / spike scorer: warm-up, spikes, steps, adaptation, refractory, seasonality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spanpulse.detectors.base import p_to_score, score_to_p
from spanpulse.detectors.config import DEFAULT_LEVEL_SHIFT_THRESHOLD
from spanpulse.detectors.level_shift import LevelShift, LevelShiftParams
from spanpulse.detectors.seasonal import SeasonalProfile

PRODUCT_THRESHOLD = DEFAULT_LEVEL_SHIFT_THRESHOLD


def _feed(det: LevelShift, xs: list[float], t0: int = 0, step: float = 60.0) -> list[float]:
    out = []
    for i, x in enumerate(xs, start=t0):
        out.append(det.score_one(x, i * step))
        det.learn_one(x, i * step)
    return out


def _noise(n: int, seed: int = 1, level: float = 800.0, sigma: float = 0.1) -> list[float]:
    return np.exp(np.random.default_rng(seed).normal(math.log(level), sigma, n)).tolist()


def test_no_score_during_warm_up() -> None:
    det = LevelShift()
    scores = _feed(det, [100.0] * 20 + [10_000.0])
    assert scores == [0.0] * 21
    assert not det.warm


def test_spike_scores_above_the_product_threshold_and_noise_does_not() -> None:
    det = LevelShift()
    normal = _feed(det, _noise(600))
    assert max(normal[200:]) < PRODUCT_THRESHOLD
    assert det.score_one(800.0 * 6, 600 * 60.0) > PRODUCT_THRESHOLD


def test_step_fires_once_then_the_new_level_becomes_normal() -> None:
    p = LevelShiftParams()
    det = LevelShift(p)
    _feed(det, _noise(500))
    step = _feed(det, _noise(200, seed=2, level=2400.0), t0=500)
    assert step[0] > PRODUCT_THRESHOLD
    assert sum(s > PRODUCT_THRESHOLD for s in step) == 1  # new evidence once, not 200 times
    j = det.judge(2400.0, 700 * 60.0)
    assert j.expected is not None and abs(j.expected - 2400.0) / 2400.0 < 0.2
    assert j.p_point > 1e-3  # after adapt_after windows the new level is the baseline


def test_short_incident_does_not_poison_the_baseline() -> None:
    det = LevelShift()
    _feed(det, _noise(500))
    _feed(det, [5000.0] * 10, t0=500)  # shorter than adapt_after: kept out of the baseline
    j = det.judge(800.0, 510 * 60.0)
    assert j.expected is not None and abs(j.expected - 800.0) / 800.0 < 0.05
    assert det.deviation_one(5000.0, 511 * 60.0) > PRODUCT_THRESHOLD


def test_refractory_hides_repeats_but_not_stronger_evidence() -> None:
    det = LevelShift()
    _feed(det, _noise(500))
    first = _feed(det, [800.0 * 5], t0=500)[0]
    assert first > 0.3
    assert _feed(det, [800.0 * 5], t0=501)[0] == 0.0  # same evidence again: not news
    assert det.deviation_one(800.0 * 5, 502 * 60.0) > 0.3  # but the deviation is still there
    assert det.score_one(800.0 * 1e6, 502 * 60.0) > first  # much stronger evidence passes


def test_direction_up_ignores_drops() -> None:
    up = LevelShift(LevelShiftParams(direction="up"))
    both = LevelShift(LevelShiftParams(direction="both"))
    xs = _noise(500)
    _feed(up, xs)
    _feed(both, xs)
    assert up.score_one(50.0, 500 * 60.0) < 0.1
    assert both.score_one(50.0, 500 * 60.0) > PRODUCT_THRESHOLD


def test_value_far_outside_the_accepted_range_is_at_least_range_p() -> None:
    p = LevelShiftParams()
    det = LevelShift(p)
    _feed(det, _noise(400, sigma=0.02))
    j = det.judge(800.0 * 3, 400 * 60.0)
    assert j.p <= p.range_p


def test_seasonal_profile_learns_a_daily_rhythm_and_ignores_noise() -> None:
    rhythm, flat = SeasonalProfile(), SeasonalProfile()
    rng = np.random.default_rng(3)
    for i in range(3 * 288):  # three days of 5-minute windows
        t = i * 300.0
        hour = (t % 86400) / 3600
        rhythm.learn(t, 100.0 + 80.0 * math.sin(2 * math.pi * hour / 24) + rng.normal(0, 3))
        flat.learn(t, 100.0 + rng.normal(0, 3))
    six_am = 3 * 86400 + 6 * 3600.0
    assert rhythm.offset(six_am) == pytest.approx(80.0, abs=15.0)
    assert flat.offset(six_am) == 0.0  # no rhythm: the gate keeps the profile off
    assert rhythm.offset(None) == 0.0


def test_scores_map_to_p_values_and_back() -> None:
    for p in (1e-3, 1e-6, 1e-9):
        assert score_to_p(p_to_score(p)) == pytest.approx(p, rel=1e-9)


@pytest.mark.parametrize(
    "kwargs", [{"window": 2}, {"alarm_p": 0.0}, {"alarm_p": 1.5}, {"direction": "sideways"}]
)
def test_invalid_params_are_rejected_with_the_name(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="LevelShiftParams"):
        LevelShiftParams(**kwargs)  # type: ignore[arg-type]

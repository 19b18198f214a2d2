"""Slow drift (CUSUM on log values): creep detected, noise and single spikes ignored."""

from __future__ import annotations

import numpy as np

from spanpulse.detectors.drift import CusumDrift, DriftParams

THRESHOLD = 0.4  # DetectorConfig.drift_threshold


def _noise(n: int, level: float = 1200.0, sigma: float = 0.03, seed: int = 0) -> list[float]:
    return (level * np.exp(np.random.default_rng(seed).normal(0.0, sigma, n))).tolist()


def _feed(det: CusumDrift, xs: list[float]) -> list[float]:
    out = []
    for x in xs:
        out.append(det.score_one(x))
        det.learn_one(x)
    return out


def test_stable_noise_stays_below_threshold() -> None:
    det = CusumDrift()
    scores = _feed(det, _noise(3000))
    assert max(scores) < THRESHOLD


def test_prompt_bloat_is_detected_within_hours() -> None:
    det = CusumDrift()
    _feed(det, _noise(300))
    ramp = [x * (1.0 + 0.002 * i) for i, x in enumerate(_noise(240, seed=1))]  # +0.2 %/window
    detected_at = None
    for i, x in enumerate(ramp):
        j = det.judge(x)
        if det.score_one(x) >= THRESHOLD:
            detected_at = i
            break
        det.learn_one(x)
    assert detected_at is not None and detected_at < 120  # while the rise is under +25 %
    assert j.reference is not None and abs(j.reference - 1200.0) / 1200.0 < 0.05
    assert j.level is not None and j.level > j.reference


def test_one_wild_window_does_not_fake_a_drift() -> None:
    det = CusumDrift()
    _feed(det, _noise(300))
    assert det.score_one(1200.0 * 50) < THRESHOLD  # the step cap: a spike is not a drift


def test_reference_re_anchors_after_a_confirmed_drift() -> None:
    p = DriftParams(adapt_after=20)
    det = CusumDrift(p)
    _feed(det, _noise(300))
    _feed(det, _noise(200, level=1800.0, seed=2))
    assert det.score_one(1800.0) < THRESHOLD
    j = det.judge(1800.0)
    assert j.reference is not None and abs(j.reference - 1800.0) / 1800.0 < 0.1


def test_not_warm_means_no_score() -> None:
    det = CusumDrift()
    assert _feed(det, [1000.0, 5000.0, 20000.0]) == [0.0, 0.0, 0.0]
    assert not det.warm

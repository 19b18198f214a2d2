"""Proportion shifts: count-aware tests, materiality, baseline protection, adaptation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from spanpulse.detectors.proportion import ProportionParams, ProportionShift, betabinom_sf

THRESHOLD = 0.4  # DetectorConfig.proportion_threshold


@pytest.mark.parametrize(
    ("k", "n", "a", "b"),
    [(1, 3, 4.5, 400.5), (5, 400, 20.5, 1980.5), (40, 400, 20.5, 1980.5), (3, 10, 1.0, 1.0),
     (0, 50, 2.0, 8.0), (120, 5000, 10.5, 990.5), (400, 400, 5.0, 5.0)],
)  # fmt: skip
def test_betabinom_tail_matches_scipy(k: int, n: int, a: float, b: float) -> None:
    expected = float(np.exp(stats.betabinom.logpmf(np.arange(k, n + 1), n, a, b)).sum())
    assert betabinom_sf(k, n, a, b) == pytest.approx(expected, rel=1e-6, abs=1e-300)


def _baseline(det: ProportionShift, rate: float = 0.01, windows: int = 60, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(windows):
        n = int(rng.poisson(400))
        det.learn_one((int(rng.binomial(n, rate)), n))


def test_small_counts_are_not_incidents_large_ones_are() -> None:
    det = ProportionShift()
    _baseline(det)
    assert det.score_one((1, 3)) == 0.0  # 33 % of 3 calls: not material (fewer than 5 events)
    assert det.score_one((2, 20)) == 0.0  # 10 % of 20 calls: still only 2 events
    assert det.score_one((40, 400)) > THRESHOLD  # 10 % of 400 calls against 1 %: incident


def test_material_but_insignificant_changes_score_low() -> None:
    det = ProportionShift()
    _baseline(det, rate=0.05)
    assert det.score_one((11, 100)) < THRESHOLD  # 11 % of 100 vs 5 %: plausible by chance


def test_significant_but_immaterial_changes_score_zero() -> None:
    det = ProportionShift()
    _baseline(det, rate=0.10, windows=200)
    assert det.score_one((1300, 10_000)) == 0.0  # 13 % vs 10 %: below 2x


def test_warm_up_needs_trials_and_windows() -> None:
    det = ProportionShift()
    for _ in range(5):
        det.learn_one((1, 100))
    assert not det.warm
    assert det.score_one((60, 100)) == 0.0
    _baseline(det, windows=10)
    assert det.warm


def test_incident_windows_stay_out_of_the_baseline() -> None:
    det = ProportionShift()
    _baseline(det)
    before = det.baseline_rate
    for _ in range(20):
        det.learn_one((80, 400))
    assert det.baseline_rate == pytest.approx(before)
    assert det.score_one((80, 400)) > THRESHOLD


def test_a_persistent_new_rate_is_adopted_after_adapt_after_windows() -> None:
    p = ProportionParams(adapt_after=10)
    det = ProportionShift(p)
    _baseline(det)
    for _ in range(10):
        det.learn_one((80, 400))
    assert det.baseline_rate == pytest.approx(0.2)
    assert det.score_one((80, 400)) == 0.0


def test_empty_windows_are_ignored() -> None:
    det = ProportionShift()
    _baseline(det)
    before = det.baseline_rate
    det.learn_one((0, 0))
    assert det.baseline_rate == before
    assert det.score_one((0, 0)) == 0.0


def test_invalid_params_are_rejected() -> None:
    with pytest.raises(ValueError, match="ProportionParams"):
        ProportionParams(min_ratio=0.5)


def test_watch_pools_windows_so_mid_sized_tenants_are_covered() -> None:
    from spanpulse.detectors.watches import ProportionWatch

    watch = ProportionWatch("error_rate", ProportionParams(), THRESHOLD, 0.2)
    rng = np.random.default_rng(8)
    for _ in range(80):  # 30 calls a window at 0.5 % errors
        sig = (int(rng.binomial(30, 0.005)), 30)
        assert not watch.assess(sig, None, 30).trigger
        watch.learn(sig, None)
    fired = None
    for i in range(10):  # 8 % errors: ~2.4 a window, never 5 in one window
        sig = (min(4, int(rng.binomial(30, 0.08))), 30)
        a = watch.assess(sig, None, 30)
        watch.learn(sig, None)
        if a.trigger:
            fired = (i, a)
            break
    assert fired is not None and fired[0] < 5
    assert int(fired[1].details["windows"]) > 1

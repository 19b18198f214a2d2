"""Level-shift trust rules: huge volume jumps before a day is learned, big jumps on heavy tails."""

from __future__ import annotations

import numpy as np

from spanpulse.detectors.level_shift import LevelShiftParams
from spanpulse.detectors.watches import LevelShiftWatch


def _watch(ratio: float) -> LevelShiftWatch:
    w = LevelShiftWatch("call_rate", LevelShiftParams(), "both", 0.3, 0.2, min_history=60,
                        min_change=0.3, needs_season=True, min_calls=20, unseasoned_ratio=ratio)  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(120):  # two hours: far from a learned day
        w.learn(float(rng.poisson(100)), 60.0 * i)
    return w


def test_tenfold_jump_is_trusted_before_a_day_is_learned() -> None:
    assert _watch(5.0).assess(1000.0, 60.0 * 120, 1000).trigger


def test_moderate_jump_waits_for_the_daily_profile() -> None:
    w = _watch(5.0)
    a = w.assess(400.0, 60.0 * 120, 400)  # 4x: significant, below the 5x bar
    assert a.score >= 0.3 and not a.trigger  # significant, but a morning ramp could do it


def test_ratio_zero_keeps_the_old_rule() -> None:
    assert not _watch(0.0).assess(1000.0, 60.0 * 120, 1000).trigger


def _young_watch(windows: int, min_history: int | None) -> LevelShiftWatch:
    w = LevelShiftWatch("call_rate", LevelShiftParams(), "both", 0.3, 0.2, min_history=120,
                        min_change=0.3, needs_season=True, min_calls=20, unseasoned_ratio=5.0,
                        unseasoned_min_history=min_history)  # fmt: skip
    rng = np.random.default_rng(1)
    for i in range(windows):
        w.learn(float(rng.poisson(25)), 60.0 * i)
    return w


def test_tenfold_jump_in_a_young_job_is_trusted_after_the_short_history() -> None:
    # a runaway loop 110 minutes after the job started: before the 120-window warm-up
    assert _young_watch(110, 30).assess(250.0, 60.0 * 110, 250).trigger
    assert not _young_watch(110, None).assess(250.0, 60.0 * 110, 250).trigger  # old rule
    assert not _young_watch(20, 30).assess(250.0, 60.0 * 20, 250).trigger  # too young still


def test_short_history_is_only_for_huge_volume_jumps() -> None:
    w = _young_watch(110, 30)
    assert not w.assess(100.0, 60.0 * 110, 100).trigger  # 4x: waits for the full warm-up


def _heavy_tailed_latency_watch(jump_ratio: float) -> LevelShiftWatch:
    w = LevelShiftWatch("latency_p95", LevelShiftParams(), "up", 0.3, 0.2, min_history=120,
                        min_change=0.3, min_calls=20, jump_ratio=jump_ratio)  # fmt: skip
    rng = np.random.default_rng(2)
    for i in range(150):  # a p95 with heavy-tailed window-to-window deviations
        w.learn(float(7.0 * rng.lognormal(0.0, 0.35)), 60.0 * i)
    return w


def test_a_fivefold_percentile_jump_triggers_despite_a_heavy_tail() -> None:
    a = _heavy_tailed_latency_watch(3.0).assess(35.0, 60.0 * 150, 120)
    assert a.trigger and a.persist
    plain = _heavy_tailed_latency_watch(0.0).assess(35.0, 60.0 * 150, 120)
    assert plain.score == a.score  # same evidence; only the jump rule differs
    assert 0.2 <= plain.score < 0.3 and not plain.trigger  # what hid hold-out 3's latency spike


def test_an_ordinary_wobble_does_not_use_the_jump_rule() -> None:
    a = _heavy_tailed_latency_watch(3.0).assess(12.0, 60.0 * 150, 120)  # 1.7x
    assert not a.trigger


def _young_latency_watch(windows: int, min_history: int | None) -> LevelShiftWatch:
    w = LevelShiftWatch("latency_p95", LevelShiftParams(), "up", 0.3, 0.2, min_history=120,
                        min_change=0.3, min_calls=20, unseasoned_min_history=min_history,
                        jump_ratio=3.0)  # fmt: skip
    rng = np.random.default_rng(3)
    for i in range(windows):
        w.learn(float(7.0 * rng.lognormal(0.0, 0.35)), 60.0 * i)
    return w


def test_a_percentile_jump_in_a_young_job_is_trusted_after_the_short_history() -> None:
    # hold-out 5: a 5x latency spike 115 minutes after the job started, before the warm-up
    assert _young_latency_watch(115, 30).assess(35.0, 60.0 * 115, 120).trigger
    assert not _young_latency_watch(115, None).assess(35.0, 60.0 * 115, 120).trigger
    assert not _young_latency_watch(20, 30).assess(35.0, 60.0 * 20, 120).trigger  # too young
    assert not _young_latency_watch(115, 30).assess(14.0, 60.0 * 115, 120).trigger  # 2x: waits

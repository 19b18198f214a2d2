"""One conformance suite run against every scorer (River's ``checks`` habit).

Every scorer must: not mutate its input, not change state when scoring (score first, then
learn), survive a pickle round trip with identical subsequent scores, be deterministic for
a seeded stream, keep its state bounded over a long stream, and rank labelled anomalies
above normal points on a synthetic fixture.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from spanpulse.detectors.drift import CusumDrift
from spanpulse.detectors.level_shift import LevelShift
from spanpulse.detectors.proportion import ProportionShift


@dataclass(frozen=True)
class Spec:
    """How to drive one scorer: a factory and a labelled input stream."""

    name: str
    make: Callable[[], Any]
    stream: Callable[[np.random.Generator, int], Iterator[tuple[Any, bool]]]
    score: Callable[[Any, Any, int], float]
    learn: Callable[[Any, Any, int], None]


def _level_stream(rng: np.random.Generator, n: int) -> Iterator[tuple[float, bool]]:
    """Log-normal noise with a spike and a 5-window step every 600 windows.

    Only the *onset* of each anomaly is labelled: the scorer reports new evidence once per
    episode (refractory period), by design.
    """
    base = np.exp(rng.normal(np.log(800.0), 0.15, n))
    labels = np.zeros(n, dtype=bool)
    for start in range(700, n - 400, 600):
        base[start] *= 4.0
        base[start + 300 : start + 305] *= 3.0
        labels[start] = labels[start + 300] = True
    yield from zip(base.tolist(), labels.tolist(), strict=True)


def _proportion_stream(rng: np.random.Generator, n: int) -> Iterator[tuple[tuple[int, int], bool]]:
    calls = rng.poisson(400, n)
    bad = (np.arange(n) > 300) & (np.arange(n) % 97 == 0)
    k = rng.binomial(calls, np.where(bad, 0.06, 0.01))
    for kk, nn, lab in zip(k.tolist(), calls.tolist(), bad.tolist(), strict=True):
        yield (kk, nn), lab


def _drift_stream(rng: np.random.Generator, n: int) -> Iterator[tuple[float, bool]]:
    """Stable noise, then +0.4 % per window for 200 windows (prompt bloat), then reset."""
    noise = np.exp(rng.normal(0.0, 0.02, n)).tolist()
    level = 1000.0
    for i in range(n):
        phase = i % 800
        creeping = 500 <= phase < 700
        if creeping:
            level *= 1.004
        elif phase == 700:
            level = 1000.0
        yield level * noise[i], creeping and phase >= 560


SPECS = [
    Spec("level_shift", LevelShift, _level_stream,
         lambda d, x, i: d.score_one(x, i * 60.0), lambda d, x, i: d.learn_one(x, i * 60.0)),
    Spec("proportion_shift", ProportionShift, _proportion_stream,
         lambda d, x, i: d.score_one(x), lambda d, x, i: d.learn_one(x)),
    Spec("drift", CusumDrift, _drift_stream,
         lambda d, x, i: d.score_one(x), lambda d, x, i: d.learn_one(x)),
]  # fmt: skip


def _run(spec: Spec, det: Any, items: list[tuple[Any, bool]], offset: int = 0) -> list[float]:
    out = []
    for i, (x, _) in enumerate(items, start=offset):
        out.append(spec.score(det, x, i))
        spec.learn(det, x, i)
    return out


def _items(spec: Spec, n: int, seed: int = 7) -> list[tuple[Any, bool]]:
    return list(spec.stream(np.random.default_rng(seed), n))


@pytest.fixture(params=SPECS, ids=lambda s: s.name)
def spec(request: pytest.FixtureRequest) -> Spec:
    return request.param  # type: ignore[no-any-return]


def test_scoring_does_not_change_state(spec: Spec) -> None:
    det = spec.make()
    items = _items(spec, 1200)
    _run(spec, det, items[:1000])
    before = pickle.dumps(det)
    for i, (x, _) in enumerate(items[1000:], start=1000):
        spec.score(det, x, i)
        assert pickle.dumps(det) == before, "score_one changed the state"


def test_input_is_not_mutated(spec: Spec) -> None:
    det = spec.make()
    for i, (x, _) in enumerate(_items(spec, 300)):
        copy = pickle.loads(pickle.dumps(x))
        spec.score(det, x, i)
        spec.learn(det, x, i)
        assert x == copy


def test_pickle_round_trip_gives_identical_scores(spec: Spec) -> None:
    items = _items(spec, 1600)
    det = spec.make()
    _run(spec, det, items[:1000])
    clone = pickle.loads(pickle.dumps(det))
    assert _run(spec, det, items[1000:], 1000) == _run(spec, clone, items[1000:], 1000)


def test_seeded_stream_is_deterministic(spec: Spec) -> None:
    a = _run(spec, spec.make(), _items(spec, 1500, seed=3))
    b = _run(spec, spec.make(), _items(spec, 1500, seed=3))
    assert a == b
    assert any(s > 0 for s in a)


def test_state_stays_bounded_over_a_long_stream(spec: Spec) -> None:
    det = spec.make()
    items = _items(spec, 100_000, seed=11)
    _run(spec, det, items[:20_000])
    early = len(pickle.dumps(det))
    _run(spec, det, items[20_000:], 20_000)
    late = len(pickle.dumps(det))
    assert late <= early * 1.1 + 512, (early, late)


def test_ranks_labelled_anomalies_above_normal_points(spec: Spec) -> None:
    items = _items(spec, 4000, seed=5)
    scores = np.array(_run(spec, spec.make(), items))
    labels = np.array([lab for _, lab in items])
    warm = 400
    s, lab = scores[warm:], labels[warm:]
    pos, neg = s[lab], s[~lab]
    auc = float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    assert auc > 0.8, f"{spec.name}: AUC {auc:.3f} is not better than chance by enough"

"""Per-grain detection: families scoped by grain, release regression wired in, bytes snapshots."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from test_detectors_fixtures import Traffic, make_row

from spanpulse.detectors.config import DetectorConfig
from spanpulse.detectors.engine import SeriesDetector
from spanpulse.detectors.grain_detectors import GrainDetectors

GRAIN = ("feature", "prompt_version")


def _build(config: DetectorConfig, dims: tuple[str, ...] = GRAIN) -> GrainDetectors:
    return GrainDetectors.build(dims, config, functools.partial(SeriesDetector, config))


def _window(rng: np.random.Generator, i: int, versions: dict[str, Traffic]) -> pl.DataFrame:
    return pl.DataFrame([
        make_row(rng, i, t, dims={"feature": "search", "prompt_version": v},
                 grain="feature.prompt_version")
        for v, t in versions.items()
    ])  # fmt: skip


def test_release_grain_fires_release_regression_next_to_series_detectors() -> None:
    cfg = DetectorConfig()
    det, rng = _build(cfg), np.random.default_rng(3)
    assert det.release is not None
    base = Traffic(calls_per_min=200, p_parse_fail=0.005, parse_share=0.5)
    quiet = [a for i in range(60) for a in det.observe_window(_window(rng, i, {"v11": base}))]
    assert quiet == []
    bad = replace(base, p_parse_fail=0.08)
    alerts = [
        a for i in range(60, 75)
        for a in det.observe_window(_window(rng, i, {"v11": base, "v12": bad}))
    ]  # fmt: skip
    release = [a for a in alerts if a.detector == "release_regression" and a.status == "firing"]
    assert [a.metric for a in release] == ["parse_failure_rate"]
    assert release[0].dimensions == {"feature": "search", "prompt_version": "v12"}
    assert det.firing[("release_regression", release[0].severity)] == 1


def test_non_release_grain_has_no_release_bank() -> None:
    assert _build(DetectorConfig(), ("tenant",)).release is None


def test_finest_default_grain_watches_only_proportions() -> None:
    cfg = DetectorConfig()
    rng = np.random.default_rng(0)
    det = SeriesDetector(cfg)
    row = make_row(rng, 0, Traffic(), dims={"tenant": "a", "model": "m"}, grain="tenant.model")
    det.observe(row)
    families = {w.watch.family for w in det._watched.values()}
    assert families == {"proportion_shift"}
    coarse = SeriesDetector(cfg)
    coarse.observe(make_row(rng, 0, Traffic(), dims={"tenant": "a"}, grain="tenant"))
    assert {w.watch.family for w in coarse._watched.values()} == {
        "level_shift", "proportion_shift", "drift", "threshold",
    }  # fmt: skip


def test_unknown_family_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown families.*level_shift"):
        DetectorConfig(grain_families={"tenant": ("levelshift",)})


def test_bytes_snapshot_round_trip_continues_identically() -> None:
    cfg = DetectorConfig()
    base = Traffic(calls_per_min=200, p_parse_fail=0.005, parse_share=0.5)
    bad = replace(base, p_parse_fail=0.08)
    a, b = _build(cfg), _build(cfg)
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    for i in range(60):
        a.observe_window(_window(rng_a, i, {"v11": base}))
        b.observe_window(_window(rng_b, i, {"v11": base}))
    restored = GrainDetectors.from_bytes(b.to_bytes())
    assert restored is not None and restored.version == a.version
    out_a = [
        x.id
        for i in range(60, 75)
        for x in a.observe_window(_window(rng_a, i, {"v11": base, "v12": bad}))
    ]
    out_b = [
        x.id
        for i in range(60, 75)
        for x in restored.observe_window(_window(rng_b, i, {"v11": base, "v12": bad}))
    ]
    assert out_a and out_a == out_b


def test_foreign_or_unreadable_bytes_are_not_restored() -> None:
    import pickle

    assert GrainDetectors.from_bytes(pickle.dumps({"old": "format"})) is None
    assert GrainDetectors.from_bytes(b"\x80\x05truncated") is None
    moved = pickle.dumps(DetectorConfig()).replace(
        b"spanpulse.detectors.config", b"spanpulse.detectors.gone__"
    )
    assert GrainDetectors.from_bytes(moved) is None  # a class that moved in another version

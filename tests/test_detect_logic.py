"""The per-grain detection step's snapshots: stored with a recovery store, skipped without."""

from __future__ import annotations

import functools

import numpy as np
import polars as pl
from test_detectors_fixtures import Traffic, make_row

from spanpulse.detectors.config import DetectorConfig
from spanpulse.detectors.engine import SeriesDetector
from spanpulse.detectors.grain_detectors import GrainDetectors
from spanpulse.flows.detect import _DetectLogic

GRAIN = ("feature", "prompt_version")
CONFIG = DetectorConfig()


def _make(grain: str) -> GrainDetectors:
    return GrainDetectors.build(GRAIN, CONFIG, functools.partial(SeriesDetector, CONFIG))


def _window(rng: np.random.Generator, i: int, p_parse_fail: float = 0.005) -> pl.DataFrame:
    traffic = Traffic(calls_per_min=200, p_parse_fail=p_parse_fail, parse_share=0.5)
    dims = {"feature": "search", "prompt_version": "v1"}
    return pl.DataFrame([make_row(rng, i, traffic, dims=dims, grain="feature.prompt_version")])


def _fed(persist: bool, windows: int = 20) -> _DetectLogic:
    logic = _DetectLogic(_make, lambda bank: None, None, persist)
    rng = np.random.default_rng(5)
    for i in range(windows):
        logic.on_item((f"w{i}", "feature.prompt_version", _window(rng, i), None))
    return logic


def test_snapshot_with_a_recovery_store_restores_the_same_detectors() -> None:
    logic = _fed(persist=True)
    snap = logic.snapshot()
    restored = GrainDetectors.from_bytes(snap)
    assert restored is not None and restored.version == _make("").version
    # the restored detectors carry on exactly like the live ones, through an incident
    rng, fired = np.random.default_rng(9), 0
    for i in range(20, 30):
        window = _window(rng, i, p_parse_fail=0.2)
        live = logic.on_item((f"w{i}", "feature.prompt_version", window, None))
        published = [a for _, alerts in live[0] for a in alerts]
        assert published == restored.observe_window(window)
        fired += len(published)
    assert fired > 0
    resumed = _DetectLogic(_make, lambda bank: None, snap, True)
    assert resumed.snapshot() == snap  # restored but unused: the restored bytes, unchanged


def test_snapshot_without_a_recovery_store_serializes_nothing() -> None:
    assert _fed(persist=False).snapshot() == b""

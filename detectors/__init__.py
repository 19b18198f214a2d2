"""spanpulse.detectors: pure, unit-testable online anomaly detectors and the alert lifecycle.

The dataflow needs only :class:`SeriesDetector` (one per series), :class:`ReleaseBank` (one
per release grain) and :class:`DetectorConfig`; the scorers are exported for notebooks,
benchmarks and tests.  See ``docs/detectors.md``.
"""

from spanpulse.detectors.config import DetectorConfig, ThresholdRule
from spanpulse.detectors.drift import CusumDrift, DriftParams
from spanpulse.detectors.engine import SeriesDetector
from spanpulse.detectors.level_shift import LevelShift, LevelShiftParams
from spanpulse.detectors.policy import AlertPolicy, PolicyParams
from spanpulse.detectors.proportion import ProportionParams, ProportionShift
from spanpulse.detectors.release import ReleaseBank, ReleaseWatch, release_key
from spanpulse.detectors.signals import derive_signals

__all__ = [
    "AlertPolicy",
    "CusumDrift",
    "DetectorConfig",
    "DriftParams",
    "LevelShift",
    "LevelShiftParams",
    "PolicyParams",
    "ProportionParams",
    "ProportionShift",
    "ReleaseBank",
    "ReleaseWatch",
    "SeriesDetector",
    "ThresholdRule",
    "derive_signals",
    "release_key",
]

"""Everything that watches one grain: the per-series bank plus, on release grains, releases.

Why one object per grain: the dataflow keys detection by grain, so whatever must see a whole
closed window of a grain lives behind that one key.  On a *release grain* (default
``feature.prompt_version``: see ``DetectorConfig.release_grains``) the same rows also feed a
:class:`~spanpulse.detectors.release.ReleaseBank`, which compares a new prompt version (or
response model) with the one it replaces -- a comparison of versions, not of time windows,
that no per-series detector can make.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from spanpulse.detectors.config import DetectorConfig
from spanpulse.detectors.release import ReleaseBank
from spanpulse.detectors.series_bank import DetectorBank, SeriesDetectorLike


@dataclass
class GrainDetectors:
    """Series detectors of one grain, and its release watch when the grain is a release grain.

    Args:
        series: the per-series bank.
        release: the release bank, or None when the grain is not a release grain.
    """

    series: DetectorBank
    release: ReleaseBank | None = None
    firing: Counter[tuple[str, str]] = field(default_factory=Counter)

    @classmethod
    def build(
        cls,
        grain_dims: tuple[str, ...],
        config: DetectorConfig,
        factory: Callable[[], SeriesDetectorLike],
    ) -> GrainDetectors:
        """Return fresh detectors for ``grain_dims`` under ``config``."""
        name = ".".join(grain_dims)
        release = ReleaseBank(config) if name in config.release_grains else None
        return cls(DetectorBank(grain_dims, factory=factory, version=config.version), release)

    @property
    def version(self) -> str:
        """The configuration version the state was built under."""
        return self.series.version

    def observe_window(self, rows: pl.DataFrame, children: pl.DataFrame | None = None) -> list[Any]:
        """Feed one closed window's rows of this grain to every watcher; return the alerts."""
        alerts = self.series.observe_window(rows, children)
        if self.release is not None:
            alerts += self.release.observe_window(rows)
        self.firing = Counter(self.series.firing)
        if self.release is not None:
            self.firing.update(self.release.firing)
        return alerts

    def to_bytes(self) -> bytes:
        """Serialize for the recovery store (one pickle, no deep copy of thousands of objects)."""
        return pickle.dumps(self, pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(data: bytes) -> GrainDetectors | None:
        """Restore :meth:`to_bytes` output; None if it holds something else or cannot be read.

        A snapshot written by another spanpulse version may name classes that moved or no
        longer exist; detection then starts fresh (a warm-up) instead of the job failing to
        resume -- rollups and offsets are restored either way.
        """
        try:
            state = pickle.loads(data)  # noqa: S301 - our own recovery store, not user input
        except (
            pickle.UnpicklingError,
            AttributeError,
            ImportError,
            EOFError,
            TypeError,
            ValueError,
        ):
            return None
        return state if isinstance(state, GrainDetectors) else None

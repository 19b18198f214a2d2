"""One detector per series of a grain, fed window after window: the unit the dataflow keys by grain.

Why keyed by grain (not by series): every closed window reaches the bank of its grain whole, so
the bank also sees which series had *no* traffic in that window (``tick``) -- the only way a
firing alert on a series that went silent gets resolved -- and can drop series that have been
quiet long enough, keeping state bounded (the cardinality limiter already bounds how many series
a grain can have).  Rows of one level down (e.g. ``tenant.model`` rows for a ``tenant`` row)
come along as ``children`` so alerts can name the contributor that explains a change.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import polars as pl

from spanpulse.detectors.signals import PERCENTILES, with_own_percentiles
from spanpulse.schemas.record import OTHER

#: Histogram columns the engines read; the bank hands rows over without them where it can.
_HISTS = tuple(dict.fromkeys(col for col, _ in PERCENTILES.values()))


class AlertLike(Protocol):
    """What the bank needs from an alert."""

    @property
    def status(self) -> str:
        """``firing`` or ``resolved``."""
        ...

    @property
    def detector(self) -> str:
        """Detector family."""
        ...

    @property
    def severity(self) -> str:
        """``warning`` or ``critical``."""
        ...


class SeriesDetectorLike(Protocol):
    """The per-series engine (see ``spanpulse.detectors``)."""

    def observe(
        self, row: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()
    ) -> list[Any]:
        """Score one on-time rollup row of this series; return firing/resolved alerts."""
        ...

    def tick(self, window_end: datetime) -> list[Any]:
        """Account a window that closed without a row for this series."""
        ...

    @property
    def idle(self) -> bool:
        """Return True when the state can be dropped."""
        ...


@dataclass
class DetectorBank:
    """Series detectors of one grain.

    Args:
        grain_dims: the grain's dimensions.
        factory: builds a fresh detector for a new series; must be picklable (a class or a
            ``functools.partial`` of one), because the bank is Bytewax recovery state.
        version: algorithm + parameters; a restored bank with another version starts fresh.
    """

    grain_dims: tuple[str, ...]
    factory: Callable[[], SeriesDetectorLike]
    version: str = ""
    detectors: dict[tuple[str, ...], SeriesDetectorLike] = field(default_factory=dict)
    firing: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_window: datetime | None = None

    def observe_window(self, rows: pl.DataFrame, children: pl.DataFrame | None = None) -> list[Any]:
        """Feed one closed window's on-time rows of this grain; return the alerts it raises."""
        if rows.is_empty():
            return []
        window_end = rows["window_end"][0]
        if self.last_window is not None and window_end <= self.last_window:
            return []  # a window re-emitted after a restart was already scored
        self.last_window = window_end
        kids = _children_by_parent(children, self.grain_dims)
        alerts: list[Any] = []
        seen: set[tuple[str, ...]] = set()
        todo: list[tuple[tuple[str, ...], SeriesDetectorLike, dict[str, Any]]] = []
        pooling: list[tuple[int, dict[str, Any]]] = []  # rows whose detector pools their cells
        for i, row in enumerate(_light_rows(rows)):
            key = tuple(str(row[d]) for d in self.grain_dims)
            if OTHER in key:  # the overflow bucket is not an actionable series
                continue
            seen.add(key)
            det = self.detectors.get(key)
            if det is None:
                det = self.detectors[key] = self.factory()
            todo.append((key, det, row))
            if _needs_cells(det, row):
                pooling.append((i, row))
        _attach_cells(rows, pooling)
        for key, det, row in todo:
            alerts += det.observe(row, kids.get(key, ()))
        for key, det in list(self.detectors.items()):
            if key not in seen:
                alerts += det.tick(window_end)
                if det.idle:
                    del self.detectors[key]
        count_firing(self.firing, alerts)
        return alerts

    def __deepcopy__(self, memo: dict[int, Any]) -> DetectorBank:
        """Copy through pickle, which is far cheaper than ``copy.deepcopy`` here.

        Bytewax deep-copies state at every epoch; for thousands of small detectors that took
        about a second per copy, a pickle round trip a fraction of it.
        """
        copied: DetectorBank = pickle.loads(pickle.dumps(self, pickle.HIGHEST_PROTOCOL))  # noqa: S301
        return copied


def count_firing(firing: Counter[tuple[str, str]], alerts: Sequence[AlertLike]) -> None:
    """Keep ``firing`` = open alerts per (detector, severity): +1 per firing, -1 per resolve."""
    for a in alerts:
        k = (a.detector, a.severity)
        firing[k] += 1 if a.status == "firing" else -1
        if firing[k] <= 0:
            del firing[k]


def _light_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows with their own percentiles and without histogram cells (the slow part to convert)."""
    hists = [c for c in _HISTS if c in frame.columns]
    return with_own_percentiles(frame).drop(hists).rows(named=True)


def _needs_cells(det: SeriesDetectorLike, row: Mapping[str, Any]) -> bool:
    """Return whether ``det`` needs ``row``'s cells (engines without ``needs_cells`` always do)."""
    needs = getattr(det, "needs_cells", None)
    return needs is None or bool(needs(int(row.get("calls") or 0)))


def _attach_cells(frame: pl.DataFrame, rows: list[tuple[int, dict[str, Any]]]) -> None:
    """Give each ``(position, row)`` the histogram cells of ``frame``'s row at that position."""
    hists = [c for c in _HISTS if c in frame.columns]
    if not hists or not rows:
        return
    cells = frame.select(hists)[[i for i, _ in rows]].rows(named=True)
    for (_, row), cell in zip(rows, cells, strict=True):
        row.update(cell)


def _children_by_parent(
    children: pl.DataFrame | None, parent_dims: Sequence[str]
) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    out: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    if children is None or children.is_empty():
        return out
    for row in _light_rows(children):
        out.setdefault(tuple(str(row[d]) for d in parent_dims), []).append(row)
    return out

"""Detector wiring: closed windows -> per-grain detector banks -> the alert topic.

Only wiring: the per-grain state is a :class:`~spanpulse.detectors.series_bank.DetectorBank`,
the split of a window into grains and children is :func:`split_for_detection`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.outputs import Sink

from spanpulse.detectors.series_bank import DetectorBank, child_grain

Split = tuple[str, tuple[pl.DataFrame, pl.DataFrame | None]]


def split_for_detection(window: pl.DataFrame, grains: Sequence[Sequence[str]]) -> list[Split]:
    """Split one window's rows by grain, each with the rows of its child grain (if any)."""
    by_grain = {str(g): part for (g,), part in window.group_by("grain", maintain_order=True)}
    out: list[Split] = []
    for dims in grains:
        name = ".".join(dims)
        rows = by_grain.get(name)
        if rows is None:
            continue
        child = child_grain(dims, grains)
        kids = by_grain.get(".".join(child)) if child else None
        out.append((name, (rows, kids)))
    return out


@dataclass
class _DetectStep:
    make_bank: Callable[[str], DetectorBank]
    on_firing: Callable[[DetectorBank], None]

    def __call__(
        self, bank: DetectorBank | None, item: tuple[pl.DataFrame, pl.DataFrame | None]
    ) -> tuple[DetectorBank, Iterable[Any]]:
        rows, kids = item
        grain = str(rows["grain"][0])
        fresh = self.make_bank(grain)
        if bank is None or bank.version != fresh.version:  # changed parameters start fresh
            bank = fresh
        alerts = bank.observe_window(rows, kids)
        self.on_firing(bank)
        return bank, alerts


def attach_detectors(
    flow: Dataflow,
    windows: Stream[pl.DataFrame],
    *,
    grains: Sequence[Sequence[str]],
    make_bank: Callable[[str], DetectorBank],
    alerts: Sink[Any],
    on_firing: Callable[[DetectorBank], None] = lambda bank: None,
    version: str = "v1",
) -> Stream[Any]:
    """Wire detection onto the stream of closed, cardinality-limited windows."""
    split = op.flat_map("split_for_detection", windows, lambda w: split_for_detection(w, grains))
    detected = op.stateful_flat_map(
        f"detect_anomalies_{version}", split, _DetectStep(make_bank, on_firing)
    )
    out = op.map("drop_grain_key_alerts", detected, lambda kv: kv[1])
    op.output("alerts_out", out, alerts)
    return out

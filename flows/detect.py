"""Detector wiring: closed windows -> per-grain detectors -> inhibition -> the alert topic.

Only wiring: the per-grain state is a :class:`~spanpulse.detectors.grain_detectors.GrainDetectors`,
the split of a window into grains and children is :func:`split_for_detection`, and the
cross-grain inhibition (one incident, one page) is :class:`~spanpulse.detectors.inhibit.WindowGate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulLogic
from bytewax.outputs import Sink

from spanpulse.detectors.breakdowns import window_children
from spanpulse.detectors.grain_detectors import GrainDetectors
from spanpulse.detectors.inhibit import WindowGate
from spanpulse.schemas.alert import Alert

#: One grain's share of a closed window: (window key, grain, its rows, its child grain's rows).
Detectable = tuple[str, str, pl.DataFrame, pl.DataFrame | None]
Split = tuple[str, Detectable]
#: What a grain's detectors report per window: (window key, alerts), possibly no alerts.
Report = tuple[str, list[Alert]]
INHIBIT_KEY = "inhibit"


def split_for_detection(window: pl.DataFrame, grains: Sequence[Sequence[str]]) -> list[Split]:
    """Split one window's rows by grain, each with the rows of its child grains (if any).

    Every configured grain gets an item, with no rows if the window had none of it, because
    inhibition waits for every grain's report of a window.
    """
    by_grain = {str(g): part for (g,), part in window.group_by("grain", maintain_order=True)}
    key = window["window_start"][0].isoformat() if window.height else ""
    out: list[Split] = []
    for dims in grains:
        name = ".".join(dims)
        rows = by_grain.get(name, window.clear())
        out.append((name, (key, name, rows, window_children(by_grain, dims, grains))))
    return out


class _DetectLogic(StatefulLogic[Detectable, Report, bytes]):
    """Detection state of one grain, snapshotted as bytes.

    Why not ``stateful_flat_map``: it snapshots by ``copy.deepcopy`` at every epoch, and a
    grain holds thousands of small detector objects; one pickle per snapshot (no copy, no
    unpickle) costs less than half as much.  A snapshot of another configuration version is
    discarded on resume (changed parameters start fresh).
    """

    def __init__(
        self,
        make: Callable[[str], GrainDetectors],
        on_firing: Callable[[GrainDetectors], None],
        resume: bytes | None,
        persist: bool = True,
    ) -> None:
        self._make = make
        self._on_firing = on_firing
        self._resume = resume
        self._persist = persist
        self._state: GrainDetectors | None = None

    def on_item(self, value: Detectable) -> tuple[Iterable[Report], bool]:
        window, grain, rows, kids = value
        if self._state is None:
            fresh = self._make(grain)
            restored = GrainDetectors.from_bytes(self._resume) if self._resume else None
            ok = restored is not None and restored.version == fresh.version
            self._state = restored if ok and restored is not None else fresh
            self._resume = None
        alerts = self._state.observe_window(rows, kids)
        self._on_firing(self._state)
        return [(window, alerts)], StatefulLogic.RETAIN

    def snapshot(self) -> bytes:
        # Bytewax asks for a snapshot at every epoch even without a recovery store; serializing
        # a grain's detectors nobody will store was 8-13 % of the job's time (BENCHMARKS.md).
        if not self._persist:
            return b""
        if self._state is None:  # restored but not yet used: keep the restored bytes
            return self._resume or b""
        return self._state.to_bytes()


@dataclass
class _InhibitStep:
    grains: int
    on_inhibited: Callable[[int], None]

    def __call__(self, gate: WindowGate | None, report: Report) -> tuple[WindowGate, list[Alert]]:
        if gate is None or gate.grains != self.grains:  # a changed grain set starts fresh
            gate = WindowGate(self.grains)
        before = gate.inhibitor.inhibited
        published = gate.add(*report)
        self.on_inhibited(gate.inhibitor.inhibited - before)
        return gate, published


def attach_detectors(
    flow: Dataflow,
    windows: Stream[pl.DataFrame],
    *,
    grains: Sequence[Sequence[str]],
    make_bank: Callable[[str], GrainDetectors],
    alerts: Sink[Any],
    on_firing: Callable[[GrainDetectors], None] = lambda bank: None,
    on_inhibited: Callable[[int], None] = lambda n: None,
    version: str = "v2",
    persist: bool = True,
) -> Stream[Any]:
    """Wire detection onto the stream of closed, cardinality-limited windows.

    ``version`` names the state format in the step ids (v2: bytes snapshots of
    :class:`GrainDetectors`, then inhibition); a recovery store written by another format
    starts detection fresh.  ``persist=False`` (no recovery store) skips serializing the
    detectors at each epoch: nothing would keep the bytes.
    """
    split = op.flat_map("split_for_detection", windows, lambda w: split_for_detection(w, grains))

    def build(resume: bytes | None) -> _DetectLogic:
        return _DetectLogic(make_bank, on_firing, resume or None, persist)

    detected = op.stateful(f"detect_anomalies_{version}", split, build)
    reports = op.map("key_reports_for_inhibition", detected, lambda kv: (INHIBIT_KEY, kv[1]))
    gated = op.stateful_flat_map(
        f"inhibit_alerts_{version}", reports, _InhibitStep(len(grains), on_inhibited)
    )
    out = op.map("drop_inhibit_key", gated, lambda kv: kv[1])
    op.output("alerts_out", out, alerts)
    return out

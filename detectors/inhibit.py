"""Alert inhibition: one incident, one page -- not one page per tenant it touches.

Why: a provider-side problem on one model (say, a quarter of ``gpt-4o`` calls stopping on
``length``) moves the length-stop share of the model, of every busy tenant that uses the
model, of every (tenant, model) pair, and both the statistical and the rule detectors see it.
Each of those alerts is true, but only the model's one is worth waking up for; the others
are its symptoms.  Alertmanager solves this with *inhibit rules*; this is the same idea,
applied where the alerts are made, with rules derived from the grains themselves.

An alert ``A`` is **covered** by an open (published) alert ``B`` on the same *signal* (the
metric without a rule's operator: ``length_share>0.05`` is ``length_share``) when

1. ``B`` is on the same series (same grain and dimensions) from another detector family --
   a rule and a proportion shift seeing the same jump are one alert; or
2. ``B``'s dimensions are a strict subset of ``A``'s -- ``model=gpt-4o`` covers
   ``tenant=acme, model=gpt-4o``; or
3. ``A``'s top contributor (the child series that explains most of its change) blames what
   ``B`` is about: the dimension the breakdown adds (``model=gpt-4o`` in the contributor
   ``tenant=acme, model=gpt-4o``) has ``B``'s value, ``B`` agrees with ``A`` on the dimensions
   they share and ``B`` is not on a finer grain -- a tenant whose length-share jump is mostly
   its ``gpt-4o`` calls is covered by the ``gpt-4o`` alert, one whose context-fill creep is
   mostly its ``feature=agent`` calls by the ``feature=agent, prompt_version=v21`` alert; or
4. ``A`` is a per-tenant alert without contributors and ``B`` a fleet-level one (no
   ``tenant`` dimension): while ``feature=agent``'s context fill is creeping up, the tenants
   whose fill creeps with it are its symptoms, and with no breakdown pointing at another
   cause there is nothing to tell them apart from it.  A per-tenant alert whose contributors
   point elsewhere is not held by this rule, nor one whose tenant is the fleet alert's top
   contributor (then the tenant is the cause and the fleet alert its symptom).

Within one window, alerts are considered coarse grain first (grains without ``tenant``
before grains with it, then fewer dimensions first), so the fleet-level cause is published
and its per-tenant symptoms are held back.  A covered alert is not published; its
``resolved`` is not published either.  If the covering alert resolves while a covered one is
still firing ``release_after`` windows later, the covered one is published then (the symptom
outlived its cause and now deserves its own page); the grace period absorbs the usual
difference in how fast detectors of different grains resolve.  Release-regression and budget
alerts are never covered: they carry information (the version comparison, the money) no
other alert has.

Pure and deterministic; the state is small (open and held alerts) and picklable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from spanpulse.schemas.alert import Alert

#: Families whose alerts are never held back.
NEVER_COVERED: Final = frozenset({"release_regression", "budget_burn"})

_OPERATOR: Final = re.compile(r"[<>=]")


def signal_of(alert: Alert) -> str:
    """Return the alert's signal: its metric, without a threshold rule's operator and value."""
    return _OPERATOR.split(alert.metric, maxsplit=1)[0]


def grain_rank(grain: str) -> tuple[int, int]:
    """Sort key that puts fleet-level grains first: no ``tenant`` first, then fewer dimensions."""
    dims = grain.split(".") if grain else []
    return ("tenant" in dims, len(dims))


@dataclass(frozen=True)
class _Open:
    """What coverage needs to know about a published, still-open alert."""

    signal: str
    detector: str
    grain: str
    dimensions: tuple[tuple[str, str], ...]
    blames: tuple[tuple[str, str], ...] = ()  # its top contributor's dimensions


@dataclass
class Inhibitor:
    """Hold back alerts that an open, coarser (or sibling-detector) alert already explains.

    Feed each closed window's alerts of *all* grains at once to :meth:`process`, in window
    order.
    """

    release_after: int = 10
    open: dict[str, _Open] = field(default_factory=dict)
    held: dict[str, tuple[str, Alert]] = field(default_factory=dict)  # fingerprint -> (by, alert)
    orphaned: dict[str, int] = field(default_factory=dict)  # held, cover resolved: windows since
    inhibited: int = 0  # firing alerts held back so far (a counter for the metrics)

    def process(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Return the alerts of one window that should be published, in a stable order."""
        out: list[Alert] = self._release_orphans()
        ordered = sorted(alerts, key=lambda a: (grain_rank(a.grain), a.status != "resolved"))
        for a in ordered:
            if a.status == "resolved":
                out += self._resolve(a)
            else:
                out += self._fire(a)
        return out

    def _fire(self, a: Alert) -> list[Alert]:
        if a.fingerprint in self.held:  # still covered (e.g. a re-delivered window)
            return []
        by = None if a.detector in NEVER_COVERED else self._covering(a)
        if by is not None:
            self.held[a.fingerprint] = (by, a)
            self.inhibited += 1
            return []
        top = a.contributors[0].dimensions if a.contributors else {}
        self.open[a.fingerprint] = _Open(
            signal_of(a),
            a.detector,
            a.grain,
            tuple(sorted(a.dimensions.items())),
            tuple(sorted(top.items())),
        )
        return [a]

    def _resolve(self, a: Alert) -> list[Alert]:
        if self.held.pop(a.fingerprint, None) is not None:
            self.orphaned.pop(a.fingerprint, None)
            return []  # its firing was never published
        if self.open.pop(a.fingerprint, None) is None:
            return [a]  # opened before this state existed: publish, consumers dedupe by id
        for fp, (by, _) in self.held.items():
            if by == a.fingerprint:
                self.orphaned.setdefault(fp, 0)
        return [a]

    def _release_orphans(self) -> list[Alert]:
        """Publish held alerts whose cover resolved ``release_after`` windows ago."""
        out: list[Alert] = []
        for fp in sorted(self.orphaned):
            self.orphaned[fp] += 1
            if self.orphaned[fp] < self.release_after:
                continue
            del self.orphaned[fp]
            _, held = self.held.pop(fp)
            out += self._fire(held)  # held again if another open alert covers it now
        return out

    def _covering(self, a: Alert) -> str | None:
        signal, dims = signal_of(a), dict(a.dimensions)
        top = dict(a.contributors[0].dimensions) if a.contributors else {}
        for fp, o in self.open.items():
            if o.signal != signal:
                continue
            other = dict(o.dimensions)
            same_series = o.grain == a.grain and other == dims
            if same_series and o.detector != a.detector:
                return fp
            if same_series:
                continue
            if _strict_subset(other, dims) or _blames(top, dims, other, o.grain, a.grain):
                return fp
            if not top and "tenant" in dims and "tenant" not in other:
                if dict(o.blames).get("tenant") != dims["tenant"]:
                    return fp
        return None


def _blames(
    top: Mapping[str, str],
    dims: Mapping[str, str],
    other: Mapping[str, str],
    other_grain: str,
    grain: str,
) -> bool:
    """Whether a contributor ``top`` of an alert on ``dims`` points at the open alert ``other``."""
    added = {k: v for k, v in top.items() if k not in dims}
    return (
        bool(added)
        and grain_rank(other_grain) <= grain_rank(grain)
        and all(other.get(k) == v for k, v in added.items())
        and all(dims[k] == v for k, v in other.items() if k in dims)
    )


def _subset(small: Mapping[str, str], big: Mapping[str, str]) -> bool:
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def _strict_subset(small: Mapping[str, str], big: Mapping[str, str]) -> bool:
    return len(small) < len(big) and _subset(small, big)


@dataclass
class WindowGate:
    """Collect one window's alerts from every grain's detectors, then run the inhibitor.

    Detection is keyed by grain (grains run in parallel), but inhibition must see a window's
    alerts of all grains together; each grain reports every window once, even without alerts.

    Args:
        grains: how many grains report each window.
    """

    grains: int
    inhibitor: Inhibitor = field(default_factory=Inhibitor)
    pending: dict[str, list[Alert]] = field(default_factory=dict)
    reported: dict[str, int] = field(default_factory=dict)

    def add(self, window: str, alerts: Sequence[Alert]) -> list[Alert]:
        """Add one grain's alerts of ``window``; return what to publish once all have reported."""
        self.pending.setdefault(window, []).extend(alerts)
        self.reported[window] = self.reported.get(window, 0) + 1
        if self.reported[window] < self.grains:
            return []
        del self.reported[window]
        return self.inhibitor.process(self.pending.pop(window))

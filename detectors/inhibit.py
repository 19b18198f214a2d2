"""Alert inhibition: one incident, one page -- not one page per tenant it touches.

Why: a provider-side problem on one model (say, a quarter of ``gpt-4o`` calls stopping on
``length``) moves the length-stop share of the model, of every busy tenant that uses the
model, of every (tenant, model) pair, and both the statistical and the rule detectors see it;
the truncated answers also raise the output-token p95, the latency and the parse failures.
Each of those alerts is true, but only the model's one is worth waking up for; the others
are its symptoms.  Alertmanager solves this with *inhibit rules*; this is the same idea,
applied where the alerts are made, with rules derived from the grains, the contributors and
the signals themselves.  The opposite direction matters as much: when one big tenant's
prompts grow, every model it calls shows a creeping context fill, and the tenant is the cause.

Related signals and blame are defined in :mod:`spanpulse.detectors.alert_relations`.

An alert ``A`` is **covered** by an open (published) alert ``B`` whose signal explains ``A``'s
when

1. ``B`` is on the same series, from another detector or on another (related) signal -- a rule
   and a proportion shift seeing the same jump, or the input-token drift and the context-fill
   drift of one tenant, are one page; or
2. ``B``'s dimensions are a strict subset of ``A``'s -- ``model=gpt-4o`` covers
   ``tenant=acme, model=gpt-4o``; or
3. (unless ``A`` is a cause, below) ``A``'s top contributor (the child series that explains
   most of its change) points at
   ``B``: the dimension the breakdown adds (``model=gpt-4o`` in the contributor
   ``tenant=acme, model=gpt-4o``) has ``B``'s value, ``B`` agrees with ``A`` on the dimensions
   they share and ``B`` is not on a finer grain; or
4. ``A`` is a per-tenant alert without contributors and ``B`` a fleet-level one (no
   ``tenant`` dimension) that agrees with ``A`` on the dimensions they share: with no
   breakdown pointing at another cause there is nothing to tell them apart; or
5. every finer alert on ``A``'s signal (``tenant=acme, model=X`` for ``tenant=acme``) is a
   slice of ``B``'s series (so held by rule 2) and none is published, and ``A``'s top
   contributor comes from that finer grain (or ``A`` has none): the finer detectors watch
   the same signal on each slice, and the only slices they found abnormal are symptoms of
   ``B`` -- what else the breakdown shows is noise; or
6. ``A`` blames ``B``'s series and ``B`` is on a finer grain (``model=o3`` blaming
   ``tenant=t-3``, whose own alert is open): the model alert is the symptom.

Rules 1 and 3 also follow a *held* alert to the open alert holding it: a symptom of a symptom
is a symptom of the cause.  ``A`` is a **cause**, not covered by rules 3-6, when an open or
deferred alert that is not on a finer grain blames ``A``'s series on a signal ``A`` explains
(so a tenant the model alerts blame pages even if its breakdown points at some open feature
alert, and in mutual blame the finer series is the cause).

**Short hold.**  A finer series needs more windows of evidence than a coarse one (it sees a
fraction of the calls), so the coarse symptom usually fires first.  An alert that blames a
series of a finer grain with no open alert yet is *deferred* for up to ``defer_windows``
windows: if an alert explaining it opens on the blamed series meanwhile, it is held as that
alert's symptom; if the blamed series' alert was held (covered by some other open alert), it is
published instead -- being blamed makes it a cause (it is *promoted*) -- and the deferred alert
is held by it; otherwise the deferred alert is published when the hold ends.  A deferred alert
that resolves while waiting with no cause in sight is published with its ``resolved``, so the
hold delays an alert but never hides one.  The default (3 windows) is the time-to-detect
target: a finer series' alert that takes longer is no longer "the same moment".

Within one window, alerts are considered coarse grain first (grains without ``tenant`` before
grains with it, then fewer dimensions first; then causes before the signals they explain), so
the fleet-level cause is published and its per-tenant symptoms are held back.  A covered or
deferred alert is not published; neither is its ``resolved``.  A covered alert still firing
``release_after`` windows (``release_after_drift`` for a drift alert, whose CUSUM winds down
slowly) after the *last* alert explaining it resolved is published then (the
symptom outlived its cause and now deserves its own page); the grace period absorbs the usual
difference in how fast detectors of different families and grains resolve.  An
alert published in a later window than it was produced for carries the window it is published
in (``started_at`` still says when the anomaly began), so time to detect stays honest.
Release-regression and budget alerts are never covered or deferred: they carry information
(the version comparison, the money) no other alert has.

Pure and deterministic; the state is small (open, held and deferred alerts) and picklable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from spanpulse.detectors.alert_relations import (
    BLAME_SHARE,
    EXPLAINS,
    Dims,
    blames,
    cause_rank,
    explains,
    grain_rank,
    is_strict_subset,
    is_subset,
    signal_of,
)
from spanpulse.schemas.alert import Alert

__all__ = [
    "BLAME_SHARE",
    "EXPLAINS",
    "NEVER_COVERED",
    "Inhibitor",
    "WindowGate",
    "explains",
    "grain_rank",
    "signal_of",
    "window_start_of",
]

#: Families whose alerts are never held back.
NEVER_COVERED: Final = frozenset({"release_regression", "budget_burn"})


@dataclass(frozen=True)
class _Open:
    """What coverage needs to know about a published, still-open (or a deferred) alert."""

    signal: str
    detector: str
    grain: str
    dimensions: tuple[tuple[str, str], ...]
    blames: tuple[tuple[str, str], ...] = ()  # its top contributor's dimensions
    share: float = 0.0  # the top contributor's share of the change (0: unknown, blames nothing)

    @classmethod
    def of(cls, a: Alert) -> _Open:
        top = a.contributors[0] if a.contributors else None
        return cls(
            signal_of(a),
            a.detector,
            a.grain,
            tuple(sorted(a.dimensions.items())),
            tuple(sorted(top.dimensions.items())) if top else (),
            float(top.share) if top and top.share is not None else 0.0,
        )

    def blamed(self) -> dict[str, str]:
        """Return the series this alert blames (empty when no contributor explains half of it)."""
        if self.share < BLAME_SHARE:
            return {}
        own = dict(self.dimensions)
        return {k: v for k, v in self.blames if k not in own}

    def blames_series(self, dims: Dims) -> bool:
        """Whether ``dims`` lies between the blamed series and the top contributor."""
        blamed = self.blamed()
        return bool(blamed) and is_subset(blamed, dims) and is_subset(dims, dict(self.blames))


@dataclass
class Inhibitor:
    """Hold back alerts that an open alert already explains (see the module docstring).

    Feed each closed window's alerts of *all* grains at once to :meth:`process`, in window
    order.

    Args:
        release_after: windows a held alert must outlive its cover before it is published.
        release_after_drift: the same for a held drift alert, whose CUSUM takes longer to
            wind down than the other families' tests (see :meth:`_release_orphans`).
        defer_windows: windows an alert that blames a finer series may wait for its alert.
    """

    release_after: int = 10
    release_after_drift: int = 30
    defer_windows: int = 3
    open: dict[str, _Open] = field(default_factory=dict)
    held: dict[str, tuple[str, Alert]] = field(default_factory=dict)  # fingerprint -> (by, alert)
    orphaned: dict[str, int] = field(default_factory=dict)  # held, cover resolved: windows since
    deferred: dict[str, tuple[int, Alert]] = field(default_factory=dict)  # fp -> (waited, alert)
    recent: dict[str, tuple[_Open, int]] = field(default_factory=dict)  # resolved: windows since
    inhibited: int = 0  # times a firing alert was held back (a counter: it never decreases)
    now: datetime | None = None  # start of the window being processed
    _window: list[Alert] = field(default_factory=list, repr=False)  # its not yet judged alerts

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore state pickled by an older version (fields added since get their defaults)."""
        self.__dict__.update(vars(Inhibitor()))
        self.__dict__.update(state)

    def process(self, alerts: Sequence[Alert], window_start: datetime | None = None) -> list[Alert]:
        """Return the alerts of one window that should be published, in a stable order."""
        starts = [a.window_start for a in alerts]
        self.now = window_start or max([*starts, *([self.now] if self.now else [])], default=None)
        self._age()
        out: list[Alert] = []
        ordered = sorted(
            alerts,
            key=lambda a: (grain_rank(a.grain), a.status != "resolved", cause_rank(signal_of(a))),
        )
        for i, a in enumerate(ordered):
            self._window = ordered[i + 1 :]
            out += self._resolve(a) if a.status == "resolved" else self._fire(a)
        self._window = []
        return out + self._release_orphans() + self._settle_deferred()

    # ------------------------------------------------------------------ lifecycle
    def _fire(self, a: Alert, may_defer: bool = True) -> list[Alert]:
        if a.fingerprint in self.held or a.fingerprint in self.deferred:
            return []  # still covered or waiting (e.g. a re-delivered window)
        if a.fingerprint in self.open:
            return [a]  # already paged (a re-delivered window): consumers dedupe by id
        if a.detector in NEVER_COVERED:
            return self._publish(a)
        by = self._covering(a)
        if by is not None:
            return self._hold(a, by)
        promoted = self._promote_cause_of(a)
        if promoted:
            return promoted
        if may_defer and self._blames_finer(a):
            self.deferred[a.fingerprint] = (0, a)
            return []
        return self._publish(a)

    def _publish(self, a: Alert) -> list[Alert]:
        if self.now is not None and a.window_start < self.now:  # late: stamp it with now
            a = replace(
                a, window_start=self.now, window_end=self.now + (a.window_end - a.window_start)
            )
        if a.status == "firing":
            self.open[a.fingerprint] = _Open.of(a)
        return [a]

    def _hold(self, a: Alert, by: str) -> list[Alert]:
        self.held[a.fingerprint] = (by, a)
        self.inhibited += 1
        return []

    def _resolve(self, a: Alert) -> list[Alert]:
        deferred = self.deferred.pop(a.fingerprint, None)
        if deferred is not None:  # no cause showed up while it waited: never hide it
            by = self._finer_cause(deferred[1])
            return [] if by is not None else [*self._publish(deferred[1]), *self._resolve(a)]
        if self.held.pop(a.fingerprint, None) is not None:
            self.orphaned.pop(a.fingerprint, None)
            return []  # its firing was never published
        closed = self.open.pop(a.fingerprint, None)
        if closed is None:
            return [a]  # opened before this state existed: publish, consumers dedupe by id
        self.recent[a.fingerprint] = (closed, 0)
        for fp, (by, _) in self.held.items():
            if by == a.fingerprint:
                self.orphaned.setdefault(fp, 0)
        return [a]

    def _release_orphans(self) -> list[Alert]:
        """Publish held alerts that outlived every alert explaining them by ``release_after``.

        Why not just their own cover: detectors of different families resolve at different
        speeds (a drift stays open while its CUSUM decays), so a tenant's context-fill drift
        held by a model's input-token level shift usually outlives it while another alert of the
        same incident is still open or has just resolved.  The clock restarts from the last
        explaining alert that resolved, and an open one holds the symptom again.  Runs after
        the window's own messages, so a symptom resolving in this very window stays unpublished.

        A drift symptom waits ``release_after_drift`` windows instead: its CUSUM sums tens of
        windows of evidence and gives it back at ``allowance`` per window, so it resolves well
        after the incident is over.  Measured on the scenario suite and the first three
        hold-outs (session 10): of 73 held drift alerts whose cover resolved first, 20 were
        still open 10 windows later and were published as pages of their own; held
        level-shift, proportion and threshold alerts all resolved within 4 windows.
        """
        out: list[Alert] = []
        for fp in sorted(self.orphaned):
            if self.orphaned[fp] < self._release_after(self.held[fp][1]):
                continue
            del self.orphaned[fp]
            _, held = self.held.pop(fp)
            by = self._covering(held, recent_within=self._release_after(held))
            if by is not None and by in self.recent:
                self.held[fp] = (by, held)
                self.orphaned[fp] = self.recent[by][1]
                continue
            out += self._fire(held, may_defer=False)
        return out

    def _release_after(self, a: Alert) -> int:
        return self.release_after_drift if a.detector == "drift" else self.release_after

    def _age(self) -> None:
        """Count one more window for orphans and recently resolved alerts."""
        keep = max(self.release_after, self.release_after_drift)
        for fp in sorted(self.recent):
            o, since = self.recent[fp]
            if since + 1 >= keep:
                del self.recent[fp]
            else:
                self.recent[fp] = (o, since + 1)
        for fp in self.orphaned:
            self.orphaned[fp] += 1

    def _settle_deferred(self) -> list[Alert]:
        """Hold deferred alerts whose blamed series now has an alert; publish expired ones."""
        out: list[Alert] = []
        for fp in sorted(self.deferred):
            waited, a = self.deferred.pop(fp)
            by = self._finer_cause(a)
            if by is not None:
                out += self._hold(a, by)
                continue
            promoted = self._promote_cause_of(a)
            if promoted:
                out += promoted
            elif waited < self.defer_windows:
                self.deferred[fp] = (waited + 1, a)
            else:
                out += self._fire(a, may_defer=False)
        return out

    def _promote_cause_of(self, a: Alert) -> list[Alert]:
        """Publish a held alert on the series ``a`` blames and hold ``a`` by it (or nothing)."""
        me = _Open.of(a)
        for fp in sorted(self.held):
            _, h = self.held[fp]
            if h.status == "firing" and me.blames_series(h.dimensions):
                if explains(signal_of(h), me.signal) and self._finer(h.grain, a.grain):
                    del self.held[fp]
                    self.orphaned.pop(fp, None)
                    return [*self._publish(h), *self._hold(a, fp)]
        return []

    # ------------------------------------------------------------------ coverage
    def _covering(self, a: Alert, recent_within: int = 0) -> str | None:
        """Return the alert that covers ``a`` (rules 1-6), preferring the most similar one.

        Among several covers the one on the same signal and from the same detector family is
        chosen: it resolves like ``a`` does, so a symptom is not released as an orphan just
        because a faster-resolving relative of its cause closed first.
        """
        signal, dims = signal_of(a), dict(a.dimensions)
        top = dict(a.contributors[0].dimensions) if a.contributors else {}
        cause = self._is_cause(a)
        found: list[tuple[tuple[bool, bool], int, str]] = []
        for i, (fp, o, published) in enumerate(self._covers(a.fingerprint, recent_within)):
            if explains(o.signal, signal) and self._covers_rule(
                a, o, published, cause, signal, dims, top
            ):
                found.append(((o.signal != signal, o.detector != a.detector), i, fp))
        if found:
            return min(found)[2]
        if cause:
            return None
        return self._finer_alerts_cover(a, signal, dims, top) or self._finer_cause(a)

    def _covers_rule(
        self, a: Alert, o: _Open, published: bool, cause: bool, signal: str, dims: Dims, top: Dims
    ) -> bool:
        """Rules 1-4 for one candidate cover ``o`` (see the module docstring)."""
        other = dict(o.dimensions)
        if o.grain == a.grain and other == dims:  # 1. same series
            return o.detector != a.detector or o.signal != signal
        if published and is_strict_subset(other, dims):
            return True  # 2: a is a slice of o's series
        if cause or (o.blames_series(dims) and not self._finer(o.grain, a.grain)):
            return False  # a is the cause, not a symptom
        if blames(top, dims, other, o.grain, a.grain):
            return True  # 3
        agree = all(dims[k] == v for k, v in other.items() if k in dims)
        return published and agree and not top and "tenant" in dims and "tenant" not in other  # 4

    def _covers(self, me: str, recent_within: int = 0) -> Iterable[tuple[str, _Open, bool]]:
        """Open alerts, then held ones standing for the open alert that holds them.

        A symptom of a symptom is a symptom of the cause, along the same series (rule 1) or
        a breakdown (rule 3): a prompt version whose change is mostly one model's, whose change
        is mostly one tenant's, is held by the tenant's alert.  Containment (rule 2) and the
        breakdown-less rule 4 only follow published alerts: another slice of a model held as
        one tenant's symptom is not that tenant's symptom.
        """
        for fp, o in self.open.items():
            yield fp, o, True
        if recent_within:
            for fp, (o, since) in self.recent.items():
                if since < recent_within:  # resolved fewer than recent_within windows ago
                    yield fp, o, True
        for fp, (by, h) in self.held.items():
            if fp != me and h.status == "firing" and self._live(by, recent_within):
                yield by, _Open.of(h), False

    def _live(self, fp: str, recent_within: int) -> bool:
        """Whether the alert ``fp`` is open, or resolved fewer than ``recent_within`` windows ago.

        A held alert stands for its cover only while that cover could itself cover: standing
        for a resolved one would hold a symptom of a symptom by an alert that no longer pages,
        with no release clock running.
        """
        if fp in self.open:
            return True
        since = self.recent.get(fp)
        return since is not None and since[1] < recent_within

    def _is_cause(self, a: Alert) -> bool:
        """Whether an open or deferred alert, not on a finer grain, blames ``a``'s series."""
        signal, dims = signal_of(a), a.dimensions
        blamers = [*self.open.values(), *(_Open.of(d) for _, d in self.deferred.values())]
        return any(
            b.blames_series(dims)
            and explains(signal, b.signal)
            and not self._finer(b.grain, a.grain)
            for b in blamers
        )

    def _finer_alerts_cover(self, a: Alert, signal: str, dims: Dims, top: Dims) -> str | None:
        """Rule 5: every finer alert on ``a``'s signal is a slice of one open alert; return it."""
        for o in self.open.values():
            if o.signal == signal and is_strict_subset(dims, dict(o.dimensions)):
                return None  # a finer slice pages on its own
        finer = [
            f
            for f in (*(h for _, h in self.held.values()), *self._window)
            if f.status == "firing"
            and signal_of(f) == signal
            and is_strict_subset(dims, f.dimensions)
        ]
        if not finer or (top and any(sorted(top) != sorted(f.dimensions) for f in finer)):
            return None  # no finer evidence, or a is explained by another breakdown
        covers = [self._containing(f, a.fingerprint) for f in finer]
        return covers[0] if None not in covers else None

    def _containing(self, f: Alert, me: str) -> str | None:
        """Return an open alert whose series strictly contains ``f``'s and explains its signal."""
        for fp, o in self.open.items():
            if fp != me and explains(o.signal, signal_of(f)):
                if is_strict_subset(dict(o.dimensions), f.dimensions):
                    return fp
        return None

    def _finer_cause(self, a: Alert) -> str | None:
        """Rule 6: an open alert on the finer series ``a`` blames, on a signal explaining it."""
        me = _Open.of(a)
        for fp, o in self.open.items():
            if me.blames_series(dict(o.dimensions)) and explains(o.signal, me.signal):
                if self._finer(o.grain, a.grain):
                    return fp
        return None

    def _blames_finer(self, a: Alert) -> bool:
        """Whether ``a`` blames a series of a finer grain (so that series' alert may follow)."""
        blamed = _Open.of(a).blamed()
        return bool(blamed) and self._finer(".".join(sorted(blamed)), a.grain)

    @staticmethod
    def _finer(grain: str, than: str) -> bool:
        return grain_rank(grain) > grain_rank(than)


def window_start_of(key: str) -> datetime | None:
    """Parse a window key (the window start in ISO 8601; empty for an empty window)."""
    try:
        ts = datetime.fromisoformat(key)
    except ValueError:
        return None  # not a timestamp: the inhibitor falls back to the alerts' windows
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


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
        return self.inhibitor.process(self.pending.pop(window), window_start_of(window))

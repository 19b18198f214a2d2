"""The per-series engine the dataflow calls: rows in, firing/resolved alerts out.

One :class:`SeriesDetector` holds all detector state of one series (one grain + one tuple
of dimension values).  The dataflow routes every on-time rollup row of that series to it,
window after window, in window order, and calls :meth:`SeriesDetector.tick` for a closed
window in which the series had no row.  Everything here is pure and deterministic: no
clock, no I/O, no randomness.

Per window, for every watched signal: assess (score first), step the alert policy, learn
(then learn), and build an :class:`~spanpulse.schemas.alert.Alert` on a ``fire`` or
``resolve`` transition.  Child rows (one dimension level down, same window) only feed the
``contributors`` of an alert and their own small baselines.

State is versioned by :attr:`DetectorConfig.version`: :meth:`SeriesDetector.from_snapshot`
discards state saved under a different configuration or algorithm version.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from spanpulse.detectors import messages
from spanpulse.detectors.budget import BUDGET_LABELS, RESOLVE_RATIO, BudgetBurn, BudgetReading
from spanpulse.detectors.config import ADDITIVE_SIGNALS, DetectorConfig
from spanpulse.detectors.contributors import (
    PERCENTILE_PROXIES,
    ChildBaselines,
    ChildKey,
    child_key,
    row_dimensions,
)
from spanpulse.detectors.policy import AlertPolicy, PolicyParams, Transition
from spanpulse.detectors.signals import UNITS, PercentilePool, Signal, derive_signals
from spanpulse.detectors.watches import (
    Assessment,
    DriftWatch,
    LevelShiftWatch,
    ProportionWatch,
    ThresholdWatch,
    Watch,
)
from spanpulse.schemas.alert import Alert, Contributor, Severity, build_alert

_NO_PERCENTILES: Final = 2**62  # row percentiles come from the pool instead
_CALLS_WEIGHT: Final = 1.0 - 0.5 ** (1.0 / 60.0)
ChildSignals = list[tuple[ChildKey, Mapping[str, Signal], int]]


@dataclass
class _Watched:
    """A watch, its lifecycle, and what the open episode looked like when it fired."""

    watch: Watch
    policy: AlertPolicy
    alert_metric: str
    exemplars: tuple[str, ...] = ()
    last: Assessment | None = None
    severity: Severity = "warning"
    peak: float = 0.0  # highest score of the open (pending or firing) episode


@dataclass
class _Window:
    start: datetime
    end: datetime
    row: Mapping[str, Any] = field(default_factory=dict)
    children: Sequence[Mapping[str, Any]] = ()
    child_signals: ChildSignals = field(default_factory=list)
    t: float = 0.0  # start as epoch seconds, computed once per window (not once per watch)

    def __post_init__(self) -> None:
        self.t = self.start.timestamp()


class SeriesDetector:
    """All detectors of one series; picklable; see the module docstring for the contract."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.version = config.version
        self.grain: str | None = None
        self.dimensions: dict[str, str] = {}
        self._watched: dict[str, _Watched] = {}
        self._children = ChildBaselines(max_children=config.max_children)
        # the children of the last few windows: contributors sum a child's excess over them
        self._recent_children: deque[ChildSignals] = deque(maxlen=config.contributor_windows)
        self._drift_proxies: frozenset[str] = frozenset()  # see ChildBaselines.track
        self._budget: BudgetBurn | None = None
        self._budget_policies: dict[str, AlertPolicy] = {}
        self._budget_severity: dict[str, Severity] = {}
        self._quiet = 0
        self._window_len = timedelta(minutes=1)
        self._pool = PercentilePool(config.min_calls_for_percentiles, config.percentile_max_windows)
        self._typical_calls = 0.0  # EW calls per window (half-life 60 windows)

    # ------------------------------------------------------------------ recovery
    def snapshot(self) -> bytes:
        """Serialize the whole state (what Bytewax recovery stores)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_snapshot(cls, data: bytes | None, config: DetectorConfig) -> SeriesDetector:
        """Restore state saved by :meth:`snapshot`, or start fresh if it is stale or absent."""
        if data is not None:
            state = pickle.loads(data)  # noqa: S301 - our own recovery store, not user input
            if isinstance(state, SeriesDetector) and state.version == config.version:
                return state
        return cls(config)

    # ------------------------------------------------------------------ contract
    @property
    def idle(self) -> bool:
        """True when quiet for ``idle_after_windows`` windows and nothing is open."""
        busy = any(w.policy.busy for w in self._watched.values()) or any(
            p.busy for p in self._budget_policies.values()
        )
        return self._quiet >= self.config.idle_after_windows and not busy

    def needs_cells(self, calls: int) -> bool:
        """Return whether :meth:`observe` needs a row of ``calls`` calls with its cells.

        Only a series whose percentile pool is pooling small windows does; every other row
        arrives with its own percentiles (``signals.with_own_percentiles``).
        """
        return self._pool.needs_cells(calls)

    def observe(
        self, row: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()
    ) -> list[Alert]:
        """Process one on-time rollup row (late rows are ignored) and return its alerts."""
        if row.get("late"):
            return []
        if self.grain is None:
            self._setup(row)
        win = _Window(row["window_start"], row["window_end"], row, children)
        self._window_len = win.end - win.start
        self._quiet = 0
        cfg = self.config
        signals = derive_signals(row, min_calls_for_percentiles=_NO_PERCENTILES)
        signals.update(self._pool.add(row))
        win.child_signals = [
            (
                child_key(row_dimensions(c)),
                derive_signals(c, cfg.min_calls_for_percentiles),
                int(c.get("calls") or 0),
            )
            for c in children
            if not c.get("late")
        ]
        self._recent_children.append(win.child_signals)
        if self._drift_proxies:
            self._children.track(win.child_signals, self._drift_proxies, cfg.drift.level_halflife)
        calls = int(row.get("calls") or 0)
        self._typical_calls += _CALLS_WEIGHT * (calls - self._typical_calls)
        alerts = [a for w in self._watched.values() if (a := self._step(w, signals, win, calls))]
        alerts += self._budget_step(float(row.get("cost_usd") or 0.0), win)
        if not any(w.policy.state in ("pending", "firing") for w in self._watched.values()):
            self._children.learn(win.child_signals)
        return alerts

    def tick(self, window_end: datetime) -> list[Alert]:
        """Close a window with no row for this series: zeros for additive signals, else quiet."""
        if self.grain is None:
            return []
        self._quiet += 1
        self._recent_children.append([])
        self._typical_calls -= _CALLS_WEIGHT * self._typical_calls
        win = _Window(window_end - self._window_len, window_end)
        zeros: dict[str, Signal] = dict.fromkeys(("calls", "call_rate", "cost_usd", "tokens"), 0.0)
        alerts = [a for w in self._watched.values() if (a := self._step(w, zeros, win, 0))]
        return alerts + self._budget_step(0.0, win)

    # ------------------------------------------------------------------ setup
    def _setup(self, row: Mapping[str, Any]) -> None:
        cfg = self.config
        self.grain = str(row.get("grain") or "")
        self.dimensions = row_dimensions(row)
        families = cfg.families(self.grain)
        if "level_shift" in families:
            self._setup_level_shifts()
        if "proportion_shift" in families:
            self._setup_proportions()
        if "drift" in families:
            self._setup_drift()
        if "threshold" in families:
            self._setup_rules()
        tenant = self.dimensions.get("tenant")
        if "budget_burn" in families and self.grain == cfg.budget_grain and tenant is not None:
            day, hour = cfg.budget_per_day(tenant), cfg.budget_per_hour(tenant)
            if day or hour:
                self._budget = BudgetBurn(day, hour, cfg.budget_min_spent_fraction)

    def _setup_level_shifts(self) -> None:
        cfg = self.config
        for metric, direction in cfg.level_shift_metrics.items():
            self._add(
                LevelShiftWatch(
                    metric,
                    cfg.level_shift,
                    direction,
                    cfg.level_shift_threshold,
                    cfg.level_shift_resolve,
                    cfg.level_shift_min_history,
                    cfg.level_shift_min_change,
                    metric in cfg.level_shift_seasonal_metrics,
                    cfg.level_shift_min_calls,
                    cfg.level_shift_unseasoned_ratio,
                    cfg.level_shift_unseasoned_min_history,
                    cfg.level_shift_jump_ratio,
                ),
                cfg.level_shift_policy,
            )

    def _setup_proportions(self) -> None:
        cfg = self.config
        for metric in cfg.proportion_metrics:
            self._add(
                ProportionWatch(
                    metric, cfg.proportion, cfg.proportion_threshold, cfg.proportion_resolve
                ),
                cfg.proportion_policy,
            )

    def _setup_rules(self) -> None:
        cfg = self.config
        for rule in cfg.rules:
            if rule.grains is None or self.grain in rule.grains:
                pol = PolicyParams(
                    rule.for_windows, cfg.rule_resolve_after, cfg.rule_cooldown, strict_pending=True
                )
                self._add(ThresholdWatch(rule), pol, alert_metric=rule.name)

    def _setup_drift(self) -> None:
        cfg = self.config
        self._drift_proxies = frozenset(PERCENTILE_PROXIES.get(m, m) for m in cfg.drift_metrics)
        for metric in cfg.drift_metrics:
            self._add(
                DriftWatch(
                    metric,
                    cfg.drift,
                    cfg.drift_threshold,
                    cfg.drift_resolve,
                    cfg.drift_min_change,
                    cfg.drift_min_calls,
                ),
                cfg.drift_policy,
            )

    def _add(self, watch: Watch, policy: PolicyParams, alert_metric: str | None = None) -> None:
        metric = alert_metric or watch.metric
        self._watched[f"{watch.family}:{metric}"] = _Watched(watch, AlertPolicy(policy), metric)

    # ------------------------------------------------------------------ per window
    def _step(
        self, w: _Watched, signals: Mapping[str, Signal], win: _Window, calls: int
    ) -> Alert | None:
        sig = signals.get(w.watch.metric)
        t = win.t
        if sig is None:
            if win.row:  # traffic but no evidence (pooling, no parse attempts): hold
                return None
            return self._transition(w, w.policy.quiet(win.start, win.end), None, win)
        if isinstance(w.watch, LevelShiftWatch | DriftWatch):  # judge by the usual traffic
            calls = max(calls, round(self._typical_calls))
        a = w.watch.assess(sig, t, calls)
        was_open = w.policy.state in ("pending", "firing")
        transition = w.policy.step(win.start, win.end, a.trigger, a.persist)
        w.peak = max(w.peak, a.score) if was_open else a.score
        w.watch.learn(sig, t)
        return self._transition(w, transition, a, win)

    def _transition(
        self, w: _Watched, tr: Transition | None, a: Assessment | None, win: _Window
    ) -> Alert | None:
        if tr == "fire" and a is not None:
            w.last = a
            return self._fire(w, a, win)
        if tr == "resolve":
            return self._resolve(w, a, win)
        return None

    def _fire(self, w: _Watched, a: Assessment, win: _Window) -> Alert:
        cfg, metric = self.config, w.watch.metric
        parent_rate = a.expected if isinstance(a.details.get("trials"), int) else None
        if isinstance(w.watch, DriftWatch):  # evidence of tens of windows: short levels
            contributors = self._children.explain_levels(metric, cfg.max_contributors)
        else:
            contributors = self._children.explain(
                metric,
                metric in ADDITIVE_SIGNALS,
                self._recent_children if win.row else (),
                parent_rate,
                cfg.max_contributors,
            )
        w.exemplars = self._exemplars(win, contributors)
        started = w.policy.started_at or win.start
        detail = _count_detail(a)
        score = max(w.peak, a.score)  # with for: N the trigger may be an earlier window
        w.severity = self._severity(w, score)
        rule = isinstance(w.watch, ThresholdWatch)
        return self._alert(
            w,
            "firing",
            w.severity,
            win,
            a.observed,
            a.expected,
            score,
            a.threshold,
            started,
            None,
            messages.anomaly_message(
                metric,
                self.dimensions,
                a.observed,
                a.expected,
                started,
                contributors,
                detail,
                versus="threshold" if rule else "baseline",
            ),
            messages.next_step(metric, contributors, self.dimensions),
            contributors,
            a.details,
        )

    def _resolve(self, w: _Watched, a: Assessment | None, win: _Window) -> Alert:
        started = w.policy.started_at or win.start
        ended = w.policy.ended_at or win.end
        expected = a.expected if a is not None else (w.last.expected if w.last else None)
        observed = a.observed if a is not None else None
        threshold = a.threshold if a is not None else (w.last.threshold if w.last else 0.0)
        return self._alert(
            w,
            "resolved",
            w.severity,
            win,
            observed,
            expected,
            a.score if a else 0.0,
            threshold,
            started,
            ended,
            messages.resolved_message(
                w.watch.metric,
                self.dimensions,
                observed,
                expected,
                started,
                ended,
                previous=w.last.expected if w.last else None,
                versus="threshold" if isinstance(w.watch, ThresholdWatch) else "baseline",
            ),
            "No action needed; if the cause is unknown, review this episode's exemplar traces.",
            (),
            a.details if a else {},
        )

    def _alert(
        self,
        w: _Watched,
        status: str,
        severity: Severity,
        win: _Window,
        observed: float | None,
        expected: float | None,
        score: float,
        threshold: float,
        started: datetime,
        ended: datetime | None,
        message: str,
        step: str,
        contributors: Sequence[Contributor],
        details: Mapping[str, float | int | str],
    ) -> Alert:
        return build_alert(
            detector=w.watch.family,
            metric=w.alert_metric,
            grain=self.grain or "",
            dimensions=self.dimensions,
            status="firing" if status == "firing" else "resolved",
            severity=severity,
            window_start=win.start,
            window_end=win.end,
            started_at=started,
            ended_at=ended,
            observed=observed,
            expected=expected,
            score=score,
            threshold=threshold,
            message=message,
            next_step=step,
            exemplar_trace_ids=w.exemplars,
            contributors=contributors,
            unit=UNITS.get(w.watch.metric, ""),
            details=details,
        )

    def _severity(self, w: _Watched, score: float) -> Severity:
        if isinstance(w.watch, ThresholdWatch):
            return w.watch.rule.severity
        return "critical" if score >= self.config.critical_score else "warning"

    def _exemplars(self, win: _Window, contributors: Sequence[Contributor]) -> tuple[str, ...]:
        ids: list[str] = []
        top = {child_key(c.dimensions) for c in contributors[:1]}
        for child in win.children:
            if child_key(row_dimensions(child)) in top:
                ids += list(child.get("exemplar_trace_ids") or [])
        ids += list(win.row.get("exemplar_trace_ids") or [])
        return tuple(dict.fromkeys(ids))[: self.config.max_exemplars]

    # ------------------------------------------------------------------ budgets
    def _budget_step(self, cost: float, win: _Window) -> list[Alert]:
        if self._budget is None:
            return []
        readings = self._budget.observe(cost, win.start, win.end)
        return [a for r in readings if (a := self._budget_reading(r, win))]

    def _budget_reading(self, r: BudgetReading, win: _Window) -> Alert | None:
        pol = self._budget_policies.setdefault(r.metric, AlertPolicy(self.config.budget_policy))
        trigger = r.eligible and r.score >= 1.0
        tr = pol.step(win.start, win.end, trigger, r.score >= RESOLVE_RATIO)
        if tr is None:
            return None
        started = pol.started_at or win.start
        label, where = BUDGET_LABELS[r.metric], messages.where(self.dimensions)
        if tr == "fire":
            self._budget_severity[r.metric] = "critical" if r.score >= 1.5 else "warning"
            message = (
                f"{label} for {where} is ${r.observed:,.2f}, {100 * r.score:.0f}% of its "
                f"${r.budget:,.2f} budget, since {messages.hhmm(started)}."
            )
            step = "Review the tenant's spend by model and feature; consider rate limits."
        else:
            message = (
                f"Resolved: {label} for {where} back to ${r.observed:,.2f} "
                f"({100 * r.score:.0f}% of budget)."
            )
            step = "No action needed."
        return build_alert(
            detector="budget_burn",
            metric=r.metric,
            grain=self.grain or "",
            dimensions=self.dimensions,
            status="firing" if tr == "fire" else "resolved",
            severity=self._budget_severity.get(r.metric, "warning"),
            window_start=win.start,
            window_end=win.end,
            started_at=started,
            ended_at=None if tr == "fire" else (pol.ended_at or win.end),
            observed=r.observed,
            expected=r.budget,
            score=r.score,
            threshold=1.0,
            message=message,
            next_step=step,
            exemplar_trace_ids=tuple(win.row.get("exemplar_trace_ids") or ())[
                : self.config.max_exemplars
            ],
            unit="usd",
            details={"budget_usd": r.budget},
        )


def _count_detail(a: Assessment) -> str:
    k, n = a.details.get("successes"), a.details.get("trials")
    windows = a.details.get("windows")
    if isinstance(k, int) and isinstance(n, int):
        over = (
            f" over the last {windows} windows" if isinstance(windows, int) and windows > 1 else ""
        )
        return f"{k} of {n}{over}"
    return ""

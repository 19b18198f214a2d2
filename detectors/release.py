"""Release regression: a new prompt version (or response model) that is worse than the last.

What it catches: a feature switches from ``prompt_version`` v11 to v12 (or a model alias
starts resolving to a new ``response_model``) and the new version fails parsing, refuses,
hits the length limit, errors, or produces longer outputs/inputs/latency more often than
the previous one did.  Comparing *versions* — not time windows — isolates the release from
the traffic around it.

How: the dataflow routes all rows of a release grain (default ``feature.prompt_version`` and
``model.response_model``) with the same *parent* dimensions (the feature, the model) to one
:class:`ReleaseWatch` (key: :func:`release_key`).  Per version it keeps count totals and
merged histograms: an exponentially decayed "recent" set (``baseline_windows`` half-life)
and the "early" totals of its first ``compare_windows`` windows.  When a version appears
while another one is established (the *incumbent*), its early totals are compared with the
incumbent's recent ones once it has ``min_calls`` calls:

* rates (length share, refusals, content filter, parse failures, errors): beta-binomial
  tail of the new counts given the incumbent's, ``p < max_p``, plus material change
  (``>= min_ratio`` x and ``>= min_delta`` absolute, >= 5 events);
* p95 of input/output tokens and latency, and cost per call: ratio ``>= percentile_ratio``.

Each regressed metric fires once, with the new and old version as contributors.  It resolves
when the version stops receiving traffic for ``resolve_after`` windows (rolled back) or its
recent numbers no longer regress for ``resolve_after`` windows.  At most ``max_versions``
versions are kept (least recently seen dropped).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import polars as pl

from spanpulse.detectors import messages
from spanpulse.detectors.config import DetectorConfig, ReleaseParams
from spanpulse.detectors.contributors import row_dimensions
from spanpulse.detectors.proportion import betabinom_sf
from spanpulse.detectors.series_bank import count_firing
from spanpulse.detectors.signals import PROPORTIONS, UNITS
from spanpulse.schemas.alert import Alert, Contributor, Severity, build_alert
from spanpulse.schemas.histogram import quantile
from spanpulse.schemas.record import OTHER

_COUNTS: Final = (
    "calls",
    "finish_length",
    "refusals",
    "finish_content_filter",
    "errors",
    "parse_attempts",
    "parse_failures",
)
_HISTS: Final = {
    "input_tokens_p95": "input_tokens_hist",
    "output_tokens_p95": "output_tokens_hist",
    "latency_p95": "latency_s_hist",
}
_MIN_EVENTS: Final = 5


def release_key(row: Mapping[str, Any], config: DetectorConfig) -> str | None:
    """Routing key of a row for :class:`ReleaseWatch` (None if its grain is not watched)."""
    grain = str(row.get("grain") or "")
    version_dim = config.release_grains.get(grain)
    if version_dim is None:
        return None
    parent = {k: v for k, v in row_dimensions(row).items() if k != version_dim}
    return grain + "|" + "|".join(f"{k}={v}" for k, v in sorted(parent.items()))


@dataclass
class _Totals:
    """Counts, cost and histograms of one version (decayed or plain)."""

    counts: dict[str, float] = field(default_factory=dict)
    hists: dict[str, dict[int, float]] = field(default_factory=dict)
    cost: float = 0.0
    windows: int = 0

    def add(self, row: Mapping[str, Any], decay: float = 1.0) -> None:
        for col in _COUNTS:
            self.counts[col] = self.counts.get(col, 0.0) * decay + float(row.get(col) or 0)
        self.cost = self.cost * decay + float(row.get("cost_usd") or 0.0)
        for col in _HISTS.values():
            h = self.hists.setdefault(col, {})
            if decay != 1.0:
                for b in h:
                    h[b] *= decay
            for cell in row.get(col) or ():
                h[int(cell["b"])] = h.get(int(cell["b"]), 0.0) + float(cell["n"])
        self.windows += 1

    def calls(self) -> float:
        return self.counts.get("calls", 0.0)

    def value(self, metric: str) -> float | None:
        if metric in PROPORTIONS:
            num, den = PROPORTIONS[metric]
            d = self.counts.get(den, 0.0)
            return self.counts.get(num, 0.0) / d if d > 0 else None
        if metric == "cost_per_call":
            return self.cost / self.calls() if self.calls() > 0 else None
        h = self.hists.get(_HISTS[metric], {})
        return quantile({b: round(n) for b, n in h.items() if round(n) > 0}, 0.95)


@dataclass
class _Version:
    name: str
    first_seen: datetime
    last_seen: int
    recent: _Totals = field(default_factory=_Totals)
    early: _Totals = field(default_factory=_Totals)
    exemplars: tuple[str, ...] = ()


@dataclass
class _Open:
    """An open regression alert for one metric of the candidate version."""

    started_at: datetime
    expected: float | None
    severity: Severity = "warning"
    clear: int = 0


class ReleaseWatch:
    """Release-regression state for one parent series (e.g. one feature); picklable."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.version = config.version
        self.params: ReleaseParams = config.release
        self._decay = 0.5 ** (1.0 / self.params.baseline_windows)
        self._versions: dict[str, _Version] = {}
        self._candidate: str | None = None
        self._incumbent: str | None = None
        self._judged = False
        self._open: dict[str, _Open] = {}
        self._clock = 0
        self._quiet = 0
        self._grain = ""
        self._dims: dict[str, str] = {}
        self._version_dim = ""
        self._window: tuple[datetime, datetime] | None = None
        self._candidate_seen = False

    @property
    def idle(self) -> bool:
        """True when quiet for ``idle_after_windows`` windows and no alert is open."""
        return self._quiet >= self.config.idle_after_windows and not self._open

    def observe(self, row: Mapping[str, Any]) -> list[Alert]:
        """Process one on-time row of any version of this parent series."""
        if row.get("late"):
            return []
        self._grain = str(row.get("grain") or "")
        self._version_dim = self.config.release_grains.get(self._grain, "")
        if not self._version_dim:
            return []
        name = str(row.get(self._version_dim))
        alerts = []
        if self._window is None or self._window[0] != row["window_start"]:
            alerts = self._close_window()
            self._window = (row["window_start"], row["window_end"])
        self._clock += 1
        self._quiet = 0
        v = self._touch(name, row)
        v.recent.add(row, self._decay)
        if v.early.windows < self.params.compare_windows:
            v.early.add(row)
        if name != self._candidate:
            return alerts
        self._candidate_seen = True
        self._dims = row_dimensions(row)
        return alerts + self._evaluate(v, row["window_start"], row["window_end"])

    def tick(self, window_end: datetime) -> list[Alert]:
        """Close a window with no row for this parent series (open alerts count it as quiet)."""
        self._quiet += 1
        alerts = self._close_window()
        self._window = None
        if self._open:
            self._candidate_seen = False
            alerts += self._quiet_candidate(window_end, window_end)
        return alerts

    def _close_window(self) -> list[Alert]:
        """End of a window's rows: a candidate that sent none counts a quiet window."""
        alerts: list[Alert] = []
        if self._window is not None and self._open and not self._candidate_seen:
            alerts = self._quiet_candidate(*self._window)
        self._candidate_seen = False
        return alerts

    # ------------------------------------------------------------------ internals
    def _touch(self, name: str, row: Mapping[str, Any]) -> _Version:
        v = self._versions.get(name)
        if v is None:
            established = self._established()
            v = _Version(name, row["window_start"], self._clock)
            self._versions[name] = v
            if established is not None and not self._open:
                self._candidate, self._incumbent, self._judged = name, established, False
            self._evict()
        v.last_seen = self._clock
        v.exemplars = tuple(row.get("exemplar_trace_ids") or ())[: self.config.max_exemplars]
        return v

    def _established(self) -> str | None:
        best = max(self._versions.values(), key=lambda v: v.recent.calls(), default=None)
        if best is None or best.recent.calls() < self.params.min_calls:
            return None
        return best.name

    def _evict(self) -> None:
        keep = {self._candidate, self._incumbent}
        while len(self._versions) > self.params.max_versions:
            victims = [v for v in self._versions.values() if v.name not in keep]
            if not victims:
                return
            del self._versions[min(victims, key=lambda v: v.last_seen).name]

    def _evaluate(self, v: _Version, start: datetime, end: datetime) -> list[Alert]:
        inc = self._versions.get(self._incumbent or "")
        if inc is None:
            return []
        if not self._judged:
            # Judge the early totals at every window of the comparison period once there are
            # enough calls (not only at the first such window: a regression whose first few
            # events arrive a little late must not escape for good); each metric fires once.
            self._judged = v.early.windows >= self.params.compare_windows
            if v.early.calls() < self.params.min_calls:
                return []
            new = [m for m in self._regressions(v.early, inc) if m not in self._open]
            return [self._fire(m, v, inc, start, end) for m in new]
        regressed = set(self._regressions(v.recent, inc))
        return [
            a
            for m in list(self._open)
            if (a := self._maybe_resolve(m, m in regressed, v, start, end))
        ]

    def _regressions(self, new: _Totals, inc: _Version) -> list[str]:
        out = []
        p = self.params
        for metric, (num, den) in PROPORTIONS.items():
            k, n = round(new.counts.get(num, 0.0)), round(new.counts.get(den, 0.0))
            ki, ni = inc.recent.counts.get(num, 0.0), inc.recent.counts.get(den, 0.0)
            if n <= 0 or ni <= 0 or k < _MIN_EVENTS:
                continue
            rate, base = k / n, ki / ni
            material = rate >= base * p.min_ratio and rate - base >= p.min_delta
            if material and betabinom_sf(k, n, ki + 0.5, ni - ki + 0.5) < p.max_p:
                out.append(metric)
        for metric in (*_HISTS, "cost_per_call"):
            a, b = new.value(metric), inc.recent.value(metric)
            if a is not None and b is not None and b > 0 and a / b >= p.percentile_ratio:
                out.append(metric)
        return out

    def _fire(
        self, metric: str, v: _Version, inc: _Version, start: datetime, end: datetime
    ) -> Alert:
        observed, expected = v.early.value(metric), inc.recent.value(metric)
        big = observed is not None and expected is not None and observed >= 3.0 * expected > 0
        self._open[metric] = _Open(v.first_seen, expected, "critical" if big else "warning")
        dim = self._version_dim
        what = messages.label(metric)
        parent = messages.where({k: x for k, x in self._dims.items() if k != dim})
        message = (
            f"{what} of {parent} on {dim} {v.name} is {messages.fmt(observed, metric)} "
            f"vs {messages.fmt(expected, metric)} on {inc.name} "
            f"({v.early.calls():,.0f} vs {inc.recent.calls():,.0f} calls) "
            f"since {messages.hhmm(v.first_seen)}."
        )
        step = (
            f"Compare {dim} {v.name} with {inc.name} in the exemplar traces; roll back "
            f"{v.name} if the regression is confirmed."
        )
        contributors = (
            Contributor({**self._dims, dim: v.name}, observed, expected, 1.0, int(v.early.calls())),
            Contributor(
                {**self._dims, dim: inc.name}, expected, expected, 0.0, int(inc.recent.calls())
            ),
        )
        return self._alert(
            metric,
            "firing",
            start,
            end,
            observed,
            expected,
            message,
            step,
            contributors,
            v,
            inc,
            severity=self._open[metric].severity,
        )

    def _maybe_resolve(
        self, metric: str, regressed: bool, v: _Version, start: datetime, end: datetime
    ) -> Alert | None:
        st = self._open[metric]
        st.clear = 0 if regressed else st.clear + 1
        if st.clear < self.params.resolve_after:
            return None
        return self._resolved(
            metric, v.recent.value(metric), v, start, end, "its numbers are back in line"
        )

    def _quiet_candidate(self, start: datetime, end: datetime) -> list[Alert]:
        v = self._versions.get(self._candidate or "")
        if v is None or not self._open:
            return []
        alerts = []
        for metric in list(self._open):
            st = self._open[metric]
            st.clear += 1
            if st.clear >= self.params.resolve_after:
                alerts.append(
                    self._resolved(metric, None, v, start, end, "it no longer receives traffic")
                )
        return alerts

    def _resolved(
        self,
        metric: str,
        observed: float | None,
        v: _Version,
        start: datetime,
        end: datetime,
        why: str,
    ) -> Alert:
        st = self._open.pop(metric)
        message = (
            f"Resolved: {messages.label(metric)} regression of {self._version_dim} {v.name}: {why}."
        )
        return self._alert(
            metric,
            "resolved",
            start,
            end,
            observed,
            st.expected,
            message,
            "No action needed.",
            (),
            v,
            None,
            st.started_at,
            end,
            severity=st.severity,
        )

    def _alert(
        self,
        metric: str,
        status: str,
        start: datetime,
        end: datetime,
        observed: float | None,
        expected: float | None,
        message: str,
        step: str,
        contributors: tuple[Contributor, ...],
        v: _Version,
        inc: _Version | None,
        started: datetime | None = None,
        ended: datetime | None = None,
        *,
        severity: Severity = "warning",
    ) -> Alert:
        details: dict[str, float | int | str] = {
            "version": v.name,
            "new_calls": int(v.early.calls()),
        }
        if inc is not None:
            details.update(previous_version=inc.name, previous_calls=int(inc.recent.calls()))
        ratio = observed / expected if observed is not None and expected else None
        return build_alert(
            detector="release_regression",
            metric=metric,
            grain=self._grain,
            dimensions={**self._dims, self._version_dim: v.name},
            status="firing" if status == "firing" else "resolved",
            severity=severity,
            window_start=start,
            window_end=end,
            started_at=started or v.first_seen,
            ended_at=ended,
            observed=observed,
            expected=expected,
            score=ratio if ratio is not None else 0.0,
            threshold=self.params.min_ratio
            if metric in PROPORTIONS
            else self.params.percentile_ratio,
            message=message,
            next_step=step,
            exemplar_trace_ids=v.exemplars,
            contributors=contributors,
            unit=UNITS.get(metric, ""),
            details=details,
        )


class ReleaseBank:
    """All :class:`ReleaseWatch` es of one release grain, fed one closed window at a time.

    Drop-in next to the dataflow's per-grain detector bank: the stateful step keyed by grain
    calls :meth:`observe_window` with the window's rows of that grain.  Rows are routed by
    :func:`release_key` (the parent dimensions), parents without a row get a tick, and
    watches that have been idle long enough are dropped.
    """

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.version = config.version
        self.watches: dict[str, ReleaseWatch] = {}
        self.firing: Counter[tuple[str, str]] = Counter()
        self.last_window: datetime | None = None

    def observe_window(
        self, rows: pl.DataFrame, children: pl.DataFrame | None = None
    ) -> list[Alert]:
        """Feed one closed window's rows of a release grain; return the alerts raised."""
        if rows.is_empty():
            return []
        window_end = rows["window_end"][0]
        if self.last_window is not None and window_end <= self.last_window:
            return []  # a window re-emitted after a restart was already processed
        self.last_window = window_end
        alerts: list[Alert] = []
        seen: set[str] = set()
        for row in rows.iter_rows(named=True):
            key = release_key(row, self.config)
            if key is None or row.get("late") or OTHER in row_dimensions(row).values():
                continue
            seen.add(key)
            watch = self.watches.setdefault(key, ReleaseWatch(self.config))
            alerts += watch.observe(row)
        for key, watch in list(self.watches.items()):
            if key not in seen:
                alerts += watch.tick(window_end)
                if watch.idle:
                    del self.watches[key]
        count_firing(self.firing, alerts)
        return alerts

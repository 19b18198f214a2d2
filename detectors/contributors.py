"""Which child series explains a parent's change ("which model drove the cost spike").

Why: "tenant acme's spend tripled" is half an alert; "…and gpt-4o on feature search is 85 %
of the increase" is the other half.  The parent's engine receives the rows one dimension
level down for the same window and keeps a small baseline per child, so a contributor is
ranked by its *excess over its own normal*, not by its size.

* Additive signals (cost, calls, tokens): ``excess = child value - child baseline``.
* Proportions: ``excess = child successes - child baseline rate * child trials``
  (the extra events this child produced).
* Other values (per-call means): ``excess = (value - baseline) * calls``, weighted by the
  child's share of calls.
* Percentiles rank children by the excess of the per-call mean of the same quantity
  (:data:`PERCENTILE_PROXIES`): a child is a slice of the parent's calls, usually far below the
  50 calls a window needs for a p95 (the p95 of 8 calls is their maximum), so a tenant's
  output-tokens p95 alert would otherwise name no model at all.  Every child with calls has a
  mean, and the slice whose mean rose with many calls is the one that moved the parent's
  distribution.  The contributor's ``observed``/``expected`` stay the child's own p95 and its
  baseline when it has them (null otherwise), so no number changes its meaning.

``share`` is the child's excess over the total positive excess of all children of its
breakdown (when a parent has several, e.g. by model and by feature, the one whose top child
explains the most is reported).  A child
never seen before has a zero baseline for additive signals (it explains all it adds) and
the parent's rate for proportions.  Child baselines learn only while the parent is calm,
at most ``max_children`` are kept -- the busiest (exponentially weighted calls), because a
model has hundreds of tenant children and the ones that can explain a change of the model
are its big ones -- so memory is bounded.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any, Final

from spanpulse.detectors.signals import Signal, signal_value
from spanpulse.schemas.alert import Contributor

ChildKey = tuple[tuple[str, str], ...]

#: Percentile signal -> the per-call mean children are ranked by (see the module docstring).
#: Context fill is input tokens over the model's context window, so among the children of one
#: series their input tokens per call move with it.
PERCENTILE_PROXIES: Final[Mapping[str, str]] = {
    "input_tokens_p95": "input_tokens_per_call",
    "output_tokens_p95": "output_tokens_per_call",
    "latency_p95": "latency_mean",
    "context_fill_p95": "input_tokens_per_call",
}


def child_key(dimensions: Mapping[str, str]) -> ChildKey:
    """Return the hashable, order-free key of a child's dimensions."""
    return tuple(sorted(dimensions.items()))


class ChildBaselines:
    """Exponentially weighted per-child baselines of the watched signals."""

    def __init__(self, halflife: float = 60.0, max_children: int = 50) -> None:
        self._alpha = 1.0 - 0.5 ** (1.0 / halflife)
        self._max = max_children
        self._clock = 0
        self._stats: dict[ChildKey, dict[str, tuple[float, float]]] = {}
        self._seen: dict[ChildKey, int] = {}
        self._calls: dict[ChildKey, float] = {}
        # short levels of a few per-call signals, updated every window: see :meth:`track`
        self._levels: dict[ChildKey, dict[str, tuple[float, float]]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore state pickled before a field was added (it gets its default)."""
        self.__dict__.update({"_levels": {}, **state})

    def __len__(self) -> int:
        return len(self._stats)

    def learn(self, children: Sequence[tuple[ChildKey, Mapping[str, Signal], int]]) -> None:
        """Fold one calm window's children ``(key, signals, calls)`` into their baselines."""
        self._clock += 1
        present = set()
        for key, signals, calls in children:
            present.add(key)
            old_calls = self._calls.get(key)
            self._calls[key] = (
                float(calls) if old_calls is None else old_calls + self._alpha * (calls - old_calls)
            )
            stats = self._stats.setdefault(key, {})
            for name, sig in signals.items():
                num, den = (
                    (float(sig[0]), float(sig[1])) if isinstance(sig, tuple) else (float(sig), 1.0)
                )
                old = stats.get(name)
                stats[name] = (
                    (num, den)
                    if old is None
                    else (
                        old[0] + self._alpha * (num - old[0]),
                        old[1] + self._alpha * (den - old[1]),
                    )
                )
            self._seen[key] = self._clock
        for key in self._calls.keys() - present:  # absent this window: zero calls
            self._calls[key] -= self._alpha * self._calls[key]
        if len(self._stats) > self._max:
            keep = set(heapq.nlargest(self._max, self._stats, key=self._rank))
            for key in list(self._stats):
                if key not in keep:
                    del self._stats[key], self._seen[key], self._calls[key]

    def track(
        self,
        children: Sequence[tuple[ChildKey, Mapping[str, Signal], int]],
        names: frozenset[str],
        halflife: float,
    ) -> None:
        """Fold every window's children, calm or not, into short levels of the ``names`` signals.

        Why: a drift alarm sums evidence over tens of windows, so neither the firing window
        nor the last few say which child crept -- one tenant's prompts that grew over the
        hour, or the feature whose bloat already ended while the alarm caught up.  A child's
        short level (per-call mean over about ``halflife`` windows, weighted by calls) against
        its long baseline does (:meth:`explain_levels`).  Only per-call signals are tracked, a
        few per child, and only children with a baseline (the busiest kept ones); they are
        forgotten with it.
        """
        alpha = 1.0 - 0.5 ** (1.0 / halflife)
        for key, signals, calls in children:
            if key not in self._stats:  # no baseline: never ranked (a model has 500 tenants)
                continue
            for name in names:
                sig = signals.get(name)
                if sig is None or isinstance(sig, tuple) or calls <= 0:
                    continue
                levels = self._levels.setdefault(key, {})
                num, den = levels.get(name, (0.0, 0.0))
                # EW sums of value x calls and of calls: a call-weighted recent mean
                levels[name] = (
                    num + alpha * (float(sig) * calls - num),
                    den + alpha * (calls - den),
                )
        if len(self._levels) > len(self._stats):
            for key in [k for k in self._levels if k not in self._stats]:
                del self._levels[key]

    def explain_levels(self, name: str, limit: int) -> list[Contributor]:
        """Rank children by ``(short level - baseline) x recent calls`` of ``name``'s proxy.

        The drift counterpart of :meth:`explain`: see :meth:`track`.
        """
        rank_by = PERCENTILE_PROXIES.get(name, name)
        groups: dict[tuple[str, ...], list[tuple[float, Contributor]]] = {}
        for key, levels in self._levels.items():
            level, base = levels.get(rank_by), self.baseline(key, rank_by)
            if level is None or base is None or level[1] <= 0:
                continue
            recent = level[0] / level[1]
            excess = (recent - base[0]) * level[1]
            own = self.baseline(key, name)  # the proxy's baseline when rank_by == name
            observed = recent if rank_by == name else None
            expected = None if own is None else own[0]
            contributor = Contributor(dict(key), observed, expected, None, round(level[1]))
            groups.setdefault(tuple(d for d, _ in key), []).append((excess, contributor))
        return _best_breakdown(groups, limit)

    def _rank(self, key: ChildKey) -> tuple[float, int]:
        """Busiest first, then most recently seen (ties are broken deterministically)."""
        return (self._calls.get(key, 0.0), self._seen.get(key, 0))

    def baseline(self, key: ChildKey, name: str) -> tuple[float, float] | None:
        """Return the child's baseline ``(numerator, denominator)`` of ``name``, if any."""
        return self._stats.get(key, {}).get(name)

    def explain(
        self,
        name: str,
        additive: bool,
        windows: Sequence[Sequence[tuple[ChildKey, Mapping[str, Signal], int]]],
        parent_rate: float | None,
        limit: int,
    ) -> list[Contributor]:
        """Rank children by their excess in ``name``; return the top ``limit`` positive ones.

        ``windows`` holds the children of the alert's last few windows, oldest first, and a
        child's excess is summed over them: an alert fires on evidence gathered over several
        windows (a proportion test's counts, a CUSUM, ``for: N``), so the window that tipped
        it over may hold little of the change -- one error on another model can be all the
        excess of the firing window of a tenant whose error rate an outage on a third model
        raised for three windows.  Each contributor reports the child's latest window.

        Children may come from several breakdowns (``tenant.model`` and ``tenant.feature``
        rows of one tenant): each breakdown is ranked on its own, since each one splits the
        same calls, and the breakdown whose top child explains the largest share wins -- the
        alert names the model *or* the feature that drove the change, whichever explains more.
        """
        rank_by = PERCENTILE_PROXIES.get(name, name)
        excesses: dict[ChildKey, float] = {}
        latest: dict[ChildKey, Contributor] = {}
        for children in windows:
            for key, signals, calls in children:
                sig = signals.get(rank_by)
                if sig is None:
                    continue
                excess, expected = self._excess(key, rank_by, sig, additive, calls, parent_rate)
                excesses[key] = excesses.get(key, 0.0) + excess
                if rank_by != name:  # report the child's own percentile, not the proxy
                    own, base = signals.get(name), self.baseline(key, name)
                    latest[key] = Contributor(
                        dict(key),
                        None if own is None else signal_value(own),
                        None if base is None else base[0],
                        None,
                        calls,
                    )
                else:
                    latest[key] = _contributor(key, sig, expected, calls)
        groups: dict[tuple[str, ...], list[tuple[float, Contributor]]] = {}
        for key, excess in excesses.items():
            groups.setdefault(tuple(d for d, _ in key), []).append((excess, latest[key]))
        return _best_breakdown(groups, limit)

    def _excess(
        self,
        key: ChildKey,
        name: str,
        sig: Signal,
        additive: bool,
        calls: int,
        parent_rate: float | None,
    ) -> tuple[float, float | None]:
        base = self.baseline(key, name)
        if isinstance(sig, tuple):
            k, n = sig
            rate = base[0] / base[1] if base and base[1] > 0 else parent_rate or 0.0
            return k - rate * n, rate
        value = float(sig)
        expected = base[0] if base else (0.0 if additive else None)
        if additive:
            return value - (expected or 0.0), expected
        if expected is None:
            return 0.0, None
        return (value - expected) * calls, expected


def _best_breakdown(
    groups: Mapping[tuple[str, ...], Sequence[tuple[float, Contributor]]], limit: int
) -> list[Contributor]:
    """Shares of each breakdown's positive excess; the breakdown whose top child explains most."""
    best: list[Contributor] = []
    for rows in groups.values():
        total = sum(e for e, _ in rows if e > 0)
        if total <= 0:
            continue
        ranked = sorted((r for r in rows if r[0] > 0), key=lambda r: -r[0])[:limit]
        shares = [_with_share(c, e / total) for e, c in ranked]
        if not best or (shares[0].share or 0.0) > (best[0].share or 0.0):
            best = shares
    return best


def _contributor(key: ChildKey, sig: Signal, expected: float | None, calls: int) -> Contributor:
    return Contributor(dict(key), signal_value(sig), expected, None, calls)


def _with_share(c: Contributor, share: float) -> Contributor:
    return Contributor(c.dimensions, c.observed, c.expected, share, c.calls)


def row_dimensions(row: Mapping[str, Any]) -> dict[str, str]:
    """Return ``{dimension: value}`` for the dimensions named by the row's grain."""
    grain = str(row.get("grain") or "")
    return {d: str(row.get(d)) for d in grain.split(".") if d}

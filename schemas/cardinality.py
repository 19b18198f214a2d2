"""Bounded dimension values with exact totals: sticky heavy hitters plus one overflow bucket.

Why: dimension values come straight from span attributes (tenant ids, prompt versions), so a
misbehaving client can mint a new value per call and blow up the number of Parquet rows, DuckDB
groups and detector keys.  Following the OTel spanmetrics connector, every dimension of a grain
has a value limit, every grain a series limit, and whatever is not admitted is folded into the
single value ``__other__`` -- with the folded rows *re-aggregated*, so every total stays exact.

Policy (``docs/cardinality.md`` states the error bounds):

* **Tracking.** Per dimension, a Misra-Gries summary of ``k = capacity_factor * limit``
  counters of decayed call counts (the counter form of Space-Saving; the two are equivalent,
  and this one merges a whole window at once).  Any value whose decayed traffic exceeds
  ``N / (k + 1)`` is guaranteed to be tracked, ``N`` being the decayed total.
* **Admission.** Tracked values are ranked by counter (ties by value).  A value in the top
  ``limit`` for ``admit_after`` consecutive windows is admitted while a slot is free.
* **Stickiness.** An admitted value stays until it has been out of the top ``limit`` for
  ``evict_after`` consecutive windows or has had no traffic for ``idle_windows`` windows, so
  two values alternating at the boundary never flap.  The admitted set never exceeds ``limit``.
* **Series limit.** After folding, a window keeps at most ``series_limit`` rows: the smallest
  (by calls, ties by values) are folded into the all-``__other__`` tuple.
* ``__unknown__``, ``__other__`` and nulls are reserved: never counted, never folded.

The window clock, streaks and evictions only move on on-time rows of a window newer than the
last one seen.  Late rows and re-emitted windows add their traffic (aged by the windows since)
and may take a *free* slot, then are folded with the admitted set.  One instance per grain.
"""

from __future__ import annotations

import heapq
import pickle
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import polars as pl

from spanpulse.schemas.histogram import merge_hist_frame
from spanpulse.schemas.record import DIMENSIONS, OTHER, UNKNOWN
from spanpulse.schemas.rollup_schema import (
    ADDITIVE_COLUMNS,
    HIST_COLUMNS,
    ROLLUP_SCHEMA,
    conform_rollups,
    cost_usd_expr,
)

__all__ = ["CardinalityLimiter"]

_VERSION: Final = "spanpulse.cardinality/1"
_RESERVED: Final = (OTHER, UNKNOWN)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPSILON: Final = 1e-9  # counters below this are float dust, not traffic
_KEY: Final = "_card_key"
_FOLDED: Final = "_card_folded"
_GROUP_COLS: Final = ("window_start", "window_end", "grain", "late", *DIMENSIONS)
#: What :func:`_key_expr` identifies a row by (nulls equal to nulls, as there).
_UNIQUE_BY: Final = ("window_start", "late", *DIMENSIONS)


class _DimensionAdmission:
    """Heavy-hitter tracking and sticky admission for one dimension of one grain."""

    def __init__(self, limit: int, capacity: int) -> None:
        self.limit = limit
        self.capacity = capacity
        self.total = 0.0
        # value -> [counter, windows in a row within the top `limit`, window index last seen]
        self.candidates: dict[str, list[float]] = {}
        # value -> [windows in a row out of the top `limit`, window index last seen]
        self.admitted: dict[str, list[int]] = {}

    def observe(self, weights: Mapping[str, int], factor: float, window: int) -> None:
        """Decay every counter by ``factor``, then merge this window's exact call counts."""
        self.total = self.total * factor + float(sum(weights.values()))
        for entry in self.candidates.values():
            entry[0] *= factor
        for value, weight in weights.items():
            entry = self.candidates.setdefault(value, [0.0, 0.0, float(window)])
            entry[0] += float(weight)
            entry[2] = float(window)
        for value in weights.keys() & self.admitted.keys():
            self.admitted[value][1] = window
        self._prune()

    def _prune(self) -> None:
        """Misra-Gries merge step: subtract the (k+1)-th largest counter, keep positive ones."""
        cut = 0.0
        if len(self.candidates) > self.capacity:
            cut = heapq.nlargest(self.capacity + 1, (e[0] for e in self.candidates.values()))[-1]
        self.candidates = {
            value: [entry[0] - cut, entry[1], entry[2]]
            for value, entry in self.candidates.items()
            if entry[0] - cut > _EPSILON
        }

    def top(self, min_share: float) -> list[str]:
        """Return the ``limit`` values with the highest counters (ties by value), floor applied."""
        floor = min_share * self.total
        eligible = [(-e[0], v) for v, e in self.candidates.items() if e[0] >= floor]
        return [v for _, v in heapq.nsmallest(self.limit, eligible)]

    def decide(
        self, window: int, min_share: float, admit_after: int, evict_after: int, idle: int
    ) -> None:
        """Update streaks, evict stale or long-outranked values, admit ranked ones if slots free."""
        self.candidates = {v: e for v, e in self.candidates.items() if window - e[2] < idle}
        ranked = self.top(min_share)
        top = set(ranked)
        for value, entry in self.candidates.items():
            entry[1] = entry[1] + 1 if value in top else 0
        for value, state in list(self.admitted.items()):
            state[0] = 0 if value in top else state[0] + 1
            if state[0] >= evict_after or window - state[1] >= idle:
                del self.admitted[value]
        for value in ranked:
            if len(self.admitted) >= self.limit:
                break
            if value not in self.admitted and self.candidates[value][1] >= admit_after:
                self.admitted[value] = [0, int(self.candidates[value][2])]

    def observe_late(
        self,
        weights: Mapping[str, int],
        factor: float,
        window: int,
        min_share: float,
        admit_after: int,
    ) -> None:
        """Count a late window's traffic (aged by ``factor``) and let it take free slots.

        Why: a tenant whose exporter always lags (or whose first calls arrive late) would
        otherwise stay in ``__other__`` with hundreds of slots free.  Late traffic never moves
        streaks or evicts anything, so a late batch cannot push an incumbent out; with a full
        admitted set it only adds to the counters.  Admission follows the on-time rule, with
        the late batch counting as one window ranked in.
        """
        self.total += factor * float(sum(weights.values()))
        for value, weight in weights.items():
            entry = self.candidates.setdefault(value, [0.0, 0.0, float(window)])
            entry[0] += factor * float(weight)
            entry[2] = max(entry[2], float(window))
        for value in weights.keys() & self.admitted.keys():
            self.admitted[value][1] = max(self.admitted[value][1], window)
        self._prune()
        for value in self.top(min_share):
            if len(self.admitted) >= self.limit:
                break
            entry = self.candidates[value]
            if value in weights and value not in self.admitted and entry[1] + 1 >= admit_after:
                self.admitted[value] = [0, int(entry[2])]

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "candidates": sorted([v, *e] for v, e in self.candidates.items()),
            "admitted": sorted([v, *s] for v, s in self.admitted.items()),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.total = float(state["total"])
        self.candidates = {row[0]: [float(x) for x in row[1:]] for row in state["candidates"]}
        self.admitted = {row[0]: [int(x) for x in row[1:]] for row in state["admitted"]}


class CardinalityLimiter:
    """Folds non-admitted dimension values of one grain into ``__other__``, keeping totals exact.

    Args:
        grain_dims: the grain's dimensions in configured order (the grain name joins them).
        limits: admitted values per dimension; a grain dimension without an entry is not limited
            per value (the series limit still bounds its rows).
        series_limit: rows per window (and lateness) after folding.
        decay: per-window factor applied to traffic counters (recency weighting), in (0, 1].
        admit_after: windows in a row a value must rank within the limit before admission.
        min_share: a value must hold at least this share of the decayed traffic to be admitted.
        idle_windows: windows without traffic after which a value is forgotten.
        evict_after: windows in a row out of the top ``limit`` before an admitted value leaves.
        capacity_factor: tracked candidates per admitted slot (``k = capacity_factor * limit``).
        max_exemplars: trace ids kept when folded rows are merged.
    """

    def __init__(
        self,
        grain_dims: Sequence[str],
        limits: Mapping[str, int],
        series_limit: int,
        *,
        decay: float = 0.9,
        admit_after: int = 1,
        min_share: float = 0.0,
        idle_windows: int = 60,
        evict_after: int = 3,
        capacity_factor: int = 4,
        max_exemplars: int = 3,
    ) -> None:
        self.grain_dims = tuple(grain_dims)
        self.grain = ".".join(self.grain_dims)
        self.limits = {d: int(limits[d]) for d in self.grain_dims if d in limits}
        self.series_limit = series_limit
        self.decay = decay
        self.admit_after = admit_after
        self.min_share = min_share
        self.idle_windows = idle_windows
        self.evict_after = evict_after
        self.capacity_factor = capacity_factor
        self.max_exemplars = max_exemplars
        self._validate(limits)
        self._dims = {
            d: _DimensionAdmission(n, capacity_factor * n) for d, n in self.limits.items()
        }
        self._last_window: int | None = None
        self._counters = {
            "windows": 0,
            "overflow_calls": 0,
            "folded_rows": 0,
            "series_folded_rows": 0,
        }

    def _validate(self, limits: Mapping[str, int]) -> None:
        checks = [
            (bool(self.grain_dims), "grain_dims must name at least one dimension"),
            (set(self.grain_dims) <= set(DIMENSIONS), f"grain_dims must be among {DIMENSIONS}"),
            (len(set(self.grain_dims)) == len(self.grain_dims), "grain_dims repeats a dimension"),
            (set(limits) <= set(DIMENSIONS), f"limits keys must be among {DIMENSIONS}"),
            (all(n >= 1 for n in limits.values()), "every limit must be >= 1"),
            (self.series_limit >= 1, "series_limit must be >= 1"),
            (0.0 < self.decay <= 1.0, "decay must be in (0, 1]"),
            (self.admit_after >= 1 and self.evict_after >= 1, "admit/evict_after must be >= 1"),
            (0.0 <= self.min_share < 1.0, "min_share must be in [0, 1)"),
            (self.idle_windows >= 1 and self.capacity_factor >= 1, "windows/factor must be >= 1"),
            (self.max_exemplars >= 0, "max_exemplars must be >= 0"),
        ]
        for ok, problem in checks:
            if not ok:
                msg = f"CardinalityLimiter({self.grain!r}): {problem}"
                raise ValueError(msg)

    def __deepcopy__(self, memo: dict[int, Any]) -> CardinalityLimiter:
        """Copy through pickle (Bytewax deep-copies state every epoch; pickle is far cheaper)."""
        copied: CardinalityLimiter = pickle.loads(pickle.dumps(self, pickle.HIGHEST_PROTOCOL))  # noqa: S301
        return copied

    @property
    def version(self) -> str:
        """State key: algorithm and every parameter, so a changed config starts fresh."""
        limits = ",".join(f"{d}={n}" for d, n in sorted(self.limits.items()))
        return (
            f"{_VERSION};grain={self.grain};limits={limits};series={self.series_limit};"
            f"decay={self.decay!r};admit_after={self.admit_after};evict_after={self.evict_after};"
            f"min_share={self.min_share!r};idle={self.idle_windows};k={self.capacity_factor}"
        )

    # -- the window step ---------------------------------------------------------------------

    def apply(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Fold one window's rows (contract columns) of this grain; totals are preserved exactly."""
        if rows.is_empty():
            empty: pl.DataFrame = conform_rollups(rows)
            return empty
        rows = self._checked(rows)
        starts = rows.get_column("window_start").unique().to_list()
        parts = []
        for window_start in sorted(starts):
            part = rows if len(starts) == 1 else rows.filter(pl.col("window_start") == window_start)
            self._observe(part)
            parts.append(self._map_values(part))
        mapped = self._limit_series(parts[0] if len(parts) == 1 else pl.concat(parts))
        return self._reaggregate(mapped)

    def _checked(self, rows: pl.DataFrame) -> pl.DataFrame:
        rows = conform_rollups(rows)
        grains = rows.get_column("grain").unique().to_list()
        if grains != [self.grain]:
            msg = f"CardinalityLimiter for grain {self.grain!r} got rows of grains {grains}"
            raise ValueError(msg)
        if rows.get_column("window_start").null_count():
            msg = "rollup rows need a window_start; got nulls"
            raise ValueError(msg)
        return rows

    def _observe(self, part: pl.DataFrame) -> None:
        """Move the state forward by this window; late or re-emitted rows only add traffic."""
        late_flags = part.get_column("late")
        on_time = part.filter(~pl.col("late")) if late_flags.any() else part
        window = _window_index(part["window_start"][0], part["window_end"][0])
        if on_time.is_empty() or (self._last_window is not None and window <= self._last_window):
            self._observe_late(part, window)
            return
        late = part.filter(pl.col("late")) if late_flags.any() else part.clear()
        elapsed = 1 if self._last_window is None else window - self._last_window
        factor = self.decay**elapsed  # underflows to 0.0 after a long gap: a fresh start
        for dim, admission in self._dims.items():
            admission.observe(_weights(on_time, dim), factor, window)
            admission.decide(
                window, self.min_share, self.admit_after, self.evict_after, self.idle_windows
            )
        self._last_window = window
        self._counters["windows"] += 1
        if not late.is_empty():
            self._observe_late(late, window)

    def _observe_late(self, part: pl.DataFrame, window: int) -> None:
        """Add a late (or re-emitted) window's traffic, aged by how far the clock has moved."""
        now = window if self._last_window is None else max(window, self._last_window)
        if now - window >= self.idle_windows:
            return  # older than anything the state remembers
        factor = self.decay ** (now - window)
        for dim, admission in self._dims.items():
            admission.observe_late(
                _weights(part, dim), factor, window, self.min_share, self.admit_after
            )

    def _map_values(self, part: pl.DataFrame) -> pl.DataFrame:
        """Replace non-admitted values by ``__other__`` and flag the rows that changed."""
        if all(
            v is None or v in admission.admitted or v in _RESERVED
            for dim, admission in self._dims.items()
            for v in part.get_column(dim).unique().to_list()
        ):  # the usual window: every value admitted (a set lookup beats two Polars passes)
            return part.with_columns(pl.lit(False).alias(_FOLDED))
        exprs, changed = [], []
        for dim, admission in self._dims.items():
            col = pl.col(dim)
            keep = col.is_null() | col.is_in([*_RESERVED, *sorted(admission.admitted)])
            exprs.append(pl.when(keep).then(col).otherwise(pl.lit(OTHER)).alias(dim))
            changed.append(~keep)
        folded = pl.any_horizontal(changed) if changed else pl.lit(False)
        return part.with_columns(folded.alias(_FOLDED)).with_columns(exprs)

    def _limit_series(self, mapped: pl.DataFrame) -> pl.DataFrame:
        """Fold the smallest tuples of each (window, late) beyond the series limit."""
        part, dims = ["window_start", "late"], list(self.grain_dims)
        if mapped.height <= self.series_limit:  # never more series than rows
            return mapped
        sizes = mapped.group_by(*part, *dims).agg(pl.col("calls").sum())
        if sizes.group_by(part).len()["len"].max() <= self.series_limit:  # type: ignore[operator]
            return mapped
        fold = (
            sizes.filter(pl.len().over(part) > self.series_limit)
            .filter(~pl.all_horizontal(pl.col(d) == OTHER for d in dims).fill_null(False))
            .sort([*part, "calls", *dims], descending=[False, False, True, *([False] * len(dims))])
            .filter(pl.int_range(pl.len()).over(part) >= self.series_limit - 1)
            .select(*part, *dims, pl.lit(True).alias("_series"))
        )
        flagged = mapped.join(fold, on=[*part, *dims], how="left", nulls_equal=True)
        flagged = flagged.with_columns(pl.col("_series").fill_null(False))
        self._counters["series_folded_rows"] += int(flagged["_series"].sum())
        series = pl.col("_series")
        return flagged.with_columns(
            *(pl.when(series).then(pl.lit(OTHER)).otherwise(pl.col(d)).alias(d) for d in dims),
            (pl.col(_FOLDED) | series).alias(_FOLDED),
        ).drop("_series")

    def _reaggregate(self, mapped: pl.DataFrame) -> pl.DataFrame:
        """Merge rows that now share a key: sums, merged histograms, first exemplars."""
        if not mapped.get_column(_FOLDED).any() and mapped.select(_UNIQUE_BY).is_unique().all():
            return _sorted(mapped.drop(_FOLDED))  # nothing folded, nothing to merge
        folded = mapped.filter(pl.col(_FOLDED))
        self._counters["folded_rows"] += folded.height
        self._counters["overflow_calls"] += int(folded["calls"].sum())
        keyed = mapped.with_columns(
            (pl.col("overflow_calls") + pl.when(pl.col(_FOLDED)).then("calls").otherwise(0)).alias(
                "overflow_calls"
            ),
            _key_expr(),
        ).drop(_FOLDED)
        if keyed[_KEY].n_unique() == keyed.height:
            return _sorted(keyed.drop(_KEY))
        return _sorted(_merge_rows(keyed, self.max_exemplars))

    # -- state ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable state (recoverable with :meth:`from_snapshot`)."""
        return {
            "version": self.version,
            "last_window": self._last_window,
            "dims": {d: a.snapshot() for d, a in self._dims.items()},
            "counters": dict(self._counters),
        }

    @classmethod
    def from_snapshot(
        cls,
        snapshot: Mapping[str, Any] | None,
        grain_dims: Sequence[str],
        limits: Mapping[str, int],
        series_limit: int,
        **options: Any,
    ) -> CardinalityLimiter:
        """Build a limiter from the current config; restore ``snapshot`` if its version matches."""
        limiter = cls(grain_dims, limits, series_limit, **options)
        if snapshot is None or snapshot.get("version") != limiter.version:
            return limiter
        limiter._last_window = snapshot["last_window"]
        for dim, state in snapshot["dims"].items():
            limiter._dims[dim].restore(state)
        limiter._counters.update(snapshot["counters"])
        return limiter

    def stats(self) -> dict[str, int]:
        """Admitted and tracked values per dimension, plus cumulative overflow counters."""
        out = dict(self._counters)
        for dim, admission in self._dims.items():
            out[f"admitted.{dim}"] = len(admission.admitted)
            out[f"candidates.{dim}"] = len(admission.candidates)
        return out

    def admitted(self, dim: str) -> frozenset[str]:
        """Return the values of ``dim`` currently admitted (for tests and diagnostics)."""
        return frozenset(self._dims[dim].admitted)


def _window_index(start: datetime, end: datetime) -> int:
    """Absolute window number, so idle time and decay count windows without traffic too."""
    length = end - start
    if length.total_seconds() <= 0:
        msg = f"window_end {end} must be after window_start {start}"
        raise ValueError(msg)
    return (start - _EPOCH) // length


def _weights(rows: pl.DataFrame, dim: str) -> dict[str, int]:
    """Sum calls per non-reserved value of ``dim`` in one window.

    A plain loop: a window of one grain holds a few thousand rows at most, and a Polars
    filter + group-by cost about 1 ms per call in fixed overhead, per dimension and window.
    """
    sums: dict[str, int] = {}
    values, counts = rows.get_column(dim).to_list(), rows.get_column("calls").to_list()
    for value, calls in zip(values, counts, strict=True):
        if value is not None and value not in _RESERVED and calls is not None:
            sums[value] = sums.get(value, 0) + calls
    return {value: calls for value, calls in sums.items() if calls > 0}


def _key_expr() -> pl.Expr:
    parts = [pl.col("window_start").dt.epoch("us").cast(pl.String), pl.col("late").cast(pl.String)]
    parts += [pl.col(d).fill_null("\x00") for d in DIMENSIONS]
    return pl.concat_str(parts, separator="\x1f").alias(_KEY)


def _merge_rows(keyed: pl.DataFrame, max_exemplars: int) -> pl.DataFrame:
    """One row per key: additive sums, cost_usd recomputed, histograms merged by bucket."""
    bad = pl.col("errors") + pl.col("finish_length") + pl.col("finish_content_filter")
    ordered = keyed.sort(
        [bad, pl.col("calls"), *(pl.col(d) for d in DIMENSIONS)],
        descending=[True, True] + [False] * len(DIMENSIONS),
        nulls_last=True,
        maintain_order=True,
    )
    exemplars = pl.col("exemplar_trace_ids").list.explode(keep_nulls=False, empty_as_null=False)
    sums = ordered.group_by(_KEY, maintain_order=True).agg(
        *(pl.col(c).first() for c in _GROUP_COLS),
        *(pl.col(c).sum() for c in ADDITIVE_COLUMNS),
        exemplars.unique(maintain_order=True).head(max_exemplars).alias("exemplar_trace_ids"),
    )
    hists = merge_hist_frame(keyed, _KEY, list(HIST_COLUMNS))
    merged = sums.join(hists, on=_KEY, how="left").with_columns(cost_usd_expr())
    return merged.select(pl.col(c).cast(t) for c, t in ROLLUP_SCHEMA.items())


def _sorted(rows: pl.DataFrame) -> pl.DataFrame:
    conformed: pl.DataFrame = conform_rollups(rows)
    return conformed.sort(["window_start", "late", *DIMENSIONS], nulls_last=True)

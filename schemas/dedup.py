"""Exact de-duplication of spans delivered twice, across batches, within an event-time horizon.

Why: a producer retry (an exporter that timed out after the broker had already stored the
message) delivers the same spans again, usually in a later Kafka batch.  Counted twice, they
inflate calls, tokens and cost.  :func:`~spanpulse.schemas.normalize.deduplicate` catches copies
within one batch; :class:`SeenSpanIds` remembers the ids of one partition's recent spans so that
copies in *later* batches are dropped too.

The rule, stated per span so that it does not depend on how the stream is cut into batches (a
replay after a crash re-cuts batches differently and must decide identically)::

    span i is a duplicate  <=>  an earlier span of the partition has the same
                                (trace_id, span_id) and an end time >= M_i - horizon

where ``M_i`` is the largest span end time of the partition up to and including span ``i``.
A copy of a span is therefore recognised while the partition's event time is at most
``horizon`` past the span's end.  A copy arriving later cannot be checked and is counted as
usual.  Spans without a trace or span id are never duplicates.  (The decoders drop copies
within one batch before this runs, whatever their age: see ``normalize.deduplicate``.)

Memory is bounded twice: ids older than the horizon are evicted, and at most ``max_ids`` ids are
kept (16 bytes each); past that bound the oldest-inserted ids are forgotten early and counted in
:attr:`SeenSpanIds.forgotten`.  Ids are 64-bit Polars hashes of ``(trace_id, span_id)``: a false
duplicate needs a 64-bit collision among the remembered ids (about ``max_ids / 2**64`` per span).
Polars only promises a stable hash within one version, so the state carries the Polars version
and a state from another version starts fresh (see :attr:`SeenSpanIds.version`).

Why sorted runs rather than a Python set: the object is Bytewax recovery state, pickled at every
epoch; a few numpy arrays pickle as flat buffers, a set of a million ints does not.  Runs are
kept in insertion order and merged like a binary counter (each id is re-sorted O(log n) times),
so a batch costs ``O(batch * log(ids))`` lookups and no copy of the whole state.

>>> seen = SeenSpanIds(horizon_ms=60_000, max_ids=1000)
>>> a = pl.DataFrame({"trace_id": ["t1", "t2"], "span_id": ["s1", "s2"], "end_time_ms": [0, 1]})
>>> drop_duplicates(a, seen)[1], drop_duplicates(a, seen)[1]
(0, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl

#: Changes when the hash or the state layout changes; restored state of another version is dropped.
FORMAT: Final = "seen-ids-1"
_HASH_SEED: Final = 0x5EED_1D5
_NO_MATCH: Final = np.iinfo(np.int64).min

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


def state_version() -> str:
    """Return the version tag of the state: the format and the Polars hash in use."""
    return f"{FORMAT}/polars-{pl.__version__}"


def span_hashes(records: pl.DataFrame) -> tuple[U64, Mask]:
    """Hash ``(trace_id, span_id)`` to u64; return the hashes and which rows have both ids.

    Deterministic across processes for one Polars version (no per-process salt, unlike
    Python's ``hash``), which recovery needs: the state is restored in another process.
    """
    out = records.select(
        pl.struct("trace_id", "span_id").hash(_HASH_SEED).alias("h"),
        (pl.col("trace_id").is_not_null() & pl.col("span_id").is_not_null()).alias("known"),
    )
    return out["h"].to_numpy(), out["known"].to_numpy()


@dataclass
class _Run:
    """Unique ids sorted ascending, their end times aligned, and the largest end time."""

    keys: U64
    ends: I64
    max_end: int

    def lookup(self, ids: U64) -> I64:
        """Return each id's end time in this run, or ``_NO_MATCH``."""
        idx = np.minimum(np.searchsorted(self.keys, ids), self.keys.size - 1)
        return np.where(self.keys[idx] == ids, self.ends[idx], _NO_MATCH)


def _merge(older: _Run, newer: _Run, cutoff: int) -> _Run | None:
    """Merge two runs, keeping an id's newer entry (the larger end) and dropping expired ids."""
    keys = np.concatenate([older.keys, newer.keys])
    ends = np.concatenate([older.ends, newer.ends])
    order = np.argsort(keys, kind="stable")  # an id's older entry comes first
    keys, ends = keys[order], ends[order]
    keep = np.append(keys[1:] != keys[:-1], True) & (ends >= cutoff)
    if not keep.any():
        return None
    return _Run(keys[keep], ends[keep], max(older.max_end, newer.max_end))


@dataclass
class SeenSpanIds:
    """One partition's recently seen span ids, bounded by an event-time horizon and a count.

    Args:
        horizon_ms: how far behind the partition's largest end time a copy is still recognised.
        max_ids: hard bound on remembered ids (16 bytes each); the oldest-inserted go first.
        run_ids: largest sorted run built by merging (bounds the cost of one merge; default
            ``max_ids // 8``).
    """

    horizon_ms: int
    max_ids: int
    run_ids: int = 0
    version: str = field(default_factory=state_version)
    watermark_ms: int | None = None
    forgotten: int = 0
    _runs: list[_Run] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.configure(self.horizon_ms, self.max_ids, self.run_ids)

    def configure(self, horizon_ms: int, max_ids: int, run_ids: int = 0) -> None:
        """Apply (possibly changed) parameters, e.g. the current config to restored state."""
        if horizon_ms <= 0 or max_ids <= 0 or run_ids < 0:
            msg = f"horizon_ms and max_ids must be > 0, got {horizon_ms} and {max_ids}"
            raise ValueError(msg)
        self.horizon_ms, self.max_ids = horizon_ms, max_ids
        self.run_ids = run_ids or max(1, max_ids // 8)
        if self.watermark_ms is not None:
            self._evict(self.watermark_ms - horizon_ms)
        self._bound()

    def __len__(self) -> int:
        """Return the number of remembered ids."""
        return sum(r.keys.size for r in self._runs)

    def check_and_add(self, ids: U64, end_ms: I64, known: Mask | None = None) -> Mask:
        """Return which spans (in stream order) are duplicates, and remember them all.

        Args:
            ids: span id hashes (see :func:`span_hashes`), in the partition's stream order.
            end_ms: the spans' end times (epoch ms), aligned with ``ids``.
            known: rows that carry both ids (others are never duplicates nor remembered).
        """
        ids, end_ms = np.asarray(ids, np.uint64), np.asarray(end_ms, np.int64)
        dup = np.zeros(ids.size, np.bool_)
        if ids.size == 0:
            return dup
        progress = np.maximum.accumulate(end_ms)
        if self.watermark_ms is not None:
            progress = np.maximum(progress, self.watermark_ms)
        self.watermark_ms = int(progress[-1])
        rows = np.arange(ids.size) if known is None else np.flatnonzero(known)
        if rows.size:
            dup[rows] = self._check(ids[rows], end_ms[rows], progress[rows])
        self._maintain()
        return dup

    def _check(self, ids: U64, ends: I64, progress: I64) -> Mask:
        order = np.argsort(ids, kind="stable")  # equal ids stay in stream order
        keys, key_ends = ids[order], ends[order]
        remembered = self._lookup_sorted(keys)
        earlier = np.full(ids.size, _NO_MATCH, np.int64)
        repeats = keys[1:] == keys[:-1]
        if repeats.any():  # rare: the decoders already drop copies within a batch
            earlier[order] = _earlier_in_group(keys, key_ends)
        last = np.empty_like(remembered)
        last[order] = remembered
        dup = np.maximum(last, earlier) >= progress - self.horizon_ms
        # Remember each id's largest end time where it grew: so an id's later entry (in a newer
        # run) always has the larger end time, which merges rely on.
        tail = np.append(~repeats, True)  # the last row of each id in (id, stream) order
        top = np.zeros(keys.size, np.int64)
        top[tail] = np.maximum.reduceat(key_ends, np.flatnonzero(np.insert(~repeats, 0, True)))
        new = tail & (top > remembered)
        if new.any():
            self._runs.append(_Run(keys[new], top[new], int(top[new].max())))
        return dup

    def _lookup_sorted(self, keys: U64) -> I64:
        """Return each (sorted) id's largest remembered end time, or ``_NO_MATCH``."""
        best = np.full(keys.size, _NO_MATCH, np.int64)
        for run in self._runs:  # sorted needles make searchsorted ~3x faster
            np.maximum(best, run.lookup(keys), out=best)
        return best

    def _maintain(self) -> None:
        assert self.watermark_ms is not None
        cutoff = self.watermark_ms - self.horizon_ms
        self._evict(cutoff)
        runs = self._runs
        while len(runs) >= 2 and _should_merge(runs[-2], runs[-1], self.run_ids):
            newer, older = runs.pop(), runs.pop()
            merged = _merge(older, newer, cutoff)
            if merged is not None:
                runs.append(merged)
        self._bound()

    def _evict(self, cutoff: int) -> None:
        self._runs = [r for r in self._runs if r.max_end >= cutoff]

    def _bound(self) -> None:
        excess = len(self) - self.max_ids
        while excess > 0:
            oldest = self._runs[0]
            if oldest.keys.size <= excess:
                self._runs.pop(0)
                self.forgotten += oldest.keys.size
                excess -= oldest.keys.size
                continue
            keep = np.sort(np.argpartition(oldest.ends, excess)[excess:])
            self._runs[0] = _Run(oldest.keys[keep], oldest.ends[keep], oldest.max_end)
            self.forgotten += excess
            excess = 0


def _should_merge(older: _Run, newer: _Run, run_ids: int) -> bool:
    """Merge like a binary counter (equal sizes), but never past ``run_ids`` ids."""
    return older.keys.size <= newer.keys.size and older.keys.size + newer.keys.size <= run_ids


def _earlier_in_group(keys: U64, ends: I64) -> I64:
    """For rows sorted by (id, stream order): the largest end time of the id's earlier rows."""
    frame = pl.DataFrame({"k": keys, "e": ends})
    earlier = frame.select(pl.col("e").cum_max().shift(1).over("k").fill_null(_NO_MATCH))
    out: I64 = earlier.to_series().to_numpy().astype(np.int64, copy=False)
    return out


def duplicate_mask(records: pl.DataFrame, seen: SeenSpanIds) -> npt.NDArray[np.bool_]:
    """Mark records whose span was already seen (see the module rule), remembering the others.

    ``records`` must be in the partition's stream order and carry ``trace_id``, ``span_id`` and
    ``end_time_ms``; a null end time counts as epoch 0 (decoders reject such spans anyway).
    """
    if records.is_empty():
        return np.zeros(0, np.bool_)
    ids, known = span_hashes(records)
    ends = records["end_time_ms"].fill_null(0).to_numpy().astype(np.int64, copy=False)
    return seen.check_and_add(ids, ends, known)


def drop_duplicates(records: pl.DataFrame, seen: SeenSpanIds) -> tuple[pl.DataFrame, int]:
    """Drop records whose span was already seen (see :func:`duplicate_mask`); return the rest."""
    dup = duplicate_mask(records, seen)
    n = int(dup.sum())
    return (records.filter(pl.Series(~dup)) if n else records), n

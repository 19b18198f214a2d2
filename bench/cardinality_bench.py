"""Flood the cardinality limiter with distinct tenant ids; report time, state size and peak RSS.

    /work/venv/bin/python bench/cardinality_bench.py            # 1,000,000 ids over 60 windows
    /work/venv/bin/python bench/cardinality_bench.py --distinct 200000 --limit 50

Each window carries ``distinct / windows`` one-call tenants that are never seen again plus
``heavy`` steady tenants; the limiter must keep exactly the heavy ones, fold the flood into
``__other__`` with exact totals, and hold at most ``capacity_factor * limit`` candidates.
Window frames are generated one at a time so the RSS reflects the limiter, not the input.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa

from spanpulse.schemas.cardinality import CardinalityLimiter
from spanpulse.schemas.histogram import HIST_DTYPE
from spanpulse.schemas.record import DIMENSIONS, OTHER
from spanpulse.schemas.rollup_schema import ADDITIVE_COLUMNS, HIST_COLUMNS, ROLLUP_SCHEMA

T0 = datetime(2024, 5, 1, tzinfo=UTC)
WINDOW = timedelta(minutes=1)


def hist(calls: np.ndarray, shift: int) -> pa.Array:
    """One cell per row holding all calls (bucket varies with the id), built through Arrow."""
    offsets = pa.array(np.arange(len(calls) + 1, dtype=np.int32))
    cells = pa.StructArray.from_arrays(
        [pa.array(((np.arange(len(calls)) % 50) + shift).astype(np.int32)), pa.array(calls)],
        names=["b", "n"],
    )
    return pa.ListArray.from_arrays(offsets, cells)


def window_frame(window: int, per: int, heavy: int) -> pl.DataFrame:
    """One window: ``per`` never-repeating ids (Zipf call counts), plus steady heavy tenants.

    Skewed counts make the flood's biggest ids survive the summary's pruning, so the candidate
    table really fills up to its bound instead of being emptied by ties.
    """
    tenants = [f"flood-{window * per + i}" for i in range(per)]
    tenants += [f"heavy-{h}" for h in range(heavy)]
    flood = np.minimum(np.random.default_rng(window).zipf(1.5, per), 400)
    calls = np.concatenate([flood, np.full(heavy, 500)]).astype(np.int64)
    start = T0 + window * WINDOW
    n = len(tenants)
    data: dict[str, object] = {
        "window_start": [start] * n,
        "window_end": [start + WINDOW] * n,
        "grain": ["tenant"] * n,
        "late": [False] * n,
        **{d: (tenants if d == "tenant" else [None] * n) for d in DIMENSIONS},
        **{c: calls * (j + 1) for j, c in enumerate(ADDITIVE_COLUMNS)},
        "overflow_calls": np.zeros(n, np.int64),
        "calls": calls,
        "exemplar_trace_ids": [[f"{t}-trace"] for t in tenants],
    }
    data["cost_usd"] = data["cost_nanos"] / 1e9  # type: ignore[operator]
    frame = pl.DataFrame(data)
    hists = [pl.Series(h, hist(calls, k)).cast(HIST_DTYPE) for k, h in enumerate(HIST_COLUMNS)]
    return frame.with_columns(hists).select(pl.col(c).cast(t) for c, t in ROLLUP_SCHEMA.items())


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--distinct", type=int, default=1_000_000)
    p.add_argument("--windows", type=int, default=60)
    p.add_argument("--heavy", type=int, default=20)
    p.add_argument("--limit", type=int, default=1000, help="tenant limit (config default 1000)")
    p.add_argument("--series-limit", type=int, default=5000)
    p.add_argument(
        "--generate-only", action="store_true", help="build the frames only (RSS of the input)"
    )
    args = p.parse_args(argv)

    per = args.distinct // args.windows
    limiter = CardinalityLimiter(("tenant",), {"tenant": args.limit}, args.series_limit)
    window_frame(0, 10, 1)  # warm up imports and Polars before the baseline
    baseline = rss_mib()
    timings, peak_state, in_calls, out_calls, max_rows = [], 0, 0, 0, 0
    rss_at_10 = 0.0
    for w in range(args.windows):
        if w == 10:
            rss_at_10 = rss_mib()
        rows = window_frame(w, per, args.heavy)
        started = time.perf_counter()
        out = rows if args.generate_only else limiter.apply(rows)
        timings.append(time.perf_counter() - started)
        stats = limiter.stats()
        peak_state = max(peak_state, stats["candidates.tenant"] + stats["admitted.tenant"])
        in_calls += int(rows["calls"].sum())
        out_calls += int(out["calls"].sum())
        max_rows = max(max_rows, out.height)
    stats = limiter.stats()
    kept = limiter.admitted("tenant")
    report = {
        "distinct ids": per * args.windows,
        "windows": args.windows,
        "rows per window in": per + args.heavy,
        "max rows per window out": max_rows,
        "limiter total s": round(sum(timings), 2),
        "per window ms (median / max)": (
            round(statistics.median(timings) * 1000, 1),
            round(max(timings) * 1000, 1),
        ),
        "peak state entries (candidates + admitted)": peak_state,
        "state bound (capacity_factor*limit + limit)": 4 * args.limit + args.limit,
        "admitted at end": sorted(kept)[:5] + (["..."] if len(kept) > 5 else []),
        "admitted count / all heavy admitted": (
            len(kept),
            {f"heavy-{h}" for h in range(args.heavy)} <= kept,
        ),
        "calls in == out": in_calls == out_calls,
        "overflow calls": stats["overflow_calls"],
        "peak RSS MiB: baseline / after 10 windows / end": (
            round(baseline, 1),
            round(rss_at_10, 1),
            round(rss_mib(), 1),
        ),
        "folded into": OTHER,
    }
    for key, value in report.items():
        sys.stdout.write(f"{key:48s} {value}\n")
    ok = report["calls in == out"] and peak_state <= 5 * args.limit
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

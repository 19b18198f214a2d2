"""Time ``Metrics.observe_rollup`` on realistic closed windows; optionally dump the exposition.

    /work/venv/bin/python bench/metrics_bench.py                     # 30 windows, 1,800 rows
    /work/venv/bin/python bench/metrics_bench.py --dump /tmp/a.prom   # also write the exposition

Each window holds every default grain the way the job emits it: ``tenant.model`` (``--rows``
rows, the hot spot), ``tenant``, ``model`` and ``feature.prompt_version``, every row with all
five exponential histograms (10-25 cells each) and exemplar trace ids, as the Parquet rows have.
Windows repeat the same label sets with new counts (steady state of a long backlog replay);
the first window (every label set new) is reported on its own.

``--dump`` writes the exposition after all windows without the ``*_created`` samples (they hold
wall-clock creation times), so two implementations can be compared with ``diff``: an
optimisation must not change what is exported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from prometheus_client import CollectorRegistry, generate_latest

from spanpulse.schemas.histogram import HIST_DTYPE
from spanpulse.schemas.record import DIMENSIONS
from spanpulse.schemas.rollup_schema import ADDITIVE_COLUMNS, HIST_COLUMNS, ROLLUP_SCHEMA
from spanpulse.sinks.metrics import Metrics

T0 = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
MODELS = (
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "claude-sonnet-4", "claude-3-5-haiku",
    "gemini-2.0-flash", "gemini-1.5-pro", "llama-3.1-70b", "mistral-large", "command-r",
    "deepseek-chat",
)  # fmt: skip
FEATURES = tuple(f"feature-{i}" for i in range(12))
PROMPT_VERSIONS = tuple(f"v{i}" for i in range(5))
#: Histogram bucket ranges per column (scale 4: 16 buckets per doubling).
HIST_RANGE = {
    "input_tokens_hist": (100, 200),
    "output_tokens_hist": (60, 160),
    "latency_s_hist": (-40, 80),
    "ttft_s_hist": (-60, 20),
    "context_fill_hist": (-80, -1),
}


def hists(rng: np.random.Generator, n: int, column: str) -> pl.Series:
    """``n`` histograms of 10-25 consecutive buckets each, built through Arrow (fast)."""
    lo, hi = HIST_RANGE[column]
    lengths = rng.integers(10, 26, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    starts = rng.integers(lo, hi - 25, n)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    cells = pa.StructArray.from_arrays(
        [
            pa.array((np.repeat(starts, lengths) + within).astype(np.int32)),
            pa.array(rng.integers(1, 40, offsets[-1]).astype(np.int64)),
        ],
        names=["b", "n"],
    )
    return pl.Series(column, pa.ListArray.from_arrays(pa.array(offsets), cells)).cast(HIST_DTYPE)


def grain_rows(rng: np.random.Generator, grain: str, keys: list[tuple[str, ...]]) -> pl.DataFrame:
    """Rows of one grain for ``keys`` (values of the grain's dimensions), random counts."""
    n, dims = len(keys), grain.split(".")
    calls = rng.integers(1, 400, n)
    data: dict[str, object] = {"grain": [grain] * n, "late": [False] * n}
    for d in DIMENSIONS:
        data[d] = [k[dims.index(d)] for k in keys] if d in dims else [None] * n
    for j, c in enumerate(ADDITIVE_COLUMNS):
        data[c] = calls if c == "calls" else rng.integers(0, 50 * (j + 1), n) * (calls > 0)
    data["cost_usd"] = np.asarray(data["cost_nanos"]) / 1e9
    for h in HIST_COLUMNS:
        data[h] = hists(rng, n, h)
    data["exemplar_trace_ids"] = [[f"{x:032x}"] for x in rng.integers(2**62, size=n)]
    return pl.DataFrame(data)


def label_sets(rows: int) -> dict[str, list[tuple[str, ...]]]:
    """Fixed label sets per grain: ``rows`` distinct (tenant, model) pairs and their margins.

    Tenants use one to five models each (about 600 tenants for 1,800 pairs).
    """
    pairs: list[tuple[str, ...]] = []
    i = 0
    while len(pairs) < rows:
        for j in range(1 + i * 7 % 5):
            pairs.append((f"tenant-{i:04d}", MODELS[(i + 5 * j) % len(MODELS)]))
        i += 1
    tm = pairs[:rows]
    return {
        "tenant.model": tm,
        "tenant": sorted({(t[0],) for t in tm}),
        "model": sorted({(t[1],) for t in tm}),
        "feature.prompt_version": [(f, v) for f in FEATURES for v in PROMPT_VERSIONS],
    }


def window(i: int, sets: dict[str, list[tuple[str, ...]]]) -> pl.DataFrame:
    rng = np.random.default_rng(1000 + i)
    frame = pl.concat(
        [grain_rows(rng, g, keys) for g, keys in sets.items()], how="diagonal_relaxed"
    )
    start = T0 + timedelta(minutes=i)
    frame = frame.with_columns(
        window_start=pl.lit(start), window_end=pl.lit(start + timedelta(minutes=1))
    )
    return frame.select(pl.col(c).cast(t) for c, t in ROLLUP_SCHEMA.items())


def without_created(exposition: bytes) -> str:
    lines = exposition.decode().splitlines(keepends=True)
    return "".join(line for line in lines if "_created" not in line.split(" ")[0].split("{")[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1800, help="tenant.model rows per window")
    p.add_argument("--windows", type=int, default=30)
    p.add_argument("--dump", type=Path, help="write the exposition (no _created lines) here")
    args = p.parse_args(argv)

    sets = label_sets(args.rows)
    frames = [window(i, sets) for i in range(args.windows)]
    sizes = {g: len(k) for g, k in sets.items()}
    reg = CollectorRegistry()
    m = Metrics(reg)
    times = []
    for f in frames:
        t0 = time.perf_counter()
        m.observe_rollup(f)
        times.append(time.perf_counter() - t0)
    scrapes = []
    for _ in range(5):
        t0 = time.perf_counter()
        text = generate_latest(reg)
        scrapes.append(time.perf_counter() - t0)
    steady = times[1:] or times
    print(f"rows per window: {sum(sizes.values())} {sizes}")
    print(f"observe_rollup first window (cold): {times[0] * 1e3:8.2f} ms")
    print(
        f"observe_rollup steady state:        {statistics.median(steady) * 1e3:8.2f} ms median, "
        f"{min(steady) * 1e3:.2f} min, {max(steady) * 1e3:.2f} max over {len(steady)} windows"
    )
    print(
        f"scrape (generate_latest):           {statistics.median(scrapes) * 1e3:8.2f} ms median, "
        f"{len(text) / 1024:.0f} KiB"
    )
    if args.dump:
        args.dump.write_text(without_created(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU of the detection step alone: the same closed windows through every grain's detectors.

Why: detection is paid per closed window and per series, and on the throughput benchmark's
sparse backlogs it is 40-48 % of the job (BENCHMARKS.md); this isolates it from Kafka, decoding
and Bytewax so a change to the detectors can be A/B-tested in a minute.  The windows (150
minutes of ``TrafficModel(seed=5, tenants=500, rate_per_s=30)``, decoded, pre-aggregated,
merged and cardinality-limited exactly as the job does) are built once and cached; each run
then feeds them to fresh ``GrainDetectors`` via ``flows.detect.split_for_detection`` and
reports process CPU seconds.

    /work/venv/bin/python bench/detect_bench.py --label new --gc job
    PYTHONPATH=<dir with a 'spanpulse' symlink to another checkout> \\
        /work/venv/bin/python bench/detect_bench.py --label old --gc default

Interleave the variants (old, new, old, new): the machine is shared.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import pickle
import time
from pathlib import Path

import polars as pl

from spanpulse.config import detector_config, from_mapping
from spanpulse.detectors.engine import SeriesDetector
from spanpulse.detectors.grain_detectors import GrainDetectors
from spanpulse.flows.detect import split_for_detection
from spanpulse.flows.job import make_processor
from spanpulse.schemas.batch import RawBatch
from spanpulse.schemas.cardinality import CardinalityLimiter
from spanpulse.schemas.decode import Message
from spanpulse.schemas.encode import encode_calls
from spanpulse.schemas.scenario import Scenario

#: The collector thresholds of ``flows/gc_tuning.py`` (repeated so older checkouts can run).
JOB_GC = (50_000, 20, 100)


def build_windows(
    settings: object, minutes: int, rate: float = 30.0, scenario: Path | None = None
) -> list[pl.DataFrame]:
    """Closed, limited windows of ``minutes`` of traffic, as the job hands them to detection."""
    sc = Scenario.load(scenario) if scenario else Scenario.from_mapping(
        {"name": "detect-bench", "seed": 5, "start": "2025-03-04T09:00:00Z",
         "duration": f"{minutes}m", "tenants": 500, "rate": rate})  # fmt: skip
    s = settings
    proc = make_processor(s)  # type: ignore[arg-type]
    agg = proc.aggregator
    limiters = {
        g.name: CardinalityLimiter(
            g.dims,
            dict(s.cardinality.limits),
            s.cardinality.series_limit,  # type: ignore[attr-defined]
            max_exemplars=s.rollups.exemplars,
        )  # type: ignore[attr-defined]  # fmt: skip
        for g in s.rollups.grains  # type: ignore[attr-defined]
    }
    pending: dict[int, list[pl.DataFrame]] = {}
    windows: list[pl.DataFrame] = []

    def close(ws: int) -> None:
        rows = agg.finalize(agg.merge(pending.pop(ws)))
        parts = [
            limiters[str(g)].apply(p) for (g,), p in rows.group_by("grain", maintain_order=True)
        ]
        windows.append(pl.concat(parts, how="vertical_relaxed"))

    offset = 0
    for chunk in sc.calls_chunks(60.0):
        values = encode_calls(chunk, "span_json")
        msgs = [Message(v, "bench", 0, offset + i) for i, v in enumerate(values)]
        offset += len(msgs)
        batch = proc.process(RawBatch("bench#0", "span_json", msgs, 0))
        for (ws,), p in batch.partials.group_by("window_start_ms", maintain_order=True):
            pending.setdefault(int(ws), []).append(p)  # type: ignore[call-overload]
        latest = max(pending)
        for ws in sorted(pending):
            if ws < latest - 60_000:
                close(ws)
    for ws in sorted(pending):
        close(ws)
    return windows


def main() -> None:
    """Run the detection step once over the cached windows and print its CPU seconds."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", default="run")
    p.add_argument("--gc", choices=("default", "job"), default="job",
                   help="collector thresholds: CPython's defaults or the job's (flows/gc_tuning.py)")  # fmt: skip
    p.add_argument("--minutes", type=int, default=150)
    p.add_argument("--rate", type=float, default=30.0,
                   help="calls/s of event time (the live latency run uses about 3,600)")  # fmt: skip
    p.add_argument("--scenario", type=Path,
                   help="a scenario file instead of incident-free traffic (it has alerts to compare)")  # fmt: skip
    p.add_argument("--cache", type=Path, help="window cache (default: per minutes and rate)")
    p.add_argument("--alerts-out", type=Path, help="write every alert (JSON lines) to compare runs")
    a = p.parse_args()
    if a.cache is None:
        suffix = "" if (a.minutes, a.rate) == (150, 30.0) else f"-{a.minutes}m-{a.rate:g}"
        suffix = f"-{a.scenario.stem}" if a.scenario else suffix
        a.cache = Path(f"/tmp/spanpulse-detect-bench{suffix}.pkl")
    settings = from_mapping({"inputs": [{"topic": "bench", "encoding": "span_json"}]})
    if a.cache.exists():
        windows = pickle.loads(a.cache.read_bytes())  # noqa: S301 - our own cache file
    else:
        windows = build_windows(settings, a.minutes, a.rate, a.scenario)
        a.cache.write_bytes(pickle.dumps(windows))
    if a.gc == "job":
        gc.set_threshold(*JOB_GC)
    cfg = detector_config(settings.detectors)
    grains = [g.dims for g in settings.rollups.grains]
    dims = {g.name: g.dims for g in settings.rollups.grains}
    banks: dict[str, GrainDetectors] = {}
    alerts: list[object] = []
    t0 = time.process_time()
    for w in windows:
        for name, (_key, _grain, rows, kids) in split_for_detection(w, grains):
            bank = banks.get(name)
            if bank is None:
                bank = GrainDetectors.build(dims[name], cfg, functools.partial(SeriesDetector, cfg))
                banks[name] = bank
            alerts += bank.observe_window(rows, kids)
    cpu = time.process_time() - t0
    if a.alerts_out:
        a.alerts_out.write_text("".join(json.dumps(x.to_dict(), default=str, sort_keys=True) + "\n" for x in alerts))  # type: ignore[attr-defined]  # fmt: skip
    size = sum(len(b.to_bytes()) for b in banks.values())
    digest = hashlib.sha256(b"".join(b.to_bytes() for b in banks.values())).hexdigest()[:12]
    print(f"{a.label}: state {digest}, windows {len(windows)} detection {cpu:.2f} CPU s "
          f"({1000 * cpu / len(windows):.1f} ms/window), alerts {len(alerts)}, "
          f"snapshot {size / 1e6:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()

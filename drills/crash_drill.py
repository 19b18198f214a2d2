"""Crash drill: kill -9 the job mid-stream, restart it, and compare with an uninterrupted run.

The job is killed at random points while a stream is flowing and restarted each time; at the end
its Parquet rollups -- on-time and late rows, file by file -- must equal those of an uninterrupted
run over the same input.

    python drills/crash_drill.py --kills 20                    # the long version (embedded broker)
    python drills/crash_drill.py --kills 20 --late-share 0.05  # with out-of-order traffic

``--late-share`` holds back that share of the messages by ``--late-by`` seconds of traffic, so
their calls arrive behind their partition's watermark and are written as late rows.

The test suite runs short versions (tests/test_crash_drill.py, tests/test_crash_drill_late.py).
Results of the long versions are recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from spanpulse.broker import EmbeddedBroker, create_topics
from spanpulse.schemas.encode import encode_calls
from spanpulse.schemas.record import DIMENSIONS
from spanpulse.schemas.scenario import Scenario
from spanpulse.sinks.alerts import tail
from spanpulse.sinks.kafka_producer import BulkProducer

START_MS = 1_790_000_000_000 - (1_790_000_000_000 % 60_000)


@dataclass
class DrillResult:
    """What happened and whether the outputs matched."""

    kills: int = 0
    restarts: int = 0
    identical: bool = False
    baseline_rows: int = 0
    drilled_rows: int = 0
    baseline_late_rows: int = 0  # rows with late = true (out-of-order traffic only)
    drilled_late_rows: int = 0
    same_files: bool = False  # the same file names under both output directories
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0
    total_messages: int = 0
    final_run_messages: int = 0  # < total_messages proves the last run resumed from recovery
    baseline_alert_ids: int = 0
    drilled_alert_ids: int = 0
    duplicate_alerts: int = 0  # re-deliveries of the same id (allowed, counted)
    same_alert_ids: bool = False


_SCENARIO = """
name = "drill"
seed = {seed}
start = "2026-09-21T14:00:00Z"
duration = "{minutes}m"
tenants = 80
rate = {rate}

[[incident]]
kind = "length_spike"
start = "{spike_at}m"
duration = "8m"
target = {{ model = "gpt-4o" }}
magnitude = 0.3
"""


def produce(
    bootstrap: str,
    topic: str,
    minutes: int,
    rate: float,
    seed: int,
    *,
    late_share: float = 0.0,
    late_by_s: float = 180.0,
) -> int:
    """Produce the scenario's traffic in small messages; returns the number of calls.

    The traffic carries one length-stop incident halfway, so the runs raise alerts to compare.
    It is time-ordered unless ``late_share`` > 0: then that share of the messages (chosen with
    ``seed``) is sent ``late_by_s`` seconds of traffic later than its place in time.
    """
    text = _SCENARIO.format(seed=seed, minutes=minutes, rate=rate, spike_at=max(1, minutes // 2))
    calls = Scenario.loads(text).calls()
    messages = encode_calls(calls, "otlp_proto", convention="mixed", spans_per_message=20)
    if late_share > 0:
        per_second = len(messages) / (minutes * 60)
        messages = hold_back(messages, late_share, round(late_by_s * per_second), seed)
    producer = BulkProducer({"bootstrap.servers": bootstrap})
    producer.send(topic, messages)
    producer.flush()
    return calls.height


def hold_back(messages: list[bytes], share: float, by: int, seed: int) -> list[bytes]:
    """Return ``messages`` with a seeded ``share`` of them moved ``by`` positions later.

    >>> hold_back([b"a", b"b", b"c", b"d"], 1.0, 2, seed=0)  # every message 2 later: same order
    [b'a', b'b', b'c', b'd']
    >>> hold_back([b"a", b"b", b"c", b"d"], 0.0, 2, seed=0)
    [b'a', b'b', b'c', b'd']
    """
    rng = random.Random(seed)
    keys = [i + (by if rng.random() < share else 0) for i in range(len(messages))]
    return [messages[i] for i in sorted(range(len(messages)), key=lambda i: (keys[i], i))]


def write_config(
    path: Path,
    bootstrap: str,
    topic: str,
    out: Path,
    recovery: Path | None,
    alerts: str = "",
    batch_size: int = 25,
) -> Path:
    """Write a job config for one run."""
    rec = f'[recovery]\ndir = "{recovery}"\nsnapshot_interval = "1s"\n' if recovery else ""
    alerts = alerts or f"{topic}-alerts"
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\nbatch_size = {batch_size}\n'
        f'dead_letter_topic = "{topic}-dlq"\nalert_topic = "{alerts}"\n'
        f'[[inputs]]\ntopic = "{topic}"\n[rollups]\noutput_dir = "{out}"\n[metrics]\nport = 0\n{rec}'
    )
    return path


def _run(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "spanpulse.cli", "run", "--config", str(cfg), "--until-caught-up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def read_rollups(root: Path) -> pl.DataFrame:
    """All rollup rows under ``root``, in a canonical order.

    Late rows of one key can sit in several files (one per late group), so the sort is stable
    over the files read in path order: equal keys keep their file order.
    """
    files = sorted(root.rglob("*.parquet"))
    if not files:
        return pl.DataFrame()
    df = pl.concat(
        [pl.read_parquet(f, hive_partitioning=False) for f in files], how="vertical_relaxed"
    )
    keys = [c for c in ("grain", "window_start", "late", *DIMENSIONS) if c in df.columns]
    return df.sort(keys, nulls_last=True, maintain_order=True)


def _compare_rollups(result: DrillResult, base_out: Path, drill_out: Path) -> None:
    """Fill the row counts and verdicts of ``result``: rows and file names must be equal."""
    a, b = read_rollups(base_out), read_rollups(drill_out)
    result.baseline_rows, result.drilled_rows = a.height, b.height
    result.baseline_late_rows, result.drilled_late_rows = _late_rows(a), _late_rows(b)
    result.identical = a.height > 0 and a.equals(b)
    if not result.identical:
        result.differences.append(f"rows {a.height} vs {b.height}")
        if a.columns == b.columns and a.height and b.height:
            for col in ("calls", "input_tokens", "cost_nanos"):
                result.differences.append(f"{col}: {a[col].sum()} vs {b[col].sum()}")
    names_a, names_b = _file_names(base_out), _file_names(drill_out)
    result.same_files = names_a == names_b
    if not result.same_files:
        result.differences.append(
            f"files only in baseline: {sorted(names_a - names_b)[:3]}, "
            f"only in drilled: {sorted(names_b - names_a)[:3]}"
        )


def _late_rows(rows: pl.DataFrame) -> int:
    return int(rows["late"].sum()) if rows.height else 0


def _file_names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.parquet")}


def drill(
    bootstrap: str,
    workdir: Path,
    *,
    kills: int,
    seed: int = 1,
    minutes: int = 45,
    rate: float = 12.0,
    kill_after: tuple[float, float] = (0.3, 0.55),
    late_share: float = 0.0,
    late_by_s: float = 180.0,
    batch_sizes: tuple[int, ...] = (25,),
) -> DrillResult:
    """Run the baseline and the drilled job over the same topic; compare their rollups.

    Each kill comes after a random fraction ``kill_after`` of the baseline run's wall time
    (which includes process start-up), so the kills land mid-stream however fast the job is.
    ``late_share`` and ``late_by_s`` make out-of-order traffic (see :func:`produce`).  The
    baseline reads batches of ``batch_sizes[0]`` messages; every drilled start picks one of
    ``batch_sizes`` at random, so replays cut the stream into batches differently (as fetch
    timing does in production) and nothing may depend on where batches begin.
    """
    t0 = time.monotonic()
    rng = random.Random(seed)
    topic = f"drill-{seed}-{int(time.time() * 1000) % 10**8}"
    create_topics(bootstrap, [topic], partitions=2)
    base_alerts, drill_alerts = f"{topic}-alerts-base", f"{topic}-alerts-drill"
    create_topics(bootstrap, [f"{topic}-dlq", base_alerts, drill_alerts], partitions=1)
    produce(bootstrap, topic, minutes, rate, seed, late_share=late_share, late_by_s=late_by_s)

    base_out, drill_out, rec = workdir / "baseline", workdir / "drilled", workdir / "recovery"
    base_cfg = write_config(
        workdir / "base.toml", bootstrap, topic, base_out, None, base_alerts, batch_sizes[0]
    )
    t_base = time.monotonic()
    base = _run(base_cfg)
    base_stdout, _ = base.communicate(timeout=600)
    base_seconds = time.monotonic() - t_base
    result = DrillResult()

    sizes = random.Random(f"batch-sizes-{seed}")  # apart from `rng`: kill times stay put

    def drill_config() -> Path:  # a batch size per start: replays re-cut batches
        size = sizes.choice(batch_sizes)
        return write_config(cfg, bootstrap, topic, drill_out, rec, drill_alerts, size)

    cfg = workdir / "drill.toml"
    while result.kills < kills:
        proc = _run(drill_config())
        result.restarts += 1
        time.sleep(base_seconds * rng.uniform(*kill_after))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            result.kills += 1
        else:  # finished before the kill: the drill needs a longer stream
            break
    final = _run(drill_config())
    final_stdout, _ = final.communicate(timeout=600)
    result.total_messages = json.loads(base_stdout.decode().strip().splitlines()[-1])["messages"]
    result.final_run_messages = json.loads(final_stdout.decode().strip().splitlines()[-1])[
        "messages"
    ]
    _compare_rollups(result, base_out, drill_out)
    client = {"bootstrap.servers": bootstrap}
    base_ids = [a["id"] for a in tail(client, base_alerts, idle_timeout_s=3)]
    drill_ids = [a["id"] for a in tail(client, drill_alerts, idle_timeout_s=3)]
    result.baseline_alert_ids, result.drilled_alert_ids = len(set(base_ids)), len(set(drill_ids))
    result.duplicate_alerts = len(drill_ids) - len(set(drill_ids))
    result.same_alert_ids = set(base_ids) == set(drill_ids)
    if not result.same_alert_ids:
        result.differences.append(
            f"alert ids: {len(set(base_ids) - set(drill_ids))} missing, "
            f"{len(set(drill_ids) - set(base_ids))} extra"
        )
    result.seconds = round(time.monotonic() - t0, 1)
    return result


def _pair(text: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in text.split(","))
    return lo, hi


def main() -> int:
    """CLI for the long drill."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--minutes", type=int, default=240, help="simulated minutes of traffic")
    p.add_argument("--workdir", type=Path, default=Path("drill-work"))
    p.add_argument("--late-share", type=float, default=0.0, help="share of messages sent late")
    p.add_argument("--late-by", type=float, default=180.0, help="seconds of traffic they lag")
    p.add_argument(
        "--batch-sizes", default="25,7,40,13", help="Kafka batch sizes: baseline, then random"
    )
    p.add_argument(
        "--kill-after", default="0.3,0.55", help="kill window, as fractions of the baseline's time"
    )
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker() as b:
        res = drill(
            b.bootstrap, args.workdir, kills=args.kills, seed=args.seed, minutes=args.minutes,
            late_share=args.late_share, late_by_s=args.late_by,
            batch_sizes=tuple(int(n) for n in args.batch_sizes.split(",")),
            kill_after=_pair(args.kill_after),
        )  # fmt: skip
    print(json.dumps(res.__dict__, indent=2))
    return 0 if res.identical and res.same_files and res.same_alert_ids else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Crash drill: kill -9 the job mid-stream, restart it, and compare with an uninterrupted run.

The job is killed at random points while a stream is flowing and restarted each time; at the end
its Parquet rollups must equal those of an uninterrupted run over the same input.

    python drills/crash_drill.py --kills 20            # the long version (embedded broker)

The test suite runs the short version (tests/test_crash_drill.py).  Results of the long version
are recorded in docs/reliability.md.
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


def produce(bootstrap: str, topic: str, minutes: int, rate: float, seed: int) -> int:
    """Produce time-ordered traffic in small messages; returns the number of calls.

    The traffic carries one length-stop incident halfway, so the runs raise alerts to compare.
    """
    text = _SCENARIO.format(seed=seed, minutes=minutes, rate=rate, spike_at=max(1, minutes // 2))
    calls = Scenario.loads(text).calls()
    producer = BulkProducer({"bootstrap.servers": bootstrap})
    producer.send(
        topic, encode_calls(calls, "otlp_proto", convention="mixed", spans_per_message=20)
    )
    producer.flush()
    return calls.height


def write_config(
    path: Path, bootstrap: str, topic: str, out: Path, recovery: Path | None, alerts: str = ""
) -> Path:
    """Write a job config for one run."""
    rec = f'[recovery]\ndir = "{recovery}"\nsnapshot_interval = "1s"\n' if recovery else ""
    alerts = alerts or f"{topic}-alerts"
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\nbatch_size = 25\n'
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
    """All rollup rows under ``root``, in a canonical order."""
    files = sorted(root.rglob("*.parquet"))
    if not files:
        return pl.DataFrame()
    df = pl.concat(
        [pl.read_parquet(f, hive_partitioning=False) for f in files], how="vertical_relaxed"
    )
    keys = [c for c in ("grain", "window_start", "late", *DIMENSIONS) if c in df.columns]
    return df.sort(keys, nulls_last=True)


def drill(
    bootstrap: str,
    workdir: Path,
    *,
    kills: int,
    seed: int = 1,
    minutes: int = 45,
    rate: float = 12.0,
    kill_after: tuple[float, float] = (0.3, 0.55),
) -> DrillResult:
    """Run the baseline and the drilled job over the same topic; compare their rollups.

    Each kill comes after a random fraction ``kill_after`` of the baseline run's wall time
    (which includes process start-up), so the kills land mid-stream however fast the job is.
    """
    t0 = time.monotonic()
    rng = random.Random(seed)
    topic = f"drill-{seed}-{int(time.time() * 1000) % 10**8}"
    create_topics(bootstrap, [topic], partitions=2)
    base_alerts, drill_alerts = f"{topic}-alerts-base", f"{topic}-alerts-drill"
    create_topics(bootstrap, [f"{topic}-dlq", base_alerts, drill_alerts], partitions=1)
    produce(bootstrap, topic, minutes, rate, seed)

    base_out, drill_out, rec = workdir / "baseline", workdir / "drilled", workdir / "recovery"
    base_cfg = write_config(workdir / "base.toml", bootstrap, topic, base_out, None, base_alerts)
    t_base = time.monotonic()
    base = _run(base_cfg)
    base_stdout, _ = base.communicate(timeout=600)
    base_seconds = time.monotonic() - t_base
    cfg = write_config(workdir / "drill.toml", bootstrap, topic, drill_out, rec, drill_alerts)
    result = DrillResult()
    while result.kills < kills:
        proc = _run(cfg)
        result.restarts += 1
        time.sleep(base_seconds * rng.uniform(*kill_after))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            result.kills += 1
        else:  # finished before the kill: the drill needs a longer stream
            break
    final = _run(cfg)
    final_stdout, _ = final.communicate(timeout=600)
    result.total_messages = json.loads(base_stdout.decode().strip().splitlines()[-1])["messages"]
    result.final_run_messages = json.loads(final_stdout.decode().strip().splitlines()[-1])[
        "messages"
    ]
    a, b = read_rollups(base_out), read_rollups(drill_out)
    result.baseline_rows, result.drilled_rows = a.height, b.height
    result.identical = a.height > 0 and a.equals(b)
    if not result.identical:
        result.differences.append(f"rows {a.height} vs {b.height}")
        if a.columns == b.columns and a.height and b.height:
            for col in ("calls", "input_tokens", "cost_nanos"):
                result.differences.append(f"{col}: {a[col].sum()} vs {b[col].sum()}")
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


def main() -> int:
    """CLI for the long drill."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--minutes", type=int, default=240, help="simulated minutes of traffic")
    p.add_argument("--workdir", type=Path, default=Path("drill-work"))
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker() as b:
        res = drill(
            b.bootstrap, args.workdir, kills=args.kills, seed=args.seed, minutes=args.minutes
        )
    print(json.dumps(res.__dict__, indent=2))
    return 0 if res.identical and res.same_alert_ids else 1


if __name__ == "__main__":
    raise SystemExit(main())

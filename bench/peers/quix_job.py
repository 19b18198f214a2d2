"""Quix Streams peer: an idiomatic Quix job doing the benchmark's windowed aggregation.

    topic -> apply(decode message into calls, expand=True) -> set_timestamp(call end)
          -> group_by(tenant|model)            # repartitions through an internal topic
          -> tumbling_window(1 min, grace).agg(calls, token sums, cost, finish counts, p95)
          -> final(closing_strategy="partition") -> update(add to totals)

Decoding is the floor's (``floor.calls_from_proto``; ``span_json`` uses Quix's own JSON
deserializer and ``floor.call_from_json``).  The p95 is exact: latencies are kept with Quix's
``Collect`` and ranked when the window closes.

The harness starts this job on an empty topic and produces the backlog once every process of
the group has its partitions (``QUIX-ASSIGNED`` lines on stderr): Quix state recovery after a
rebalance trips over tansu's under-reported high watermarks, and the consumer-group join is not
what is being measured.

Quix closes windows only when newer data arrives (no wall-clock closing).  When this job has
seen no message for ``--idle-mark`` seconds it prints ``QUIX-IDLE`` on stderr; the harness then
appends, to every input partition, calls that lie past every window end plus the grace, for 64
sentinel tenants (``__sentinel__*``) so that every partition of the repartition topic gets one,
and ``closing_strategy="partition"`` closes every window of a partition at once.  Sentinels sent
together with the backlog would race it: a partition read early would close windows that calls
from a slower partition still had to reach, silently stranding them in state.  Sentinel windows
never close and are not counted.

The grace defaults to 12 h: with 10 s most of a backlog read out of order across partitions is
dropped as late.  The run stops after ``--idle-timeout`` seconds without new messages.  The
reported active time is (first message -> last backlog call reaching the window step) + (first
sentinel reaching it -> last window emitted): neither the consumer-group join nor the idle waits
are counted (the join is reported separately).

Quix runs with its default consumer settings: with the floor's large-fetch settings it stopped
consuming after part of the backlog on tansu.

Runs in its own virtualenv (Quix Streams 3.x pins confluent-kafka < 2.13); prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import Collect, Count, Sum

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floor  # noqa: E402

SENTINEL = "__sentinel__"


class Run:
    """First-message time and the summed output of this process."""

    def __init__(self) -> None:
        self.t_first = 0.0
        self.t_last = 0.0
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.t_seen = 0.0  # last time any message reached a step
        self.t_last_data = 0.0
        self.cpu_last_data = 0.0
        self.t_close = 0.0
        self.cpu_close = 0.0
        self.windows = 0
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.finish: dict[str, int] = {}
        self.late = 0

    def first(self, value: Any) -> Any:
        if not self.t_first:
            self.t_first = time.time()
            self.cpu_first = time.process_time()
        self.t_seen = time.time()
        return value

    def at_window_step(self, call: dict[str, Any]) -> dict[str, Any]:
        """Timestamps the backlog phase and the closing phase (first sentinel)."""
        now = self.t_seen = time.time()
        if not call["tenant"].startswith(SENTINEL):
            self.t_last_data, self.cpu_last_data = now, time.process_time()
        elif not self.t_close:
            self.t_close, self.cpu_close = now, time.process_time()
        return call

    def on_late(self, *_args: Any, **_kwargs: Any) -> bool:
        self.late += 1
        return False  # do not log every late record

    def watch(self, app: Application, topic: str, idle_s: float, stop: threading.Event) -> None:
        """Report input-partition assignments and, once, a quiet backlog on stderr for the harness.

        ``QUIX-ASSIGNED 0,2`` whenever this process's assignment changes (the harness produces the
        backlog only when the group has settled, so no rebalance happens mid-backlog), and
        ``QUIX-IDLE`` when no message arrived for ``idle_s`` after the backlog started.
        """
        last: list[int] | None = None
        idle_sent = False
        while not stop.wait(0.2):
            with contextlib.suppress(Exception):  # the consumer may not exist yet
                parts = sorted(
                    tp.partition for tp in app._consumer.assignment() if tp.topic == topic
                )
                if parts != last:
                    last = parts
                    _say(f"QUIX-ASSIGNED {','.join(map(str, parts))}")
            if (
                not idle_sent
                and self.t_seen
                and not self.t_close
                and time.time() - self.t_seen > idle_s
            ):
                idle_sent = True
                _say("QUIX-IDLE")

    def add(self, window: dict[str, Any]) -> None:
        self.windows += 1
        self.calls += window["calls"]
        self.input_tokens += window["input_tokens"]
        self.output_tokens += window["output_tokens"]
        self.cost_usd += window["cost_usd"]
        for cls in floor.FINISH_CLASSES:
            self.finish[cls] = self.finish.get(cls, 0) + window[f"finish_{cls}"]
        self.t_last = time.time()
        self.cpu_last = time.process_time()


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def p95(values: list[float]) -> float:
    s = sorted(values)
    return s[max(0, -(-95 * len(s) // 100) - 1)] if s else 0.0


def to_calls(value: Any, encoding: str) -> list[dict[str, Any]]:
    calls = (
        floor.calls_from_proto(value) if encoding == "otlp_proto" else [floor.call_from_json(value)]
    )
    return [c._asdict() for c in calls]


def finish_flags(call: dict[str, Any]) -> dict[str, Any]:
    """One 0/1 column per finish class, so plain ``Sum`` aggregators count them."""
    for cls in floor.FINISH_CLASSES:
        call[f"is_{cls}"] = int(call["finish_class"] == cls)
    return call


def flatten(window: dict[str, Any]) -> dict[str, Any]:
    window["p95_latency_s"] = p95(window.pop("latencies"))
    return window


def build(app: Application, topic_name: str, encoding: str, grace_ms: int, run: Run) -> None:
    topic = app.topic(
        topic_name, value_deserializer="bytes" if encoding == "otlp_proto" else "json"
    )
    sdf = app.dataframe(topic)
    sdf = sdf.apply(run.first)
    sdf = sdf.apply(lambda v: to_calls(v, encoding), expand=True)
    sdf = sdf.set_timestamp(lambda value, _key, _ts, _headers: value["end_ms"])
    sdf = sdf.group_by(lambda v: f"{v['tenant']}|{v['model']}", name="tenant_model")
    sdf = sdf.apply(run.at_window_step)
    sdf = sdf.apply(finish_flags)
    aggs: dict[str, Any] = {
        "calls": Count(),
        "input_tokens": Sum("input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "cost_usd": Sum("cost_usd"),
        **{f"finish_{cls}": Sum(f"is_{cls}") for cls in floor.FINISH_CLASSES},
        "latencies": Collect("latency_s"),
    }
    window = sdf.tumbling_window(duration_ms=60_000, grace_ms=grace_ms, on_late=run.on_late)
    sdf = window.agg(**aggs).final(closing_strategy="partition")
    sdf = sdf.filter(lambda w, key, *_: not str(key).startswith(SENTINEL), metadata=True)
    sdf = sdf.apply(flatten)
    sdf.update(run.add)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--encoding", choices=("otlp_proto", "span_json"), required=True)
    p.add_argument("--group", required=True, help="consumer group (fresh per benchmark run)")
    p.add_argument("--grace-s", type=float, default=12 * 3600.0)
    p.add_argument(
        "--idle-timeout", type=float, default=10.0, help="stop after this many quiet seconds"
    )
    p.add_argument(
        "--idle-mark", type=float, default=3.0, help="quiet seconds before printing QUIX-IDLE"
    )
    args = p.parse_args(argv)
    run = Run()
    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel="WARNING",
            consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 300},
        )
        build(app, args.topic, args.encoding, int(args.grace_s * 1000), run)
        stop = threading.Event()
        threading.Thread(
            target=run.watch, args=(app, args.topic, args.idle_mark, stop), daemon=True
        ).start()
        t0, cpu0 = time.time(), time.process_time()
        error = ""
        try:
            app.run(timeout=args.idle_timeout, collect=False)
        except Exception as err:  # noqa: BLE001 - reported; the totals decide validity
            # The usual one: when the other process leaves at the end, the rebalance makes this
            # one re-check its stores against changelog high watermarks that tansu under-reports
            # (InvalidStoreChangelogOffset).  Windows emitted before it are already counted.
            error = f"{type(err).__name__}: {str(err)[:200]}"
        t1, cpu1 = time.time(), time.process_time()
        stop.set()
    out = {
        "variant": "quix",
        "windows": run.windows,
        "calls": run.calls,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost_usd": run.cost_usd,
        "finish": run.finish,
        "late": run.late,
        "t_start": t0,
        "t_first": run.t_first,
        "t_last_data": run.t_last_data,
        "t_close": run.t_close,
        "t_end": run.t_last or t1,
        "active_s": (run.t_last_data - run.t_first) + (run.t_last - run.t_close)
        if run.t_close
        else 0.0,
        "join_s": (run.t_first - t0) if run.t_first else 0.0,
        "exit_s": t1 - t0,
        "cpu_active_s": (run.cpu_last_data - run.cpu_first) + (run.cpu_last - run.cpu_close),
        "cpu_run_s": cpu1 - cpu0,
        "error": error,
        "maxrss_kb": floor.peak_rss_kb(),
    }
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-record Bytewax peer: the straightforward flow, one span at a time through ``fold_window``.

    KafkaSource(tail=False) -> flat_map(decode message into calls) -> key_on(tenant|model)
        -> fold_window(EventClock(end time, lateness), TumblingWindower(1 min)) -> summarize

Each window holds calls, token sums, cost, finish-class counts and the latencies (for an exact
p95 when it closes).  Decoding is the same as the floor's (``floor.calls_from_proto`` /
``json.loads`` + ``floor.call_from_json``).

Two choices keep the peer honest rather than a strawman:

* ``lateness`` defaults to 12 h: with 10 s most of a backlog read out of order across
  partitions is classified late and dropped (see ``bench/README.md``), and a peer that drops
  data is not a valid comparison.  Windows therefore close at EOF.
* ``to_system_utc=lambda _: None`` is the documented mitigation for bytewax#578: with the
  default identity the worker busy-loops while replaying event time far behind the wall clock.

Run it directly (one process) or as one of several processes (``--process-id/--addresses``, the
same arguments ``python -m bytewax.run`` takes).  It prints one JSON line with this process's
totals and timings when the flow ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
import floor
from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from floor import Call

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class WindowAcc:
    """The per-(tenant, model, minute) accumulator."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    finish: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


def fold(acc: WindowAcc, c: Call) -> WindowAcc:
    acc.calls += 1
    acc.input_tokens += c.input_tokens
    acc.output_tokens += c.output_tokens
    acc.cost_usd += c.cost_usd
    acc.finish[c.finish_class] = acc.finish.get(c.finish_class, 0) + 1
    acc.latencies.append(c.latency_s)
    return acc


def merge(a: WindowAcc, b: WindowAcc) -> WindowAcc:
    a.calls += b.calls
    a.input_tokens += b.input_tokens
    a.output_tokens += b.output_tokens
    a.cost_usd += b.cost_usd
    for k, v in b.finish.items():
        a.finish[k] = a.finish.get(k, 0) + v
    a.latencies.extend(b.latencies)
    return a


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    s = sorted(values)
    return s[max(0, -(-95 * len(s) // 100) - 1)]


def summarize(item: tuple[str, tuple[int, WindowAcc]]) -> dict[str, Any]:
    key, (_wid, acc) = item
    return {
        "key": key,
        "calls": acc.calls,
        "input_tokens": acc.input_tokens,
        "output_tokens": acc.output_tokens,
        "cost_usd": acc.cost_usd,
        "finish": acc.finish,
        "p95_latency_s": p95(acc.latencies),
    }


class Totals:
    """What this process emitted, summed (the harness checks it against the input)."""

    def __init__(self) -> None:
        self.windows = 0
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.finish: dict[str, int] = {}
        self.late = 0
        self.t_last = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.windows += 1
        self.calls += row["calls"]
        self.input_tokens += row["input_tokens"]
        self.output_tokens += row["output_tokens"]
        self.cost_usd += row["cost_usd"]
        for k, v in row["finish"].items():
            self.finish[k] = self.finish.get(k, 0) + v
        self.t_last = time.time()


TOTALS = Totals()


class _TotalsPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        for row in items:
            if row == "late":
                TOTALS.late += 1
            else:
                TOTALS.add(row)


class TotalsSink(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _TotalsPartition:
        return _TotalsPartition()


class _Decoder:
    """Decodes a message into calls; records when the first message arrived."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.t_first = 0.0

    def __call__(self, msg: KafkaSourceMessage[Any, Any] | KafkaError[Any, Any]) -> list[Call]:
        if not self.t_first:
            self.t_first = time.time()
        if isinstance(msg, KafkaError):  # not produced: raise_on_errors=True raises instead
            raise RuntimeError(str(msg.err))
        if self.encoding == "otlp_proto":
            calls: list[Call] = floor.calls_from_proto(msg.value)
            return calls
        return [floor.call_from_json(json.loads(msg.value))]


def _ts(c: Call) -> datetime:
    return EPOCH + timedelta(milliseconds=c.end_ms)


def build_flow(bootstrap: str, topic: str, decoder: _Decoder, lateness: timedelta) -> Dataflow:
    flow = Dataflow("perrecord")
    msgs = op.input(
        "kafka_in",
        flow,
        KafkaSource(
            [bootstrap],
            [topic],
            tail=False,
            add_config={k: str(v) for k, v in floor.FETCH_CONFIG.items()},
        ),
    )
    calls = op.flat_map("decode", msgs, decoder)
    keyed = op.key_on("key_tenant_model", calls, lambda c: f"{c.tenant}|{c.model}")
    clock = win.EventClock(_ts, wait_for_system_duration=lateness, to_system_utc=lambda _t: None)
    windower = win.TumblingWindower(length=timedelta(minutes=1), align_to=EPOCH)
    out = win.fold_window("fold_1m", keyed, clock, windower, WindowAcc, fold, merge)
    rows = op.map("summarize", out.down, summarize)
    late = op.map("late_marker", out.late, lambda _x: "late")
    op.output("totals", op.merge("all", rows, late), TotalsSink())
    return flow


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--encoding", choices=("otlp_proto", "span_json"), required=True)
    p.add_argument("--lateness-s", type=float, default=12 * 3600.0)
    p.add_argument("-i", "--process-id", type=int, default=None)
    p.add_argument("-a", "--addresses", default=None, help="host:port;host:port (multi-process)")
    args = p.parse_args(argv)
    decoder = _Decoder(args.encoding)
    flow = build_flow(args.bootstrap, args.topic, decoder, timedelta(seconds=args.lateness_s))
    t0, cpu0 = time.time(), time.process_time()
    cli_main(  # type: ignore[no-untyped-call]
        flow,
        workers_per_process=1,
        process_id=args.process_id,
        addresses=args.addresses.split(";") if args.addresses else None,
        epoch_interval=timedelta(seconds=10),
    )
    t1, cpu1 = time.time(), time.process_time()
    out = {
        "variant": "perrecord",
        "windows": TOTALS.windows,
        "calls": TOTALS.calls,
        "input_tokens": TOTALS.input_tokens,
        "output_tokens": TOTALS.output_tokens,
        "cost_usd": TOTALS.cost_usd,
        "finish": TOTALS.finish,
        "late": TOTALS.late,
        "t_start": t0,
        "t_first": decoder.t_first,
        "t_end": t1,
        "active_s": t1 - t0,
        "cpu_active_s": cpu1 - cpu0,
        "maxrss_kb": floor.peak_rss_kb(),
    }
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

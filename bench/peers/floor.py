"""Raw floor: a bare confluent-kafka consumer that reads and decodes, and does nothing else.

Also the one place where the benchmark peers decode spans, so that every peer (this floor, the
Quix Streams job, the per-record Bytewax flow) pays exactly the same decoding cost and the
differences between them are the aggregation engines, not the parsers:

* ``otlp_proto``: ``TracesData.FromString`` and, for every span, a plain ``dict`` of its
  attributes (resource attributes first, span attributes on top) -- the naive decode that the
  issue's "floor decoding every span's attributes into a dict" refers to.  Every span is decoded,
  LLM or not (HTTP parents and tool spans travel in the same messages).
* ``span_json``: one flat JSON object per message.  The floor reads a whole consumed batch with
  ``polars.read_ndjson`` (the fast floor); the peers ``json.loads`` one message at a time, as a
  per-record job would.

Peers reduce a decoded LLM span to a :data:`Call` tuple with :func:`calls_from_proto` /
:func:`call_from_json`.  :data:`PRICES` and :func:`finish_class` are the peers' cost table and
finish-class mapping; the harness applies the same ones to the generated input to check totals.

Only stdlib, confluent-kafka and opentelemetry-proto are imported at module level, because the
Quix job imports this module from its own virtualenv (Quix Streams pins an older
confluent-kafka than spanpulse).

Run as a script it prints one JSON line with the counts and timings (see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

#: USD per million (input, output) tokens of the generated models; the peers' cost table.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o3-mini": (1.10, 4.40),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "gemini-2.0-flash": (0.10, 0.40),
}
FINISH_CLASSES = ("error", "content_filter", "length", "tool_calls", "stop", "other")
_FINISH: dict[str, str] = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "tool_call": "tool_calls",
    "content_filter": "content_filter",
    "safety": "content_filter",
    "refusal": "content_filter",
}
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
TENANT_KEYS = ("tenant.id", "app.tenant_id")
_STATUS_ERROR = 2

#: Big fetches: the floor (and the peers) should not be limited by request round trips.
FETCH_CONFIG: dict[str, Any] = {
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
    "queued.max.messages.kbytes": 256 * 1024,
    "fetch.wait.max.ms": 50,
}


class Call(NamedTuple):
    """One LLM call as the peers aggregate it."""

    tenant: str
    model: str
    end_ms: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    finish_class: str
    latency_s: float


def peak_rss_kb() -> int:
    """This process's peak RSS since ``exec`` (``VmHWM``).

    Not ``getrusage().ru_maxrss``: Linux carries a forked child's ``ru_maxrss`` over from its
    parent, so every variant would report at least the harness's own footprint.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def finish_class(reason: str | None, is_error: bool) -> str:
    """Normalized finish class of a call (``error`` wins; unknown reasons are ``other``)."""
    if is_error:
        return "error"
    if reason is None:
        return "other"
    return _FINISH.get(reason.lower(), "other")


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> float:
    """List-price cost of a call from :data:`PRICES` (0 for unknown models)."""
    p_in, p_out = PRICES.get(model, (0.0, 0.0))
    return (input_tokens * p_in + output_tokens * p_out) / 1e6


# ------------------------------------------------------------------ OTLP protobuf
def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value
    return None


def proto_spans(data: bytes) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield ``(span, attributes)`` for every span of an OTLP ``TracesData`` message."""
    traces = TracesData.FromString(data)
    for rs in traces.resource_spans:
        res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = dict(res)
                for kv in span.attributes:
                    attrs[kv.key] = _value(kv.value)
                yield span, attrs


def calls_from_proto(data: bytes) -> list[Call]:
    """The LLM calls (OTel GenAI convention) of one OTLP message; other spans are skipped."""
    out = []
    for span, a in proto_spans(data):
        if a.get("gen_ai.operation.name") not in LLM_OPERATIONS:
            continue
        model = a.get("gen_ai.request.model") or a.get("gen_ai.response.model") or "unknown"
        tin = int(a.get("gen_ai.usage.input_tokens", 0))
        tout = int(a.get("gen_ai.usage.output_tokens", 0))
        reasons = a.get("gen_ai.response.finish_reasons") or [None]
        err = span.status.code == _STATUS_ERROR or "error.type" in a
        tenant = next((str(a[k]) for k in TENANT_KEYS if k in a), "unknown")
        out.append(
            Call(
                tenant,
                model,
                span.end_time_unix_nano // 1_000_000,
                tin,
                tout,
                cost_usd(model, tin, tout),
                finish_class(reasons[0], err),
                (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9,
            )
        )
    return out


# ------------------------------------------------------------------ span_json
def _epoch_ms(value: Any) -> int:
    if isinstance(value, int | float):
        return int(value)
    return int(datetime.fromisoformat(str(value)).timestamp() * 1000)


def call_from_json(obj: dict[str, Any]) -> Call:
    """The call of one decoded ``span_json`` object."""
    end = _epoch_ms(obj["end_time"])
    if obj.get("start_time") is not None:
        latency = (end - _epoch_ms(obj["start_time"])) / 1000.0
    else:
        latency = float(obj.get("latency_ms") or 0.0) / 1000.0
    model = obj.get("model") or "unknown"
    tin = int(obj.get("input_tokens") or 0)
    tout = int(obj.get("output_tokens") or 0)
    return Call(
        str(obj.get("tenant") or "unknown"),
        model,
        end,
        tin,
        tout,
        cost_usd(model, tin, tout),
        finish_class(obj.get("finish_reason"), bool(obj.get("error"))),
        latency,
    )


# ------------------------------------------------------------------ the floor itself
def end_offsets(consumer: Consumer, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    """High watermarks of ``partitions`` at start: the backlog to drain."""
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in partitions
    }


def all_partitions(consumer: Consumer, topic: str) -> list[int]:
    """Partition ids of ``topic``."""
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    return sorted(meta.partitions)


class FloorCounter:
    """Decodes batches and keeps the few counts needed to prove nothing was skipped."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.messages = 0
        self.spans = 0  # every decoded span (OTLP: LLM and non-LLM)
        self.llm_spans = 0
        self.input_tokens = 0

    def add(self, values: list[bytes]) -> None:
        self.messages += len(values)
        if self.encoding == "otlp_proto":
            for v in values:
                for _span, attrs in proto_spans(v):
                    self.spans += 1
                    if attrs.get("gen_ai.operation.name") in LLM_OPERATIONS:
                        self.llm_spans += 1
                        self.input_tokens += int(attrs.get("gen_ai.usage.input_tokens", 0))
        else:
            import io

            import polars as pl

            df = pl.read_ndjson(
                io.BytesIO(b"\n".join(values)), schema_overrides={"input_tokens": pl.Int64}
            )
            self.spans += df.height
            self.llm_spans += df.height
            self.input_tokens += int(df.get_column("input_tokens").sum() or 0)


def drain(args: argparse.Namespace) -> dict[str, Any]:
    """Read the assigned partitions from the beginning to their end offsets at start."""
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": "floor",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            **FETCH_CONFIG,
        }
    )
    parts = args.partitions or all_partitions(consumer, args.topic)
    ends = {p: e for p, e in end_offsets(consumer, args.topic, parts).items() if e > 0}
    counter = FloorCounter(args.encoding)
    t0, cpu0 = time.time(), time.process_time()
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in ends])
    while ends:
        msgs = consumer.consume(num_messages=args.batch, timeout=1.0)
        values: list[bytes] = []
        for m in msgs:
            value, part, off = m.value(), m.partition(), m.offset()
            if m.error() or value is None or part is None or off is None:
                raise RuntimeError(f"unexpected message: {m.error()}")
            values.append(value)
            if off + 1 >= ends.get(part, 1 << 62):
                del ends[part]
        if values:
            counter.add(values)
    t1, cpu1 = time.time(), time.process_time()
    consumer.close()
    return {
        "variant": "floor",
        "messages": counter.messages,
        "spans": counter.spans,
        "calls": counter.llm_spans,
        "input_tokens": counter.input_tokens,
        "t_start": t0,
        "t_end": t1,
        "active_s": t1 - t0,
        "cpu_active_s": cpu1 - cpu0,
        "maxrss_kb": peak_rss_kb(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--encoding", choices=("otlp_proto", "span_json"), required=True)
    p.add_argument(
        "--partitions",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=None,
        help="comma-separated partition ids (default: all)",
    )
    p.add_argument("--batch", type=int, default=5000, help="messages per consume() call")
    sys.stdout.write(json.dumps(drain(p.parse_args(argv))) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

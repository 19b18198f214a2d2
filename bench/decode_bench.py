"""Micro-benchmarks of the per-span path, CPU time, one process.

Run: /work/venv/bin/python bench/decode_bench.py [--spans-per-message 500] [--messages 20]

Builds typical LLM-call spans (~25 attributes each, including content keys that must be skipped,
resource attributes, a mix of providers/models), encodes them as OTLP protobuf (one
TracesData per Kafka message, like the collector's kafka exporter), OTLP/JSON, and span_json
(one object per message), and reports the best-of-N decode throughput.

``--pipeline`` instead measures what the job does per span on the throughput benchmark's
traffic (``TrafficModel(seed=1, tenants=500)``, ``--rate`` calls/s, 4 partitions, polls of 5000
messages): decode, cross-batch de-duplication and pre-aggregation into the default grains, per
batch, as ``BatchProcessor.decode`` + ``preaggregate``.  ``--roots`` compares code trees
side by side (interleaved rounds, median CPU seconds): a root other than ``spanpulse`` is a copy
of the package under another name found on ``--path``, e.g. the last commit's schemas::

    mkdir -p /tmp/old/spanpulse_old && touch /tmp/old/spanpulse_old/__init__.py
    git archive HEAD schemas | tar -x -C /tmp/old/spanpulse_old
    sed -i 's/spanpulse\\.schemas/spanpulse_old.schemas/g' /tmp/old/spanpulse_old/schemas/*.py
    python bench/decode_bench.py --pipeline --rate 1000 --path /tmp/old \\
        --roots spanpulse_old,spanpulse
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import sys
import time
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from spanpulse.schemas.conventions import AttributeKeys
from spanpulse.schemas.decode import Decoder, Message
from spanpulse.schemas.pricing import Pricing

NOW_MS = 1_760_000_000_000
MODELS = [
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("openai", "gpt-4o", "gpt-4o-2024-08-06"),
    ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
    ("anthropic", "claude-opus-4-5", "claude-opus-4-5-20251101"),
]


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, list):
        arr = ArrayValue(values=[AnyValue(string_value=v) for v in value])
        return KeyValue(key=key, value=AnyValue(array_value=arr))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _attributes(rng: random.Random, i: int) -> dict[str, object]:
    provider, model, response_model = MODELS[i % len(MODELS)]
    inp = rng.randint(50, 20_000)
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": 1024,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 1.0,
        "gen_ai.is_streaming": False,
        "gen_ai.openai.api_base": "https://api.example.com/v1/",
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": "x" * 400}]}]
        ),
        "gen_ai.output.messages": json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": "y" * 300}]}]
        ),
        "gen_ai.response.model": response_model,
        "gen_ai.response.id": f"resp-{i}",
        "gen_ai.response.finish_reasons": [
            rng.choice(["stop", "stop", "stop", "length", "tool_calls"])
        ],
        "gen_ai.usage.input_tokens": inp,
        "gen_ai.usage.output_tokens": rng.randint(1, 2000),
        "gen_ai.usage.total_tokens": inp + 10,
        "gen_ai.usage.cache_read.input_tokens": inp // 4,
        "gen_ai.usage.reasoning_tokens": 0,
        "server.address": "api.example.com",
        "server.port": 443,
        "app.feature": rng.choice(["search", "chat", "summarize"]),
        "app.prompt_version": "v3",
        "tenant.id": f"tenant-{rng.randint(1, 50)}",
        "app.output.parse_ok": rng.random() > 0.05,
        "http.response.status_code": 200,
    }


def build_proto_messages(n_messages: int, per_message: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for m in range(n_messages):
        td = TracesData()
        rs = td.resource_spans.add()
        rs.resource.attributes.extend(
            [_kv("service.name", "checkout"), _kv("deployment.environment.name", "prod")]
        )
        ss = rs.scope_spans.add()
        ss.scope.name = "opentelemetry.instrumentation.openai.v1"
        for j in range(per_message):
            i = m * per_message + j
            span = ss.spans.add()
            span.trace_id = rng.randbytes(16)
            span.span_id = rng.randbytes(8)
            span.name = "openai.chat"
            span.kind = 3
            end = (NOW_MS - rng.randint(0, 600_000)) * 1_000_000
            span.start_time_unix_nano = end - rng.randint(100, 20_000) * 1_000_000
            span.end_time_unix_nano = end
            span.attributes.extend(_kv(k, v) for k, v in _attributes(rng, i).items())
        out.append(td.SerializeToString())
    return out


def proto_to_json(values: list[bytes]) -> list[bytes]:
    out = []
    for value in values:
        doc = MessageToDict(TracesData.FromString(value), use_integers_for_enums=True)
        for rs in doc["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    for k in ("traceId", "spanId"):
                        import base64

                        span[k] = base64.b64decode(span[k]).hex()
        out.append(json.dumps(doc).encode())
    return out


def build_span_json(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        provider, model, response_model = MODELS[i % len(MODELS)]
        obj = {
            "end_time": NOW_MS - rng.randint(0, 600_000),
            "latency_ms": rng.randint(100, 20_000),
            "model": model,
            "response_model": response_model,
            "provider": provider,
            "operation": "chat",
            "trace_id": rng.randbytes(16).hex(),
            "span_id": rng.randbytes(8).hex(),
            "tenant": f"tenant-{rng.randint(1, 50)}",
            "feature": "search",
            "input_tokens": rng.randint(50, 20_000),
            "output_tokens": rng.randint(1, 2000),
            "finish_reason": "stop",
            "parse_ok": True,
        }
        out.append(json.dumps(obj).encode())
    return out


def bench(decoder: Decoder, values: list[bytes], repeat: int) -> tuple[float, int, int]:
    messages = [Message(v, "llm-spans", 0, i) for i, v in enumerate(values)]
    best = float("inf")
    batch = decoder.decode(messages)  # warm-up (price lookups cached like in steady state)
    for _ in range(repeat):
        t0 = time.process_time()  # CPU time: the machine is shared, wall time is noisy
        batch = decoder.decode(messages)
        best = min(best, time.process_time() - t0)
    return best, batch.spans_seen, batch.records.height


TRAFFIC_START_MS = 1_741_078_800_000  # bench/throughput.py's START_MS (2025-03-04T09:00Z)
PARTITIONS, POLL = 4, 5000
GRAINS = (
    ("tenant",),
    ("tenant", "model"),
    ("model",),
    ("feature", "prompt_version"),
    ("feature", "prompt_version", "model"),
)


def traffic_batches(encoding: str, calls: int, rate: float) -> list[tuple[int, list[bytes]]]:
    """(partition, values) polls of the throughput benchmark's backlog, in stream order."""
    import polars as pl

    from spanpulse.schemas.encode import encode_calls
    from spanpulse.schemas.traffic import TrafficModel

    model = TrafficModel(seed=1, tenants=500, rate_per_s=rate)
    df = pl.concat(model.iter_calls(TRAFFIC_START_MS, 1.6 * calls / rate, chunk_s=3600.0))
    df = df.sort("end_time_ms", maintain_order=True).head(calls)
    values: list[bytes] = []
    for chunk in df.iter_slices(20_000):
        messages = encode_calls(chunk, encoding, convention="otel", spans_per_message=200)  # type: ignore[arg-type]
        values.extend(messages)
    per_partition = [values[p::PARTITIONS] for p in range(PARTITIONS)]
    return [
        (p, v[i : i + POLL]) for p, v in enumerate(per_partition) for i in range(0, len(v), POLL)
    ]


def pipeline_seconds(root: str, encoding: str, batches: list[tuple[int, list[bytes]]]) -> float:
    """CPU seconds of decode + de-duplication + pre-aggregation of every batch, fresh state."""
    mod = {n: importlib.import_module(f"{root}.schemas.{n}") for n in (
        "aggregate", "batch", "conventions", "decode", "dedup", "pricing")}  # fmt: skip
    decoder = mod["decode"].Decoder(
        encoding, mod["conventions"].AttributeKeys(), mod["pricing"].Pricing(),
        now_ms=lambda: TRAFFIC_START_MS + 86_400_000,
    )  # fmt: skip
    processor = mod["batch"].BatchProcessor(
        {encoding: decoder}, mod["aggregate"].Aggregator(GRAINS, 60_000, 0.8, 3)
    )
    raws, offsets = [], [0] * PARTITIONS
    for p, values in batches:
        messages = [
            mod["decode"].Message(v, "llm-spans", p, offsets[p] + i) for i, v in enumerate(values)
        ]
        offsets[p] += len(values)
        raws.append((p, mod["batch"].RawBatch(f"llm-spans#{p}", encoding, messages, 0)))
    processor.process(raws[0][1])  # warm-up: imports, price lookups
    seen: dict[int, Any] = {}
    t0 = time.process_time()
    for p, raw in raws:
        state = seen.setdefault(p, mod["dedup"].SeenSpanIds(600_000, 1_000_000))
        processor.preaggregate(processor.decode(raw), state)
    return time.process_time() - t0


def pipeline_main(args: argparse.Namespace) -> None:
    """Interleaved rounds per encoding; median CPU s per million LLM calls, per root."""
    sys.path[:0] = [p for p in args.path.split(",") if p]
    roots = args.roots.split(",")
    for encoding in args.encodings.split(","):
        batches = traffic_batches(encoding, args.calls, args.rate)
        runs: dict[str, list[float]] = {r: [] for r in roots}
        for _ in range(args.repeat):
            for root in roots:
                runs[root].append(pipeline_seconds(root, encoding, batches))
        for root in roots:
            med = statistics.median(runs[root])
            print(
                f"{encoding:10s} {root:14s} {med / args.calls * 1e6:6.1f} CPU s/M calls "
                f"{args.calls / med:9,.0f} calls/CPU-s  runs "
                + ", ".join(f"{x:.2f}" for x in runs[root])
            )
        if len(roots) == 2:
            a, b = (statistics.median(runs[r]) for r in roots)
            print(f"{encoding:10s} {roots[0]} / {roots[1]} = {a / b:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans-per-message", type=int, default=500)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pipeline", action="store_true", help="decode+dedup+pre-aggregate")
    parser.add_argument("--rate", type=float, default=1000.0, help="--pipeline: calls/s")
    parser.add_argument("--calls", type=int, default=150_000, help="--pipeline: LLM calls")
    parser.add_argument("--encodings", default="span_json,otlp_proto")
    parser.add_argument("--roots", default="spanpulse", help="--pipeline: packages to compare")
    parser.add_argument("--path", default="", help="--pipeline: extra sys.path entries")
    args = parser.parse_args()
    if args.pipeline:
        pipeline_main(args)
        return
    pricing = Pricing()
    proto = build_proto_messages(args.messages, args.spans_per_message)
    cases = {
        "otlp_proto": proto,
        "otlp_json": proto_to_json(proto),
        "span_json": build_span_json(args.messages * args.spans_per_message),
    }
    for encoding, values in cases.items():
        decoder = Decoder(encoding, AttributeKeys(), pricing, now_ms=lambda: NOW_MS)  # type: ignore[arg-type]
        seconds, spans, records = bench(decoder, values, args.repeat)
        print(
            f"{encoding:11s} {len(values):6d} msgs {spans:7d} spans -> {records:7d} records "
            f"in {seconds * 1e3:8.1f} ms CPU = {spans / seconds:10,.0f} spans/CPU-s"
        )


if __name__ == "__main__":
    main()

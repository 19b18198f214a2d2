"""Fuzz drill: hostile input through the whole job (Kafka in, Parquet and dead letters out).

    python drills/fuzz_long.py --minutes 10             # the long version (embedded broker)
    python drills/fuzz_long.py --stream 8               # one job over 8 workloads (~1 GB)

Each *round* creates fresh topics for the three encodings, produces valid traffic, the hand-made
corpus (``tests/corpus``) and freshly generated hostile messages (random bytes, truncations, byte
flips, splices, protobuf with wrong attribute types and absurd times, OTLP/JSON with wrong shapes,
lone surrogates, deep nesting, megabyte strings, tens of thousands of attributes, empty messages,
one message over the decoder's size limit), runs the job in-process until it has caught up, and
checks it exactly against an oracle -- the same decoders run over the same messages:

* the job ends normally and within ``stall_after_s`` (a watchdog stops it otherwise);
* messages consumed == messages produced; spans seen == rolled up + skipped + span dead letters;
* the tenant-grain Parquet rollups (on-time + late rows) hold exactly the decoded records;
* the dead-letter topic holds exactly one envelope per dead letter, with the reason, stage and
  ``topic/partition/offset`` (and span index) the oracle gives, and the original bytes when
  payloads are on;
* resident memory: sampled every second while the job runs, peak growth per job and RSS after
  each round are reported (``--stream`` shows one long job).

The test suite runs one small round (tests/test_fuzz_job.py); results of the long version are
recorded in docs/fuzzing.md.  Which copy of a duplicated call is dropped depends on where
batches split, so records and duplicate skips are compared as a sum; all else is exact.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import random
import resource
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl
from bytewax.run import cli_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from prometheus_client import CollectorRegistry

from spanpulse.broker import EmbeddedBroker, create_topics
from spanpulse.config import Settings, from_mapping
from spanpulse.flows.job import build_job, make_processor
from spanpulse.schemas.conventions import AttributeKeys, span_lookup
from spanpulse.schemas.dead_letter import DeadLetter
from spanpulse.schemas.decode import Decoder, Message
from spanpulse.schemas.encode import encode_calls
from spanpulse.schemas.pricing import Pricing
from spanpulse.schemas.traffic import TrafficModel
from spanpulse.sinks import kafka_source

CORPUS_DIR = Path(__file__).resolve().parents[1] / "tests" / "corpus"
START_MS = 1_790_000_000_000 - (1_790_000_000_000 % 60_000)
ENCODINGS = ("otlp_proto", "otlp_json", "span_json")
PARTITIONS = {"otlp_proto": 2, "otlp_json": 1, "span_json": 1}
_PRICING = Pricing()


def _load_corpus_module() -> ModuleType:
    """``tests/corpus/make_corpus.py`` (wire-format helpers and the corpus cases)."""
    if "make_corpus" in sys.modules:
        return sys.modules["make_corpus"]
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS_DIR / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_corpus"] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


wire = _load_corpus_module()


# ------------------------------------------------------------------------------ generation

SPAN_KEYS = sorted(span_lookup(AttributeKeys()))
SPECIAL_STRINGS = ("NaN", "inf", "-1", "1e400", "9223372036854775807", " 12 ", "", "true", "1.5")
SPECIAL_INTS = (0, -1, 10_000_001, 2**62, 2**63 - 1, -(2**63))
SPECIAL_FLOATS = (float("nan"), float("inf"), float("-inf"), -0.0, 1.5, 1e300, 1e10)
TIMES_NS = (0, 1, 2**63 - 1, 2**63, 2**64 - 1, 4_102_444_800 * 10**9)


class HostileGenerator:
    """Seeded generator of hostile messages; every message uses its own source call (unique ids).

    Args:
        seed: root seed.
        source_start_ms: event time of the traffic the mutations start from (keep it apart from
            the valid traffic of the round so that no mutated span duplicates a produced one).
        big: also emit megabyte-sized messages (strings of 1-4 MB, 20k-50k attributes).
    """

    def __init__(self, seed: int, source_start_ms: int, big: bool = True) -> None:
        self.rng = random.Random(seed)
        self.big = big
        self._seed = seed
        self._next_ms = source_start_ms
        self._pools: dict[str, list[bytes]] = {e: [] for e in ENCODINGS}
        self._ids = 0
        #: How many messages of each kind were generated, ``encoding/kind`` -> count.
        self.counts: Counter[str] = Counter()

    def source(self, encoding: str) -> bytes:
        """Return a valid message never handed out before."""
        pool = self._pools[encoding]
        if not pool:
            calls = TrafficModel(seed=self._seed * 1000 + self._next_ms % 997, tenants=20,
                                 rate_per_s=3.0).calls(self._next_ms, 60)  # fmt: skip
            self._next_ms += 60_000
            spm = self.rng.choice([1, 3, 10])
            if encoding == "otlp_proto":
                pool.extend(encode_calls(calls, "otlp_proto", "mixed", spans_per_message=spm))
            elif encoding == "otlp_json":
                pool.extend(encode_calls(calls, "otlp_json", "mixed", spans_per_message=spm))
            else:
                pool.extend(encode_calls(calls, "span_json"))
            self.rng.shuffle(pool)
        return pool.pop()

    def messages(self, encoding: str, n: int) -> list[bytes]:
        """``n`` hostile messages for one encoding."""
        kinds = self._kinds(encoding)
        names, weights = list(kinds), [w for w, _ in kinds.values()]
        picked = self.rng.choices(names, weights, k=n)
        self.counts.update(f"{encoding}/{name}" for name in picked)
        return [kinds[name][1]() for name in picked]

    def _kinds(self, encoding: str) -> dict[str, tuple[float, Callable[[], bytes]]]:
        e = encoding
        kinds: dict[str, tuple[float, Callable[[], bytes]]] = {
            "random_bytes": (3, self._random_bytes),
            "empty": (0.5, lambda: b""),
            "truncate": (3, lambda: self._truncate(self.source(e))),
            "flip": (4, lambda: self._flip(self.source(e))),
            "splice": (1, lambda: self._splice(self.source(e), self.source(e))),
            "deep": (0.5, self._deep),
            "valid": (1, lambda: self.source(e)),
        }
        if e == "otlp_proto":
            kinds["wrong_types"] = (6, lambda: self._wrong_types_proto())
        elif e == "otlp_json":
            kinds["wrong_types"] = (5, lambda: self._wrong_types_json())
            kinds["shape"] = (4, lambda: self._json_shape(self.source(e)))
            kinds["surrogate"] = (1, lambda: self._surrogate(self.source(e)))
        else:
            kinds["random_fields"] = (6, self._random_flat)
            kinds["surrogate"] = (1, lambda: self._surrogate(self.source(e)))
        if self.big:
            kinds["big_string"] = (0.15, lambda: self._big_string(e))
            kinds["many_attributes"] = (0.1, lambda: self._many_attributes(e))
        return kinds

    # -- byte-level mutations -----------------------------------------------------------------

    def _random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.choice([1, 2, 8, 64, 512, 4096, 65536]))

    def _truncate(self, value: bytes) -> bytes:
        return value[: self.rng.randrange(1, len(value))] if len(value) > 1 else value

    def _flip(self, value: bytes) -> bytes:
        out = bytearray(value)
        for _ in range(self.rng.choice([1, 1, 2, 4, 16])):
            out[self.rng.randrange(len(out))] = self.rng.randrange(256)
        return bytes(out)

    def _splice(self, a: bytes, b: bytes) -> bytes:
        return a[: self.rng.randrange(len(a) + 1)] + b[self.rng.randrange(len(b) + 1) :]

    def _deep(self) -> bytes:
        levels = self.rng.choice([500, 5_000, 50_000, 500_000])
        opener, closer = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        return opener * levels + b"1" + closer * levels

    # -- structure-aware ------------------------------------------------------------------------

    def _any(self, depth: int = 0) -> Any:
        r = self.rng
        pick = r.randrange(12 if depth < 2 else 10)
        choices: list[Callable[[], Any]] = [
            lambda: r.choice(SPECIAL_STRINGS),
            lambda: "".join(r.choice("ab1 .-\u00e9\u4e2d") for _ in range(r.randrange(8))),
            lambda: r.choice(SPECIAL_INTS),
            lambda: r.randrange(-(2**63), 2**63),
            lambda: r.choice(SPECIAL_FLOATS),
            lambda: r.uniform(-1e6, 1e6),
            lambda: r.random() < 0.5,
            lambda: None,
            lambda: wire.Bytes(r.randbytes(4)),
            lambda: r.randbytes(r.randrange(1, 6)),  # a string value that may be bad UTF-8
            lambda: [self._any(depth + 1) for _ in range(r.randrange(3))],
            lambda: {r.choice(SPAN_KEYS): self._any(depth + 1) for _ in range(r.randrange(3))},
        ]
        return choices[pick]()

    def _span_attrs(self) -> list[tuple[str | bytes, Any]]:
        self._ids += 1
        attrs = dict(wire.llm_attrs(self._ids + 10**6)) if self.rng.random() < 0.7 else {}
        for _ in range(self.rng.randrange(1, 6)):
            attrs[self.rng.choice(SPAN_KEYS)] = self._any()
        return list(attrs.items())

    def _times(self) -> dict[str, int | None]:
        r = self.rng
        good = wire.END_NS

        def one() -> int | None:
            options: list[int | None] = [good, good - r.randrange(10**12), r.choice(TIMES_NS), None]
            return r.choice(options)

        return {"start_ns": one(), "end_ns": one()}

    def _wrong_types_proto(self) -> bytes:
        spans = []
        for _ in range(self.rng.randrange(1, 4)):
            self._ids += 1
            spans.append(
                wire.span(
                    self._span_attrs(),
                    self._ids + 2 * 10**6,
                    **self._times(),
                    status_code=self.rng.choice([0, 2, 2**31 - 1]),
                )  # fmt: skip
            )
        return bytes(wire.traces(spans))

    def _json_value(self, value: Any) -> Any:
        """Return a JSON AnyValue for a Python value, sometimes in a wrong but plausible spelling."""
        r = self.rng
        if isinstance(value, bytes):
            return {"bytesValue": base64.b64encode(value).decode()}
        if isinstance(value, bool):
            return {"boolValue": value if r.random() < 0.8 else str(value).lower()}
        if isinstance(value, int):
            return {"intValue": str(value) if r.random() < 0.7 else value}
        if isinstance(value, float):
            return {"doubleValue": value if r.random() < 0.7 else str(value)}
        if isinstance(value, list):
            return {"arrayValue": {"values": [self._json_value(v) for v in value]}}
        if isinstance(value, dict):
            kvs = [{"key": k, "value": self._json_value(v)} for k, v in value.items()]
            return {"kvlistValue": {"values": kvs}}
        return {} if value is None else {"stringValue": value}

    def _wrong_types_json(self) -> bytes:
        spans = []
        for _ in range(self.rng.randrange(1, 4)):
            self._ids += 1
            idx = self._ids + 3 * 10**6
            times = self._times()
            attrs = [(k, self._json_value(v)) for k, v in self._span_attrs() if isinstance(k, str)]
            spans.append(wire.json_span(attrs, idx, startTimeUnixNano=str(times["start_ns"] or 0),
                                        endTimeUnixNano=str(times["end_ns"] or "")))  # fmt: skip
        return bytes(wire.dumps(wire.json_traces(spans)))

    def _json_shape(self, value: bytes) -> bytes:
        doc = json.loads(value)
        for _ in range(self.rng.randrange(1, 4)):
            paths = list(_paths(doc))
            path = self.rng.choice(paths)
            doc = _replace(doc, path, self._any())
        return json.dumps(doc, default=lambda o: base64.b64encode(bytes(o)).decode()).encode()

    def _surrogate(self, value: bytes) -> bytes:
        """Replace string contents by lone surrogate escapes (legal JSON, not UTF-8)."""
        at = value.find(b'":"', self.rng.randrange(len(value)))
        if at < 0:
            at = value.find(b'":"')
        if at < 0:
            return value
        escape = self.rng.choice([b"\\ud800", b"\\udfff", b"\\ud83d", b"\\ud83d\\ude00"])
        return value[: at + 3] + escape + value[at + 3 :]

    def _random_flat(self) -> bytes:
        self._ids += 1
        doc = wire.flat(self._ids + 4 * 10**6)
        fields = ["end_time", "start_time", "model", "provider", "operation", "tenant",
                  "input_tokens", "output_tokens", "latency_ms", "ttft_ms", "cost_usd", "error",
                  "finish_reason", "trace_id"]  # fmt: skip
        for _ in range(self.rng.randrange(1, 5)):
            doc[self.rng.choice(fields)] = self._any()
        return json.dumps(doc, default=lambda o: base64.b64encode(bytes(o)).decode()).encode()

    def _big_string(self, encoding: str) -> bytes:
        size = self.rng.choice([1_000_000, 2_000_000, 4_000_000])
        self._ids += 1
        idx = self._ids + 5 * 10**6
        key = self.rng.choice(["gen_ai.input.messages", "tenant.id", "gen_ai.request.model"])
        if encoding == "span_json":
            return json.dumps(wire.flat(idx, prompt="p" * size, tenant="t" * (size // 4))).encode()
        attrs = [*wire.llm_attrs(idx, **{key.replace(".", "__"): None}), (key, "x" * size)]
        if encoding == "otlp_proto":
            return bytes(wire.traces([wire.span(attrs, idx)]))
        return bytes(wire.dumps(wire.json_traces([wire.json_span(attrs, idx)])))

    def _many_attributes(self, encoding: str) -> bytes:
        n = self.rng.choice([20_000, 50_000])
        self._ids += 1
        idx = self._ids + 6 * 10**6
        if encoding == "span_json":
            return json.dumps({**wire.flat(idx), **{f"x{i}": i for i in range(n)}}).encode()
        attrs = [*wire.llm_attrs(idx), *((f"x.attr.{i}", i) for i in range(n))]
        if encoding == "otlp_proto":
            return bytes(wire.traces([wire.span(attrs, idx)]))
        return bytes(wire.dumps(wire.json_traces([wire.json_span(attrs, idx)])))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


def corpus_messages() -> dict[str, list[bytes]]:
    """Return the hand-made corpus, one message per file (per distinct line for span_json)."""
    import tomllib

    cases = tomllib.loads((CORPUS_DIR / "manifest.toml").read_text())["case"]
    out: dict[str, list[bytes]] = {e: [] for e in ENCODINGS}
    for case in cases:
        data = (CORPUS_DIR / case["file"]).read_bytes()
        if case["encoding"] == "span_json":
            out["span_json"].extend(dict.fromkeys(data.split(b"\n")))  # no cross-message dups
        else:
            out[case["encoding"]].append(data)
    return out


# ------------------------------------------------------------------------------ one round


@dataclass
class Produced:
    """What went into one partition, with the offset the broker gave each message."""

    topic: str
    partition: int
    encoding: str
    values: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def messages(self) -> list[Message]:
        """Return the messages as the job's source will read them, in offset order."""
        pairs = sorted(zip(self.offsets, self.values, strict=True))
        return [Message(v, self.topic, self.partition, off) for off, v in pairs]


@dataclass
class RoundResult:
    """Counts, timings, memory and every failed check of one round."""

    seed: int
    produced: int = 0
    produced_bytes: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    oracle_records: int = 0
    rolled_up_calls: int = 0
    dlq_records: int = 0
    job_seconds: float = 0.0
    round_seconds: float = 0.0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    peak_growth_mb: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    rss_during_mb: list[float] = field(default_factory=list)  # sampled while the job runs


def rss_mb() -> float:
    """Return the current resident set size of this process (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sample_rss(stop: threading.Event, out: list[float], every_s: float = 1.0) -> None:
    while not stop.wait(every_s):
        out.append(round(rss_mb(), 1))


def peak_rss_mb() -> float:
    """Return the peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def workload(
    seed: int, hostile_per_encoding: int, *, minutes: int = 4, big: bool = True,
    extra: dict[str, list[bytes]] | None = None, keep_traceless: bool = False,
) -> tuple[dict[str, list[bytes]], Counter[str]]:  # fmt: skip
    """Return the messages per encoding and the count of each hostile kind generated.

    Messages: valid traffic, the corpus, hostile messages and ``extra``, shuffled.  Unless
    ``keep_traceless``, messages that decode to an LLM call without a trace id are left out and
    counted as ``<encoding>/dropped_traceless``: such a call crashes the job's pre-aggregation
    (exemplar selection in ``schemas/aggregate.py``, see docs/fuzzing.md) and would end the
    round before anything else is tested.
    """
    rng = random.Random(seed)
    calls = TrafficModel(seed=seed, tenants=30, rate_per_s=4.0).calls(START_MS, minutes * 60)
    out = {
        "otlp_proto": encode_calls(calls, "otlp_proto", convention="mixed", spans_per_message=20),
        "otlp_json": encode_calls(calls, "otlp_json", convention="mixed", spans_per_message=20),
        "span_json": encode_calls(calls.head(400), "span_json"),
    }
    gen = HostileGenerator(seed, START_MS - 86_400_000, big=big)
    for encoding, values in corpus_messages().items():
        out[encoding] += values + gen.messages(encoding, hostile_per_encoding)
        out[encoding] += (extra or {}).get(encoding, [])
        rng.shuffle(out[encoding])
        if not keep_traceless:
            out[encoding], dropped = drop_traceless(encoding, out[encoding])
            gen.counts[f"{encoding}/dropped_traceless"] += dropped
    return out, gen.counts


def drop_traceless(encoding: str, values: list[bytes], chunk: int = 25) -> tuple[list[bytes], int]:
    """Leave out the messages whose LLM calls include one without a (non-empty) trace id."""
    decoder = Decoder(encoding, AttributeKeys(), _PRICING)  # type: ignore[arg-type]

    def traceless(batch: list[bytes]) -> bool:
        msgs = [Message(v, "t", 0, i) for i, v in enumerate(batch)]
        trace_ids = decoder.decode(msgs).records["trace_id"]
        return bool(trace_ids.null_count() or (trace_ids == "").any())

    kept: list[bytes] = []
    for i in range(0, len(values), chunk):
        part = values[i : i + chunk]
        kept += [v for v in part if not traceless([v])] if traceless(part) else part
    return kept, len(values) - len(kept)


def produce(bootstrap: str, messages: dict[str, list[bytes]]) -> dict[str, list[Produced]]:
    """Create topics and produce; partition ``p`` of a topic gets every n-th message.

    Offsets come from the delivery reports (the embedded broker's watermarks are not exact).
    """
    out: dict[str, list[Produced]] = {}
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "message.max.bytes": 20_000_000, "log_level": 3})  # fmt: skip
    errors: list[str] = []
    for encoding, values in messages.items():
        n = PARTITIONS[encoding]
        topic = f"fuzz-{encoding.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic], partitions=n)
        out[encoding] = [Produced(topic, p, encoding) for p in range(n)]
        for i, value in enumerate(values):
            part = out[encoding][i % n]
            _produce_one(producer, part, value, errors)
    left = producer.flush(120)
    if left or errors:
        msg = f"{left} messages not delivered, errors: {errors[:3]}"
        raise RuntimeError(msg)
    return out


def _produce_one(producer: Producer, part: Produced, value: bytes, errors: list[str]) -> None:
    def delivered(err: KafkaError | None, msg: KafkaMessage) -> None:
        if err is not None:
            errors.append(err.str())
            return
        part.values.append(value)
        part.offsets.append(int(msg.offset() or 0))

    while True:
        try:
            producer.produce(part.topic, value=value, partition=part.partition,
                             on_delivery=delivered)  # fmt: skip
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def job_settings(
    bootstrap: str, produced: dict[str, list[Produced]], out: Path, dlq: str, payloads: bool
) -> Settings:
    """Build the settings of the job under test (defaults everywhere else)."""
    return from_mapping({
        "kafka": {"bootstrap_servers": bootstrap, "dead_letter_topic": dlq,
                  "alert_topic": f"{dlq}-alerts"},
        "inputs": [{"topic": parts[0].topic, "encoding": enc} for enc, parts in produced.items()],
        "rollups": {"output_dir": str(out)},
        "dead_letter": {"include_payload": payloads},
        "metrics": {"port": 0},
    })  # fmt: skip


@dataclass
class Oracle:
    """What the job must report: the same decoders over the same messages."""

    records: int = 0
    spans_seen: int = 0
    dead: Counter[tuple[str, int, int, int | None, str]] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    payloads: dict[tuple[str, int, int], bytes] = field(default_factory=dict)


def oracle(settings: Settings, produced: dict[str, list[Produced]], chunk: int = 500) -> Oracle:
    """Decode everything with decoders built like the job's."""
    decoders = make_processor(settings).decoders
    o = Oracle()
    for encoding, parts in produced.items():
        for part in parts:
            msgs = part.messages()
            for i in range(0, len(msgs), chunk):
                batch = decoders[encoding].decode(msgs[i : i + chunk])
                o.records += batch.records.height
                o.spans_seen += batch.spans_seen
                o.skipped.update({k: v for k, v in batch.skipped.items() if v})
                for d in batch.dead_letters:
                    o.dead[(d.topic, d.partition, d.offset, d.span_index, d.reason)] += 1
                    o.reasons[d.reason] += 1
            o.payloads.update({(m.topic, m.partition, m.offset): m.value or b"" for m in msgs})
    return o


def run_job(settings: Settings, stall_after_s: float) -> tuple[dict[str, Any], float, str | None]:
    """Run the bounded job in this process; a watchdog stops it if it stalls."""
    kafka_source.STOP_REQUESTED.clear()
    job = build_job(settings, bounded=True, registry=CollectorRegistry())
    done = threading.Event()
    stalled: list[str] = []

    def watchdog() -> None:
        if not done.wait(stall_after_s):
            stalled.append(f"job still running after {stall_after_s:.0f}s: stopped by watchdog")
            kafka_source.STOP_REQUESTED.set()

    threading.Thread(target=watchdog, daemon=True).start()
    t0 = time.monotonic()
    error = None
    try:
        cli_main(job.flow)  # type: ignore[no-untyped-call]
    except Exception as err:  # noqa: BLE001 - the drill reports any crash as a failure
        cause = err.__cause__ or err.__context__
        why = f" <- {type(cause).__name__}: {str(cause)[:300]}" if cause else ""
        error = f"job crashed: {type(err).__name__}: {str(err)[:300]}{why}"
    finally:
        done.set()
        kafka_source.STOP_REQUESTED.clear()
    if error is None and stalled:
        error = stalled[0]
    return job.observer.stats.as_dict(), time.monotonic() - t0, error


def read_dead_letters(
    bootstrap: str, topic: str, expected: int, idle_s: float = 1.0
) -> list[DeadLetter]:
    """Read every envelope on the dead-letter topic (stops after ``idle_s`` without news)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"fuzz-{uuid.uuid4().hex}",
                         "log_level": 0})  # fmt: skip
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    out: list[DeadLetter] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < (idle_s if len(out) >= expected else 10 * idle_s):
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    out.append(DeadLetter.from_json_bytes(m.value() or b""))
                    last = time.monotonic()
    finally:
        consumer.close()
    return out


def rolled_up_calls(out: Path) -> int:
    """Sum the calls of the tenant-grain Parquet rollups, on-time and late rows together."""
    files = sorted(out.rglob("*.parquet"))
    if not files:
        return 0
    frames = [pl.read_parquet(f, hive_partitioning=False).select("grain", "calls") for f in files]
    rows = pl.concat(frames).filter(pl.col("grain") == "tenant")
    return int(rows["calls"].sum())


def check(result: RoundResult, o: Oracle, dead: list[DeadLetter], payloads: bool) -> None:
    """Compare the job's counters, rollups and dead-letter topic with the oracle."""
    s, fail = result.stats, result.failures.append
    if s["messages"] != result.produced:
        fail(f"messages consumed {s['messages']} != produced {result.produced}")
    span_dead = sum(n for key, n in o.dead.items() if key[3] is not None)
    skipped = sum(s["skipped"].values())
    if s["spans_seen"] != s["records"] + skipped + span_dead:
        fail(f"spans {s['spans_seen']} != records {s['records']} + skipped {skipped} "
             f"+ span dead letters {span_dead}")  # fmt: skip
    got = _comparable(s["records"], s["spans_seen"], s["dead_letters"], s["skipped"])
    expected = _comparable(o.records, o.spans_seen, o.reasons, o.skipped)
    if got != expected:
        fail(f"job (records + duplicates, spans, dead, other skips) {got} != oracle {expected}")
    if (
        result.rolled_up_calls != s["records"]
        or s["rolled_up_calls"] + s["late_calls"] != s["records"]
    ):
        fail(f"rolled up {result.rolled_up_calls} (on time {s['rolled_up_calls']} + late "
             f"{s['late_calls']}) != records {s['records']}")  # fmt: skip
    _check_dead_letters(result, o, dead, payloads)


#: Within-batch de-duplication: which copy is counted depends on where batches split.
DEDUP_REASONS = ("duplicate_span", "duplicate_call")


def _comparable(
    records: int, spans: int, dead: Mapping[str, int], skipped: Mapping[str, int]
) -> tuple[int, int, dict[str, int], dict[str, int]]:
    """Return the counts that do not depend on batch boundaries (duplicates folded in records).

    Two messages carrying the same call are de-duplicated only when they land in one batch
    (documented), so the oracle's and the job's split between records and duplicate skips may
    differ; their sum, the spans seen, every dead-letter reason and every other skip may not.
    """
    dups = sum(skipped.get(r, 0) for r in DEDUP_REASONS)
    other = {k: v for k, v in skipped.items() if v and k not in DEDUP_REASONS}
    return records + dups, spans, {k: v for k, v in dead.items() if v}, other


def _check_dead_letters(
    result: RoundResult, o: Oracle, dead: list[DeadLetter], payloads: bool
) -> None:
    fail = result.failures.append
    got = Counter((d.topic, d.partition, d.offset, d.span_index, d.reason) for d in dead)
    if got != o.dead:
        fail(f"dead-letter topic differs from oracle: missing {list((o.dead - got).items())[:3]}, "
             f"unexpected {list((got - o.dead).items())[:3]}")  # fmt: skip
    for d in dead:
        origin = (d.topic, d.partition, d.offset)
        if not d.reason or not d.detail or d.stage not in ("decode", "normalize"):
            fail(f"dead letter without a reason, detail or stage: {d.reason!r} at {origin}")
        elif not payloads and d.payload is not None:
            fail(f"payload present with include_payload=false at {origin}")
        elif payloads and d.span_index is None and (d.payload or b"") != o.payloads.get(origin):
            fail(f"dead letter at {origin} does not carry the original bytes")


def run_round(
    bootstrap: str, workdir: Path, seed: int, *, hostile_per_encoding: int = 300,
    big: bool = True, extra: dict[str, list[bytes]] | None = None, payloads: bool = True,
    stall_after_s: float = 300.0, keep_traceless: bool = False, minutes: int = 4,
    workloads: int = 1,
) -> RoundResult:  # fmt: skip
    """Produce one round's workload into fresh topics, run the job, check everything.

    ``workloads > 1`` concatenates that many workloads (seeds ``seed``, ``seed + 1``, ...) so
    that one job reads them all: the RSS samples then show memory over a long single run.
    """
    t0 = time.monotonic()
    result = RoundResult(seed=seed)
    messages: dict[str, list[bytes]] = {e: [] for e in ENCODINGS}
    kinds: Counter[str] = Counter()
    for k in range(workloads):
        more, more_kinds = workload(seed + k, hostile_per_encoding, big=big, extra=extra,
                                    keep_traceless=keep_traceless, minutes=minutes)  # fmt: skip
        for encoding, values in more.items():
            messages[encoding] += values
        kinds.update(more_kinds)
    result.kinds = dict(sorted(kinds.items()))
    result.produced = sum(len(v) for v in messages.values())
    result.produced_bytes = sum(len(m) for v in messages.values() for m in v)
    produced = produce(bootstrap, messages)
    dlq = f"fuzz-dlq-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [dlq, f"{dlq}-alerts"])
    out = workdir / f"round-{seed}-{uuid.uuid4().hex[:6]}"
    settings = job_settings(bootstrap, produced, out, dlq, payloads)
    o = oracle(settings, produced)
    result.oracle_records = o.records
    del messages
    result.rss_before_mb, peak_before = round(rss_mb(), 1), peak_rss_mb()
    sampling = threading.Event()
    threading.Thread(target=_sample_rss, args=(sampling, result.rss_during_mb), daemon=True).start()
    result.stats, result.job_seconds, error = run_job(settings, stall_after_s)
    sampling.set()
    result.peak_growth_mb = round(peak_rss_mb() - peak_before, 1)
    result.rss_after_mb = round(rss_mb(), 1)
    if error:
        result.failures.append(error)
    result.rolled_up_calls = rolled_up_calls(out)
    dead = read_dead_letters(bootstrap, dlq, 0 if error else sum(o.dead.values()))
    result.dlq_records = len(dead)
    check(result, o, dead, payloads)
    result.round_seconds = round(time.monotonic() - t0, 1)
    result.job_seconds = round(result.job_seconds, 1)
    return result


# ------------------------------------------------------------------------------ the long run


def main() -> int:
    """CLI for the long fuzz drill: rounds until the time is up, one JSON line per round."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="wall time to keep fuzzing")
    p.add_argument("--seed", type=int, default=1, help="seed of the first round (+1 per round)")
    p.add_argument("--hostile", type=int, default=1500, help="hostile messages per encoding/round")
    p.add_argument("--workdir", type=Path, default=Path("fuzz-work"))
    p.add_argument("--results", type=Path, default=None, help="also write the rounds as JSON")
    p.add_argument(
        "--stream",
        type=int,
        default=0,
        help="instead of rounds: one job over this many workloads (memory over time)",
    )
    p.add_argument("--keep-traceless", action="store_true",
                   help="keep LLM calls without a trace id (they crash the job today)")  # fmt: skip
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rounds: list[RoundResult] = []
    deadline = time.monotonic() + args.minutes * 60
    with EmbeddedBroker() as broker:
        seed = args.seed
        if args.stream:
            res = run_round(broker.bootstrap, args.workdir, seed, hostile_per_encoding=args.hostile,
                            workloads=args.stream, stall_after_s=3600)  # fmt: skip
            rounds.append(res)
            print(json.dumps(_summary_line(res) | {"rss_during_mb": res.rss_during_mb}))
            deadline = 0.0
        while time.monotonic() < deadline:
            big = {"otlp_proto": [b"\x0f" + random.Random(seed).randbytes(12_000_000)]}
            res = run_round(broker.bootstrap, args.workdir, seed, hostile_per_encoding=args.hostile,
                            extra=big, keep_traceless=args.keep_traceless)  # fmt: skip
            rounds.append(res)
            print(json.dumps(_summary_line(res)), flush=True)
            seed += 1
    summary = _summary(rounds)
    print(json.dumps(summary, indent=2))
    if args.results:
        args.results.write_text(
            json.dumps({"summary": summary, "rounds": [asdict(r) for r in rounds]}, indent=2)
        )
    return 0 if summary["failed_rounds"] == 0 else 1


def _summary_line(r: RoundResult) -> dict[str, Any]:
    s = r.stats
    return {
        "seed": r.seed, "messages": r.produced, "MB": round(r.produced_bytes / 1e6, 1),
        "spans": s.get("spans_seen"), "records": s.get("records"),
        "dead": sum(s.get("dead_letters", {}).values()), "skipped": sum(s.get("skipped", {}).values()),
        "job_s": r.job_seconds, "round_s": r.round_seconds, "rss_after_mb": r.rss_after_mb,
        "peak_growth_mb": r.peak_growth_mb, "failures": r.failures,
    }  # fmt: skip


def _summary(rounds: list[RoundResult]) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for r in rounds:
        reasons.update(r.stats.get("dead_letters", {}))
        skipped.update(r.stats.get("skipped", {}))
    return {
        "rounds": len(rounds),
        "failed_rounds": sum(bool(r.failures) for r in rounds),
        "messages": sum(r.produced for r in rounds),
        "megabytes": round(sum(r.produced_bytes for r in rounds) / 1e6, 1),
        "spans_seen": sum(r.stats.get("spans_seen", 0) for r in rounds),
        "records": sum(r.stats.get("records", 0) for r in rounds),
        "dead_letters": dict(reasons.most_common()),
        "skipped": dict(skipped.most_common()),
        "job_seconds": round(sum(r.job_seconds for r in rounds), 1),
        "rss_after_mb": [r.rss_after_mb for r in rounds],
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())

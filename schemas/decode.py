"""Batch decoding of Kafka messages into normalized LLM-call records: the dataflow's entry point.

:class:`Decoder` is built once from settings and called per batch of messages.  Per message it
only extracts (encoding-specific, see :mod:`.otlp_proto`, :mod:`.otlp_json`, :mod:`.span_json`);
validation, normalization, de-duplication and pricing then run once over the whole batch in Polars
(:mod:`.normalize`, :mod:`.pricing`).  ``decode`` never raises: every message and span is
accounted for in the returned :class:`DecodedBatch`::

    spans_seen == len(records) + sum(skipped.values()) + per-span dead letters
    messages   == well-formed messages + whole-message dead letters

Time is injected (``now_ms``) and only bounds how far in the future an end time may be; the
default reads the wall clock at the edge, tests pass a fixed clock.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from spanpulse.schemas.conventions import AttributeKeys
from spanpulse.schemas.dead_letter import DeadLetter, truncate
from spanpulse.schemas.normalize import (
    DEAD_LETTER_FIELDS,
    MAX_TOKENS_PER_CALL,
    Row,
    deduplicate,
    normalize,
    raw_frame,
    reject_reasons,
)
from spanpulse.schemas.otlp_json import JsonExtractor, OtlpJsonError
from spanpulse.schemas.otlp_proto import DecodeError, Extracted, ProtoExtractor
from spanpulse.schemas.pricing import Pricing
from spanpulse.schemas.record import RECORD_SCHEMA, conform, empty_records
from spanpulse.schemas.span_json import decode_batch

Encoding = Literal["otlp_proto", "otlp_json", "span_json"]
ENCODINGS: Final = ("otlp_proto", "otlp_json", "span_json")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One Kafka message, already read by the I/O layer."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None  # Kafka timestamp, informational
    key: bytes | None = None


@dataclass
class DecodedBatch:
    """Outcome of one batch: records, dead letters and the counts that account for every span."""

    records: pl.DataFrame  # exactly RECORD_SCHEMA; valid LLM-call records only
    dead_letters: list[DeadLetter]
    messages: int
    spans_seen: int
    skipped: dict[str, int] = field(default_factory=dict)
    max_event_time_ms: int | None = None
    #: Kafka offset of each record's message, aligned with ``records`` (None when empty).
    #: Lateness is judged per message (an exporter batches a message's spans by resource, so
    #: their end times are not in order), see ``PartitionTracker.late_marks``.
    offsets: npt.NDArray[np.int64] | None = None


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Stage1:
    """What the per-message pass produced."""

    raw: pl.DataFrame
    dead: list[DeadLetter]
    skipped: dict[str, int]
    spans: int
    good: list[int]  # indexes of well-formed messages


class Decoder:
    """Decode batches of messages of one encoding into normalized records."""

    def __init__(
        self,
        encoding: Encoding,
        keys: AttributeKeys,
        pricing: Pricing,
        fill_threshold: float = 0.8,
        max_future_skew_ms: int = 86_400_000,
        min_time_ms: int = 946_684_800_000,
        max_message_bytes: int = 10_000_000,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        if encoding not in ENCODINGS:
            msg = f"encoding must be one of {ENCODINGS}, got {encoding!r}"
            raise ValueError(msg)
        if not 0 < fill_threshold <= 1:
            msg = f"fill_threshold must be in (0, 1], got {fill_threshold}"
            raise ValueError(msg)
        if max_future_skew_ms < 0 or max_message_bytes <= 0:
            msg = "max_future_skew_ms must be >= 0 and max_message_bytes > 0"
            raise ValueError(msg)
        self.encoding: Encoding = encoding
        self.keys = keys
        self.pricing = pricing
        #: Not used by decoding (the record carries ``context_fill``); kept for the aggregator.
        self.fill_threshold = fill_threshold
        self.max_future_skew_ms = max_future_skew_ms
        self.min_time_ms = min_time_ms
        self.max_message_bytes = max_message_bytes
        self._now_ms = now_ms or _wall_clock_ms
        self._extractor = JsonExtractor(keys) if encoding == "otlp_json" else ProtoExtractor(keys)

    def decode(self, messages: Sequence[Message]) -> DecodedBatch:
        """Decode one batch; never raises."""
        stage1 = self._extract(messages)
        try:
            return self._finish(messages, stage1)
        except Exception:  # a bug must not stop the stream: dead-letter the batch instead
            _log.exception("normalization failed; dead-lettering %d messages", len(stage1.good))
            return self._batch_failure(messages, stage1)

    # -- stage 1: per message ------------------------------------------------------------------

    def _extract(self, messages: Sequence[Message]) -> _Stage1:
        dead: list[DeadLetter] = []
        present = [m.value for m in messages if m.value]
        if len(present) == len(messages) and max(map(len, present), default=0) <= (
            self.max_message_bytes
        ):
            candidates = list(range(len(messages)))  # the usual batch: every message usable
        else:
            candidates = self._usable(messages, dead)
        if self.encoding == "span_json":
            return self._extract_span_json(messages, candidates, dead)
        rows: list[Row] = []
        skipped: dict[str, int] = {}
        spans = 0
        good: list[int] = []
        for i in candidates:
            extracted = self._extract_one(messages[i], i, dead)
            if extracted is None:
                continue
            good.append(i)
            rows.extend(extracted.rows)
            spans += extracted.spans
            for reason, n in extracted.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
        return _Stage1(raw_frame(rows), dead, skipped, spans, good)

    def _usable(self, messages: Sequence[Message], dead: list[DeadLetter]) -> list[int]:
        """Return the indexes of non-empty messages within the size limit; dead-letter the rest."""
        candidates: list[int] = []
        for i, message in enumerate(messages):
            if not message.value:
                dead.append(_message_dl(message, "empty_message", "message has no value"))
            elif len(message.value) > self.max_message_bytes:
                detail = f"message has {len(message.value)} bytes, limit {self.max_message_bytes}"
                dead.append(_message_dl(message, "message_too_large", detail))
            else:
                candidates.append(i)
        return candidates

    def _extract_one(
        self, message: Message, index: int, dead: list[DeadLetter]
    ) -> Extracted | None:
        assert message.value is not None
        try:
            return self._extractor.extract(message.value, index)
        except DecodeError as err:
            reason, detail = "protobuf_decode_error", f"not OTLP protobuf: {err}"
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            reason, detail = "json_decode_error", f"not valid JSON: {err}"
        except OtlpJsonError as err:  # our own message: names fields, never echoes values
            reason, detail = "schema_violation", f"not OTLP trace data: {err}"
        except RecursionError:  # json.loads on hostile nesting (thousands of levels)
            reason = (
                "json_decode_error" if self.encoding == "otlp_json" else "protobuf_decode_error"
            )
            detail = "nested too deeply to decode"
        except (TypeError, AttributeError, ValueError) as err:  # type name only: no values
            reason = "schema_violation" if self.encoding == "otlp_json" else "protobuf_decode_error"
            detail = f"not OTLP trace data ({type(err).__name__})"
        except Exception as err:  # noqa: BLE001 - anything else in a message is that message's fault
            reason, detail = "decode_error", f"unexpected {type(err).__name__} while decoding"
        dead.append(_message_dl(message, reason, detail))
        return None

    def _extract_span_json(
        self, messages: Sequence[Message], candidates: list[int], dead: list[DeadLetter]
    ) -> _Stage1:
        values = [messages[i].value or b"" for i in candidates]
        batch = decode_batch(values, candidates)
        failed = set()
        for index, reason, detail in batch.failures:
            failed.add(index)
            dead.append(_message_dl(messages[index], reason, detail))
        good = [i for i in candidates if i not in failed] if failed else candidates
        return _Stage1(batch.raw, dead, dict(batch.skipped), batch.spans, good)

    # -- stage 2: vectorized over the batch ----------------------------------------------------

    def _finish(self, messages: Sequence[Message], stage1: _Stage1) -> DecodedBatch:
        reason, detail = reject_reasons(
            self._now_ms(), self.min_time_ms, self.max_future_skew_ms, MAX_TOKENS_PER_CALL
        )
        raw = stage1.raw.with_columns(reason.alias("_reason"), detail.alias("_detail"))
        rejected = raw.filter(pl.col("_reason").is_not_null())
        dead = stage1.dead + _span_dead_letters(messages, rejected)
        skipped = dict(stage1.skipped)
        records = empty_records()
        offsets = None
        valid = raw.filter(pl.col("_reason").is_null()).drop("_reason", "_detail")
        if valid.height:
            kept, dup_counts = deduplicate(normalize(valid))
            for name, n in dup_counts.items():
                if n:
                    skipped[name] = skipped.get(name, 0) + n
            priced = self.pricing.apply(kept)
            records = _to_records(priced)
            all_offsets = np.fromiter((m.offset for m in messages), np.int64, len(messages))
            offsets = all_offsets[priced["msg_index"].to_numpy()]
        max_time = records["end_time_ms"].max() if records.height else None
        return DecodedBatch(
            records=records,
            dead_letters=dead,
            messages=len(messages),
            spans_seen=stage1.spans,
            skipped=skipped,
            max_event_time_ms=None if max_time is None else int(max_time),  # type: ignore[arg-type]
            offsets=offsets,
        )

    def _batch_failure(self, messages: Sequence[Message], stage1: _Stage1) -> DecodedBatch:
        dead = list(stage1.dead)
        for i in stage1.good:
            dead.append(
                _message_dl(
                    messages[i], "normalize_error", "batch normalization failed", "normalize"
                )
            )
        return DecodedBatch(empty_records(), dead, len(messages), 0, {}, None)


def _to_records(priced: pl.DataFrame) -> pl.DataFrame:
    fill = (pl.col("input_tokens") + pl.col("output_tokens").fill_null(0)) / pl.col(
        "context_window"
    )
    frame = priced.with_columns(fill.alias("context_fill"))
    records: pl.DataFrame = conform(frame.select([c for c in RECORD_SCHEMA if c in frame.columns]))
    return records


def _message_dl(message: Message, reason: str, detail: str, stage: str = "decode") -> DeadLetter:
    return DeadLetter(
        reason=reason,
        detail=truncate(detail),
        stage=stage,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        payload=message.value,
        span_index=None,
    )


def _span_dead_letters(messages: Sequence[Message], rejected: pl.DataFrame) -> list[DeadLetter]:
    """One dead letter per rejected span, with a JSON payload of its non-content fields."""
    if not rejected.height:
        return []
    fields = rejected.select("msg_index", "span_index", "_reason", "_detail", *DEAD_LETTER_FIELDS)
    out = []
    for row in fields.iter_rows(named=True):
        message = messages[row.pop("msg_index")]
        span_index, reason, detail = row.pop("span_index"), row.pop("_reason"), row.pop("_detail")
        out.append(
            DeadLetter(
                reason=reason,
                detail=truncate(detail or reason),
                stage="normalize",
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                payload=json.dumps(_json_safe(row), separators=(",", ":")).encode(),
                span_index=span_index,
            )
        )
    return out


def _json_safe(row: dict[str, object]) -> dict[str, object]:
    """Replace NaN/inf (which JSON cannot carry) by their names."""
    return {
        k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()
    }


__all__ = ["DeadLetter", "DecodedBatch", "Decoder", "Encoding", "Message"]

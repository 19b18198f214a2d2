"""Dead letters: messages or spans the decoder could not turn into records, with their origin.

Errors are a stream, not exceptions (STYLE habit 10): every message and every span of a batch ends
up either as a record, a counted skip, or one :class:`DeadLetter`.  A dead letter names what went
wrong (``reason``, a short machine code), where (``stage``, ``topic``/``partition``/``offset`` and,
for one span of a good message, ``span_index``) and carries a payload to replay or inspect:

* whole-message failures carry the original bytes (base64 in the JSON envelope).  Those bytes can
  hold prompt/completion content written by the instrumentation; a sink that must not keep
  content calls ``to_json_bytes(include_payload=False)``;
* a single rejected span carries a small JSON of its extracted non-content fields (ids, model,
  tokens, times, dimensions), never content.

``detail`` is one sentence for humans; it never echoes attribute values (only key names and wire
types) and is truncated to :data:`MAX_DETAIL_CHARS`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Final

MAX_DETAIL_CHARS: Final = 200


def truncate(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class DeadLetter:
    """One message or span that was not decoded, with its Kafka origin and a replayable payload."""

    reason: str
    detail: str
    stage: str
    topic: str
    partition: int
    offset: int
    payload: bytes | None
    span_index: int | None

    def __post_init__(self) -> None:
        if len(self.detail) > MAX_DETAIL_CHARS:
            object.__setattr__(self, "detail", truncate(self.detail))

    def to_json_bytes(self, include_payload: bool = True) -> bytes:
        """Serialize as the dead-letter Kafka value: a JSON object, payload base64-encoded."""
        payload = self.payload if include_payload else None
        envelope = {
            "reason": self.reason,
            "detail": self.detail,
            "stage": self.stage,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "span_index": self.span_index,
            "payload_b64": None if payload is None else base64.b64encode(payload).decode("ascii"),
        }
        return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> DeadLetter:
        """Parse an envelope written by :meth:`to_json_bytes` (for replay tools and tests)."""
        doc = json.loads(data)
        raw = doc.get("payload_b64")
        return cls(
            reason=doc["reason"],
            detail=doc["detail"],
            stage=doc["stage"],
            topic=doc["topic"],
            partition=int(doc["partition"]),
            offset=int(doc["offset"]),
            payload=None if raw is None else base64.b64decode(raw),
            span_index=doc.get("span_index"),
        )

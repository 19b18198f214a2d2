"""The alert contract: one JSON object per Kafka message on the alert topic.

Why this shape: a subscriber must be able to act on one message alone — which series, which
signal, how far from normal, since when, which traces to open and what changed — and must
be able to drop re-deliveries.  Delivery is at-least-once (the Bytewax Kafka sink replays
the last epoch after a restart), so every alert carries a deterministic :attr:`Alert.id`:

* ``fingerprint`` identifies the *series and signal* (detector, metric, grain, dimensions);
  it is also the Kafka message key, so every message of one anomaly lands on one partition
  in order.
* ``id`` identifies *one message*: ``sha256(fingerprint | window_start | status)``.  A
  replayed firing or resolved message has the same id; consumers deduplicate by ``id``.

Times are ISO 8601 UTC with a ``Z`` suffix.  Alerts never carry prompt or completion
content: only dimension values, numbers and trace ids.  ``alert.schema.json`` next to this
module (JSON Schema draft 2020-12) describes every field.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

#: Version of the alert JSON layout; bumped on any incompatible change.
ALERT_SCHEMA_VERSION: Final = 1

#: Default Kafka topic for alerts.
DEFAULT_ALERT_TOPIC: Final = "spanpulse.alerts"

#: Path of the JSON Schema that every alert validates against.
ALERT_SCHEMA_PATH: Final = Path(__file__).with_name("alert.schema.json")

Status = Literal["firing", "resolved"]
Severity = Literal["warning", "critical"]

STATUSES: Final = ("firing", "resolved")
SEVERITIES: Final = ("warning", "critical")


def iso_z(ts: datetime) -> str:
    """Format an aware datetime as ISO 8601 UTC with a ``Z`` suffix (microseconds kept if any).

    Raises:
        ValueError: for a naive datetime, which would make the instant ambiguous.
    """
    if ts.tzinfo is None:
        msg = f"alert times must be timezone-aware UTC datetimes, got naive {ts!r}"
        raise ValueError(msg)
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def fingerprint(detector: str, metric: str, grain: str, dimensions: Mapping[str, str]) -> str:
    """Return the stable identity of one (detector, metric, series): 32 hex characters.

    Dimension order does not matter (they are sorted), so the same series always maps to
    the same fingerprint, across restarts and workers.

    >>> fingerprint("level_shift", "cost_usd", "tenant", {"tenant": "acme"}) == fingerprint(
    ...     "level_shift", "cost_usd", "tenant", {"tenant": "acme"})
    True
    """
    dims = "|".join(f"{k}={dimensions[k]}" for k in sorted(dimensions))
    raw = "\x1f".join((detector, metric, grain, dims))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def alert_id(fingerprint_: str, window_start: datetime, status: Status) -> str:
    """Return the deterministic message id: same alert re-delivered, same id (64 hex)."""
    raw = f"{fingerprint_}|{iso_z(window_start)}|{status}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/Infinity: map non-finite numbers to ``None``."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Contributor:
    """One child series (one dimension level down) and how much of the change it explains.

    ``share`` is this child's fraction of the total change of the parent (0..1, may exceed 1
    or be negative when other children moved the other way); ``observed``/``expected`` are
    the child's own values of the alert's metric.
    """

    dimensions: Mapping[str, str]
    observed: float | None
    expected: float | None
    share: float | None
    calls: int

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict."""
        return {
            "dimensions": dict(sorted(self.dimensions.items())),
            "observed": _finite(self.observed),
            "expected": _finite(self.expected),
            "share": _finite(self.share),
            "calls": int(self.calls),
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """One firing or resolved alert (see the module docstring and ``alert.schema.json``)."""

    fingerprint: str
    status: Status
    severity: Severity
    detector: str
    metric: str
    grain: str
    dimensions: Mapping[str, str]
    window_start: datetime
    window_end: datetime
    observed: float | None
    expected: float | None
    score: float
    threshold: float
    started_at: datetime
    message: str
    next_step: str
    exemplar_trace_ids: tuple[str, ...] = ()
    contributors: tuple[Contributor, ...] = ()
    unit: str = ""
    ended_at: datetime | None = None
    details: Mapping[str, float | int | str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Deterministic id: ``sha256(fingerprint | window_start | status)``."""
        return alert_id(self.fingerprint, self.window_start, self.status)

    @property
    def key(self) -> bytes:
        """Kafka message key: the fingerprint, so one anomaly's messages stay in order."""
        return self.fingerprint.encode("ascii")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict (the wire format)."""
        return {
            "schema_version": ALERT_SCHEMA_VERSION,
            "id": self.id,
            "fingerprint": self.fingerprint,
            "status": self.status,
            "severity": self.severity,
            "detector": self.detector,
            "metric": self.metric,
            "unit": self.unit,
            "grain": self.grain,
            "dimensions": dict(sorted(self.dimensions.items())),
            "window_start": iso_z(self.window_start),
            "window_end": iso_z(self.window_end),
            "started_at": iso_z(self.started_at),
            "ended_at": iso_z(self.ended_at) if self.ended_at is not None else None,
            "observed": _finite(self.observed),
            "expected": _finite(self.expected),
            "score": _finite(self.score) or 0.0,
            "threshold": _finite(self.threshold) or 0.0,
            "message": self.message,
            "next_step": self.next_step,
            "exemplar_trace_ids": list(self.exemplar_trace_ids),
            "contributors": [c.to_dict() for c in self.contributors],
            "details": {k: _detail_value(v) for k, v in sorted(self.details.items())},
        }

    def to_json_bytes(self) -> bytes:
        """Serialize to compact UTF-8 JSON (the Kafka message value)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def _detail_value(value: float | int | str) -> float | int | str | None:
    if isinstance(value, float):
        return _finite(value)
    return value


def build_alert(
    *,
    detector: str,
    metric: str,
    grain: str,
    dimensions: Mapping[str, str],
    status: Status,
    severity: Severity,
    window_start: datetime,
    window_end: datetime,
    started_at: datetime,
    observed: float | None,
    expected: float | None,
    score: float,
    threshold: float,
    message: str,
    next_step: str,
    exemplar_trace_ids: Sequence[str] = (),
    contributors: Sequence[Contributor] = (),
    unit: str = "",
    ended_at: datetime | None = None,
    details: Mapping[str, float | int | str] | None = None,
) -> Alert:
    """Build an :class:`Alert`, computing the fingerprint from its identity fields."""
    return Alert(
        fingerprint=fingerprint(detector, metric, grain, dimensions),
        status=status,
        severity=severity,
        detector=detector,
        metric=metric,
        grain=grain,
        dimensions=dict(dimensions),
        window_start=window_start,
        window_end=window_end,
        observed=observed,
        expected=expected,
        score=score,
        threshold=threshold,
        started_at=started_at,
        message=message,
        next_step=next_step,
        exemplar_trace_ids=tuple(exemplar_trace_ids),
        contributors=tuple(contributors),
        unit=unit,
        ended_at=ended_at,
        details=dict(details or {}),
    )


def load_alert_schema() -> dict[str, Any]:
    """Return the alert JSON Schema (draft 2020-12) shipped next to this module."""
    schema: dict[str, Any] = json.loads(ALERT_SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema

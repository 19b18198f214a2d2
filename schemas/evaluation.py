"""Score the alerts of one run against the scenario's incident labels (``spanpulse evaluate``).

Pure: labels and alert dicts in, an :class:`Evaluation` out; no Kafka, no clock.

**Episodes.**  Subscribers see messages, people see episodes.  Alerts are deduplicated by
``id`` (delivery is at-least-once), grouped by ``fingerprint`` (one series and signal) and
ordered by window; an episode is a run from a ``firing`` message to the next ``resolved`` one,
or to the end of the data when it never resolves.  A repeated ``firing`` inside an open episode
is a re-notification, not a new episode; a ``resolved`` with nothing open is ignored.

**When.**  An episode's *onset* is ``[started_at, window_end of its first firing message)``:
from the window the detector says the anomaly began in to the moment a subscriber learned of
it.  It matches an incident in time when the onset overlaps ``[incident start, incident end +
GRACE_WINDOWS windows)``.  The grace is there because detectors legitimately trail: a
``for: 3`` rule fires three windows after the breach starts, a pooled rate test sees the last
minutes of an incident a few windows late.  An episode that fired *before* the incident and is
merely still open when it starts fired on normal traffic: it does not match (its onset is
outside the range) and does not count as a detection.

**Where.**  The alert's series must contain calls the incident touched.  Both sides' dimensions
are completed with the *sets of values* their calls can have, from the traffic model's tables
(:func:`definite_implications`, :func:`composition_implications`):

* a ``model`` has one ``provider`` (``claude-sonnet-4`` -> ``anthropic``), a ``response_model``
  snapshot one model, a catalogue ``prompt_version`` one ``feature`` (*definite*);
* a ``feature`` calls several models (``summarize`` -> ``gpt-4o-mini``, ``claude-3-5-haiku``,
  ``gemini-2.0-flash``) and so several providers (*composition*).

Series and target are related when they constrain at least one common dimension and their
value sets intersect on every common one (``__other__``, the cardinality overflow bucket,
intersects anything: it may hold the target).  So, for a target ``provider=anthropic``, a
``model=claude-sonnet-4`` alert matches (a finer grain inside the target), a ``model=gpt-4o``
one does not; for ``model=gpt-4o``, ``tenant=t-0003, model=gpt-4o`` matches and a
``feature=summarize`` alert does not (summarize never calls gpt-4o) while ``feature=chat`` does
(a quarter of chat's calls are gpt-4o: its length share really moved).  For a target
``tenant=t-0005, model=claude-sonnet-4``, ``tenant=t-0005`` matches (a coarser grain containing
it) and ``tenant=t-0006`` does not.

The match *kind* says how direct it is: ``own`` when the definite completion alone relates the
two (the alert names the target, a part of it, or what contains it: ``feature=extract`` for an
incident on ``feature=extract``, a model of the provider); ``composition`` when only a
feature's model mix does (``feature=chat`` during a gpt-4o incident: a true symptom, yet not
the alert one would page for).  Both count as matches; :attr:`Evaluation.own_precision` counts
``own`` matches only, to show how much of the alert volume is symptoms.

Two refinements:

* Dimensions an incident *introduces* rather than targets (:data:`INTRODUCED_DIMENSIONS`: the
  new ``prompt_version`` of a ``parse_failure_spike``) are left out of the target: a rollout
  changes every series of its feature, so ``feature=extract, prompt_version=extract-v4`` and the
  emptied ``extract-v3`` both match an incident on ``feature=extract``.
* An alert that constrains no dimension the target does (a ``tenant`` alert during a
  ``provider`` or ``feature`` incident, a ``model`` alert during a ``tenant`` incident) matches
  only when its own explanation points at the incident: its contributors (child series, one
  dimension level down, which carry the parent's dimensions too) related to the target explain
  at least :data:`MIN_CONTRIBUTOR_SHARE` of the change (kind ``contributors``).  Every tenant
  calls every feature, so without that evidence any tenant alert during a 90-minute feature
  incident would pass as a detection.

**Metrics.**  recall = detected incidents / incidents; precision = episodes matching any
incident / episodes; time to detect = first matching episode's firing ``window_end`` minus the
incident start, in windows; false episodes per hour = unmatched episodes / simulated hours.
A ratio with nothing to divide is ``None`` (precision of a run without alerts, recall of a
run without incidents).

>>> alert = {"id": "a1", "fingerprint": "f", "status": "firing", "detector": "threshold",
...          "metric": "length_share>0.05", "grain": "model", "dimensions": {"model": "gpt-4o"},
...          "severity": "warning", "window_start": "2025-03-04T09:32:00Z",
...          "window_end": "2025-03-04T09:33:00Z", "started_at": "2025-03-04T09:30:00Z"}
>>> label = IncidentLabel("length_spike", 1741080600000, 1741081800000, {"model": "gpt-4o"},
...                       ("length_share",), 0.25)
>>> ev = score_alerts([label], [alert, alert], duration_ms=2 * 3_600_000)
>>> ev.recall, ev.precision, ev.incidents[0].ttd_windows, ev.false_per_hour
(1.0, 1.0, 3.0, 0.0)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import groupby
from typing import Any, Final

from spanpulse.schemas.record import OTHER
from spanpulse.schemas.scenario import IncidentLabel
from spanpulse.schemas.traffic import FEATURES, MODELS

#: Windows after an incident's end in which an episode may still start and count for it.
GRACE_WINDOWS: Final = 5

#: Window length the scores are expressed in when the caller does not say (the job's default).
DEFAULT_WINDOW_MS: Final = 60_000

#: Share of an alert's change its incident-compatible contributors must explain to match.
MIN_CONTRIBUTOR_SHARE: Final = 0.5

#: Label dimensions that name what an incident introduced, not where it happened.
INTRODUCED_DIMENSIONS: Final = frozenset({"prompt_version"})

MS_PER_HOUR: Final = 3_600_000

#: ``dimension -> value -> {dimension: possible values}``, e.g. model gpt-4o -> provider {openai}.
Implications = Mapping[str, Mapping[str, Mapping[str, frozenset[str]]]]
#: A series' or target's dimensions completed to sets of possible values.
ValueSets = dict[str, frozenset[str]]


def definite_implications() -> dict[str, dict[str, dict[str, frozenset[str]]]]:
    """Return what a value fixes about other dimensions (model -> provider, ...), from the catalogue."""
    response: dict[str, dict[str, frozenset[str]]] = {}
    for m in MODELS:
        for snapshot in (m.response_model, m.next_snapshot):
            response[snapshot] = {"model": frozenset({m.name}), "provider": frozenset({m.provider})}
    return {
        "model": {m.name: {"provider": frozenset({m.provider})} for m in MODELS},
        "response_model": response,
        "prompt_version": {f.prompt_version: {"feature": frozenset({f.name})} for f in FEATURES},
    }


def composition_implications() -> dict[str, dict[str, dict[str, frozenset[str]]]]:
    """Return the models and providers each feature calls (its traffic-model mix)."""
    provider = {m.name: m.provider for m in MODELS}
    return {
        "feature": {
            f.name: {
                "model": frozenset(m for m, w in f.models.items() if w > 0),
                "provider": frozenset(provider[m] for m, w in f.models.items() if w > 0),
            }
            for f in FEATURES
        }
    }


DEFINITE: Final[Implications] = definite_implications()
COMPOSITION: Final[Implications] = composition_implications()


# ---------------------------------------------------------------------------- dimensions
def expand(dimensions: Mapping[str, str], *tables: Implications) -> ValueSets:
    """Complete ``dimensions`` with the value sets they imply (explicit values always win).

    >>> expand({"model": "claude-sonnet-4"}, DEFINITE)
    {'model': frozenset({'claude-sonnet-4'}), 'provider': frozenset({'anthropic'})}
    """
    out: ValueSets = {k: frozenset({v}) for k, v in dimensions.items()}
    for key, value in dimensions.items():
        for table in tables:
            for implied_key, values in table.get(key, {}).get(value, {}).items():
                if implied_key in dimensions:
                    continue
                out[implied_key] = out[implied_key] & values if implied_key in out else values
    return out


def related(a: ValueSets, b: ValueSets) -> bool:
    """Tell whether two completed dimension sets share a dimension and intersect on all shared."""
    shared = a.keys() & b.keys()
    return bool(shared) and all(bool(a[k] & b[k]) or OTHER in a[k] or OTHER in b[k] for k in shared)


def compatible(
    series: Mapping[str, str],
    target: Mapping[str, str],
    tables: Sequence[Implications] = (DEFINITE, COMPOSITION),
) -> bool:
    """Tell whether a series can hold the target's calls and is related to it.

    >>> compatible({"model": "claude-3-5-haiku"}, {"provider": "anthropic"})
    True
    >>> compatible({"tenant": "t-0006"}, {"tenant": "t-0005", "model": "claude-sonnet-4"})
    False
    >>> compatible({"feature": "summarize"}, {"model": "gpt-4o"})
    False
    >>> compatible({"feature": "chat"}, {"model": "gpt-4o"})
    True
    >>> compatible({"tenant": "t-0005"}, {"feature": "agent"})
    False
    """
    return related(expand(series, *tables), expand(target, *tables))


# ---------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class Episode:
    """One alert episode: a series and signal that fired, until it resolved (or the data ended).

    Times are epoch milliseconds.  ``contributors`` are ``(dimensions, share)`` pairs from the
    first firing message (the alert's own "what changed").
    """

    fingerprint: str
    detector: str
    metric: str
    grain: str
    dimensions: Mapping[str, str]
    severity: str
    onset_start_ms: int
    fired_ms: int
    ended_ms: int | None = None
    contributors: tuple[tuple[Mapping[str, str], float], ...] = ()
    notifications: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (times as ISO 8601 UTC)."""
        return {
            "fingerprint": self.fingerprint,
            "detector": self.detector,
            "metric": self.metric,
            "grain": self.grain,
            "dimensions": dict(sorted(self.dimensions.items())),
            "severity": self.severity,
            "onset_start": iso_ms(self.onset_start_ms),
            "fired": iso_ms(self.fired_ms),
            "ended": None if self.ended_ms is None else iso_ms(self.ended_ms),
            "contributors": [{"dimensions": dict(d), "share": s} for d, s in self.contributors],
            "notifications": self.notifications,
        }


def iso_ms(ms: int) -> str:
    """Format epoch milliseconds as ISO 8601 UTC with a ``Z`` suffix."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def parse_ms(text: str, key: str = "time") -> int:
    """Parse an alert's ISO 8601 time (``...Z`` or with an offset) into epoch milliseconds.

    Raises:
        ValueError: for text that is not a timestamp with a UTC offset.
    """
    try:
        ts = datetime.fromisoformat(str(text))
    except ValueError as err:
        msg = f"{key}: not an ISO 8601 time: {text!r}"
        raise ValueError(msg) from err
    if ts.tzinfo is None:
        msg = f"{key}: time needs a UTC offset or Z suffix: {text!r}"
        raise ValueError(msg)
    return round(ts.timestamp() * 1000)


_REQUIRED: Final = ("id", "fingerprint", "status", "window_start", "window_end")


def dedupe(alerts: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Drop re-deliveries: keep the first message of every ``id``.

    Raises:
        ValueError: when an alert misses a field episodes are built from.
    """
    seen: set[str] = set()
    out: list[Mapping[str, Any]] = []
    for alert in alerts:
        missing = [k for k in _REQUIRED if alert.get(k) is None]
        if missing:
            msg = f"alert {alert.get('id', '?')}: missing field {missing[0]!r}"
            raise ValueError(msg)
        if alert["status"] not in ("firing", "resolved"):
            msg = f"alert {alert['id']}: status must be firing or resolved, got {alert['status']!r}"
            raise ValueError(msg)
        if alert["id"] not in seen:
            seen.add(str(alert["id"]))
            out.append(alert)
    return out


def build_episodes(alerts: Iterable[Mapping[str, Any]]) -> list[Episode]:
    """Turn alert messages (any order, duplicates allowed) into episodes, ordered by firing."""

    def order(a: Mapping[str, Any]) -> tuple[str, int, bool]:
        return (
            str(a["fingerprint"]),
            parse_ms(a["window_end"], "window_end"),
            a["status"] != "firing",
        )

    messages = sorted(dedupe(alerts), key=order)
    episodes = [
        ep
        for _, group in groupby(messages, key=lambda a: str(a["fingerprint"]))
        for ep in _series_episodes(group)
    ]
    return sorted(episodes, key=lambda e: (e.fired_ms, e.fingerprint))


def _series_episodes(messages: Iterable[Mapping[str, Any]]) -> list[Episode]:
    """Episodes of one fingerprint, from its messages in window order."""
    out: list[Episode] = []
    current: Episode | None = None
    for alert in messages:
        if alert["status"] == "firing":
            current = _opened(alert) if current is None else _renotified(current)
        elif current is not None:
            out.append(replace(current, ended_ms=_ended_ms(alert)))
            current = None
    return [*out, current] if current is not None else out


def _renotified(episode: Episode) -> Episode:
    return replace(episode, notifications=episode.notifications + 1)


def _opened(alert: Mapping[str, Any]) -> Episode:
    window_start = parse_ms(alert["window_start"], "window_start")
    started = alert.get("started_at")
    onset = min(window_start, parse_ms(started, "started_at")) if started else window_start
    return Episode(
        fingerprint=str(alert["fingerprint"]),
        detector=str(alert.get("detector", "")),
        metric=str(alert.get("metric", "")),
        grain=str(alert.get("grain", "")),
        dimensions={str(k): str(v) for k, v in (alert.get("dimensions") or {}).items()},
        severity=str(alert.get("severity", "")),
        onset_start_ms=onset,
        fired_ms=parse_ms(alert["window_end"], "window_end"),
        contributors=_contributors(alert.get("contributors") or ()),
    )


def _contributors(raw: Iterable[Mapping[str, Any]]) -> tuple[tuple[Mapping[str, str], float], ...]:
    return tuple(
        (
            {str(k): str(v) for k, v in (c.get("dimensions") or {}).items()},
            float(c.get("share") or 0.0),
        )
        for c in raw
    )


def _ended_ms(alert: Mapping[str, Any]) -> int:
    ended = alert.get("ended_at")
    return parse_ms(ended, "ended_at") if ended else parse_ms(alert["window_end"], "window_end")


# ---------------------------------------------------------------------------- matching
#: How an episode relates to an incident, most direct first (see the module docstring).
MATCH_KINDS: Final = ("own", "composition", "contributors")


@dataclass(frozen=True)
class MatchRules:
    """How episodes are matched to incidents (see the module docstring)."""

    window_ms: int = DEFAULT_WINDOW_MS
    grace_windows: int = GRACE_WINDOWS
    min_contributor_share: float = MIN_CONTRIBUTOR_SHARE
    definite: Implications = field(default_factory=lambda: DEFINITE)
    composition: Implications = field(default_factory=lambda: COMPOSITION)

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.grace_windows < 0:
            msg = f"need window_ms > 0 and grace_windows >= 0, got {self.window_ms}, {self.grace_windows}"
            raise ValueError(msg)

    def in_time(self, episode: Episode, label: IncidentLabel) -> bool:
        """Tell whether the onset overlaps ``[start, end + grace)`` of the incident."""
        zone_end = label.end_ms + self.grace_windows * self.window_ms
        return episode.onset_start_ms < zone_end and episode.fired_ms > label.start_ms

    def place(self, episode: Episode, label: IncidentLabel) -> str | None:
        """Return how the series relates to the incident's target (a ``MATCH_KINDS``), or None."""
        target = {k: v for k, v in label.dimensions.items() if k not in INTRODUCED_DIMENSIONS}
        if not target or compatible(episode.dimensions, target, (self.definite,)):
            return "own"
        tables = (self.definite, self.composition)
        if compatible(episode.dimensions, target, tables):
            return "composition"
        explained = sum(
            share for dims, share in episode.contributors if compatible(dims, target, tables)
        )
        return "contributors" if explained >= self.min_contributor_share else None

    def match(self, episode: Episode, label: IncidentLabel) -> str | None:
        """Return the match kind when the episode matches the incident in time and place."""
        return self.place(episode, label) if self.in_time(episode, label) else None


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class IncidentOutcome:
    """One incident, the episodes that match it (by firing time), and how long the first took."""

    label: IncidentLabel
    matches: tuple[Episode, ...]
    kinds: tuple[str, ...]
    ttd_windows: float | None

    @property
    def detected(self) -> bool:
        """At least one episode matched."""
        return bool(self.matches)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        first = {**self.matches[0].to_dict(), "match": self.kinds[0]} if self.matches else None
        return {
            "label": self.label.to_dict(),
            "detected": self.detected,
            "ttd_windows": self.ttd_windows,
            "matching_episodes": len(self.matches),
            "matching_by_kind": {k: self.kinds.count(k) for k in MATCH_KINDS},
            "first_episode": first,
        }


@dataclass(frozen=True)
class EpisodeMatch:
    """One episode and its verdict.

    ``kind`` is the most direct match kind over all incidents (``None``: a false episode);
    ``incidents`` the indices of the incidents it matches; ``during`` those it overlaps in
    time only (a hint for whoever debugs a false episode).
    """

    episode: Episode
    kind: str | None
    incidents: tuple[int, ...] = ()
    during: tuple[int, ...] = ()

    @property
    def false(self) -> bool:
        """Matched no incident."""
        return self.kind is None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            **self.episode.to_dict(),
            "match": self.kind,
            "incidents": list(self.incidents),
            "during_incidents": list(self.during),
        }


@dataclass(frozen=True)
class KindSummary:
    """Recall and time to detect of one incident kind."""

    kind: str
    incidents: int
    detected: int
    median_ttd_windows: float | None

    @property
    def recall(self) -> float | None:
        """Detected / incidents."""
        return self.detected / self.incidents if self.incidents else None


@dataclass(frozen=True)
class Evaluation:
    """Scores of one run: per incident, per episode, and the summary metrics."""

    incidents: tuple[IncidentOutcome, ...]
    verdicts: tuple[EpisodeMatch, ...]
    duration_ms: int
    rules: MatchRules

    @property
    def episodes(self) -> tuple[Episode, ...]:
        """Every episode, by firing time."""
        return tuple(v.episode for v in self.verdicts)

    @property
    def false_episodes(self) -> tuple[EpisodeMatch, ...]:
        """Episodes that matched no incident."""
        return tuple(v for v in self.verdicts if v.false)

    @property
    def detected(self) -> int:
        """Incidents with at least one matching episode."""
        return sum(o.detected for o in self.incidents)

    @property
    def recall(self) -> float | None:
        """Detected incidents / incidents (``None`` without incidents)."""
        return self.detected / len(self.incidents) if self.incidents else None

    @property
    def precision(self) -> float | None:
        """Episodes matching an incident / episodes (``None`` without episodes)."""
        return self._share(lambda v: not v.false)

    @property
    def own_precision(self) -> float | None:
        """Episodes matching an incident on their own dimensions / episodes (symptoms excluded)."""
        return self._share(lambda v: v.kind == "own")

    def _share(self, keep: Callable[[EpisodeMatch], bool]) -> float | None:
        if not self.verdicts:
            return None
        return sum(keep(v) for v in self.verdicts) / len(self.verdicts)

    @property
    def median_ttd_windows(self) -> float | None:
        """Median time to detect over detected incidents, in windows."""
        return _median([o.ttd_windows for o in self.incidents])

    @property
    def simulated_hours(self) -> float:
        """Length of the scored traffic in hours."""
        return self.duration_ms / MS_PER_HOUR

    @property
    def false_per_hour(self) -> float:
        """Unmatched episodes per simulated hour."""
        return len(self.false_episodes) / self.simulated_hours

    @property
    def false_per_day(self) -> float:
        """Unmatched episodes per 24 simulated hours."""
        return 24.0 * self.false_per_hour

    def by_kind(self) -> dict[str, KindSummary]:
        """Recall and median time to detect per incident kind, in first-seen order."""
        out = {}
        for kind in dict.fromkeys(o.label.kind for o in self.incidents):
            of_kind = [o for o in self.incidents if o.label.kind == kind]
            out[kind] = KindSummary(
                kind,
                len(of_kind),
                sum(o.detected for o in of_kind),
                _median([o.ttd_windows for o in of_kind]),
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of everything (summary, incidents, kinds, false episodes)."""
        return {
            "incidents": len(self.incidents),
            "detected": self.detected,
            "recall": self.recall,
            "precision": self.precision,
            "own_precision": self.own_precision,
            "median_ttd_windows": self.median_ttd_windows,
            "episodes": len(self.verdicts),
            "episodes_by_match": {
                str(k): sum(v.kind == k for v in self.verdicts) for k in (*MATCH_KINDS, None)
            },
            "false_episodes": len(self.false_episodes),
            "simulated_hours": self.simulated_hours,
            "false_per_hour": self.false_per_hour,
            "false_per_24h": self.false_per_day,
            "window_ms": self.rules.window_ms,
            "grace_windows": self.rules.grace_windows,
            "by_kind": {
                k: {
                    "incidents": s.incidents,
                    "detected": s.detected,
                    "recall": s.recall,
                    "median_ttd_windows": s.median_ttd_windows,
                }
                for k, s in self.by_kind().items()
            },
            "incident_outcomes": [o.to_dict() for o in self.incidents],
            "false_episode_list": [v.to_dict() for v in self.false_episodes],
        }


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def score_alerts(
    labels: Sequence[IncidentLabel],
    alerts: Iterable[Mapping[str, Any]],
    *,
    duration_ms: int,
    rules: MatchRules | None = None,
) -> Evaluation:
    """Score alert messages against incident labels over ``duration_ms`` of simulated traffic.

    Raises:
        ValueError: for a non-positive duration or a malformed alert.
    """
    if duration_ms <= 0:
        msg = f"duration_ms must be > 0, got {duration_ms}"
        raise ValueError(msg)
    rules = rules or MatchRules()
    episodes = build_episodes(alerts)
    table = [[rules.match(ep, lab) for lab in labels] for ep in episodes]
    outcomes = tuple(_outcome(i, label, episodes, table, rules) for i, label in enumerate(labels))
    verdicts = tuple(
        _verdict(ep, row, labels, rules) for ep, row in zip(episodes, table, strict=True)
    )
    return Evaluation(outcomes, verdicts, duration_ms, rules)


def _outcome(
    index: int,
    label: IncidentLabel,
    episodes: Sequence[Episode],
    table: Sequence[Sequence[str | None]],
    rules: MatchRules,
) -> IncidentOutcome:
    hits = [(ep, row[index]) for ep, row in zip(episodes, table, strict=True) if row[index]]
    ttd = (hits[0][0].fired_ms - label.start_ms) / rules.window_ms if hits else None
    return IncidentOutcome(label, tuple(ep for ep, _ in hits), tuple(str(k) for _, k in hits), ttd)


def _verdict(
    episode: Episode,
    row: Sequence[str | None],
    labels: Sequence[IncidentLabel],
    rules: MatchRules,
) -> EpisodeMatch:
    kinds = [k for k in row if k is not None]
    best = min(kinds, key=MATCH_KINDS.index) if kinds else None
    return EpisodeMatch(
        episode,
        best,
        tuple(i for i, k in enumerate(row) if k is not None),
        tuple(i for i, lab in enumerate(labels) if row[i] is None and rules.in_time(episode, lab)),
    )

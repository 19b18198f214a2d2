"""Scenario files: normal traffic plus labelled incidents, the ground truth of ``evaluate``.

A scenario is a TOML file (see ``scenarios/*.toml``)::

    name = "length spike on gpt-4o"
    seed = 7
    start = "2025-03-04T09:00:00Z"   # RFC 3339 with an offset (or a TOML offset datetime)
    duration = "2h"                  # seconds, or "90s" / "30m" / "2h" / "1h30m"
    tenants = 500
    rate = 50.0                      # mean calls per second

    [[incident]]
    kind = "length_spike"
    start = "30m"                    # offset from the scenario start
    duration = "20m"
    target = { model = "gpt-4o" }
    magnitude = 0.25                 # meaning depends on the kind (see KINDS)

Incidents are applied *after* the normal traffic is generated, as vectorized Polars rewrites of
the calls whose event time (``end_time_ms``) falls inside the incident.  Calls outside every
incident are therefore byte-identical to the incident-free traffic of the same seed, which is
what makes :meth:`Scenario.labels` exact ground truth: a detector that fires outside a labelled
range fired on normal traffic.

Which calls an incident touches is decided by uniforms read from the (random) trace id, not by a
stateful RNG, so the result does not depend on how the traffic is chunked.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import polars as pl

from spanpulse.schemas.traffic import (
    FEATURE_BY_NAME,
    FEATURES,
    LENGTH_FINISH,
    MODEL_BY_NAME,
    MODELS,
    PROVIDERS,
    REFUSAL_FINISH,
    TrafficModel,
    context_window_expr,
    tenant_name,
)

#: Signals an incident can move, as computed per window by the rollups.
SIGNALS: Final = {
    "length_share": "share of calls whose finish class is length",
    "refusal_rate": "share of calls that are refusals",
    "parse_failure_rate": "failed structured-output parses / parse attempts",
    "calls": "number of calls",
    "tokens": "input + output tokens",
    "input_tokens": "input tokens per call",
    "context_fill": "input tokens / context window per call",
    "error_rate": "share of failed calls",
    "latency": "call latency (end - start)",
    "ttft": "time to first token of streaming calls",
}


#: How long before an incident the calls that end inside it may start (the longest call).
_CALL_OVERHANG_MS: Final = 15 * 60_000


class ScenarioError(ValueError):
    """A scenario file or definition is invalid; the message names the offending key."""


@dataclass(frozen=True)
class Incident:
    """One injected incident, with times relative to the scenario start."""

    kind: str
    start_s: float
    duration_s: float
    target: Mapping[str, str]
    magnitude: float
    prompt_version: str | None = None
    response_model: str | None = None
    note: str = ""


@dataclass(frozen=True)
class IncidentLabel:
    """Ground truth for one incident: when, where (dimensions) and which signals move."""

    kind: str
    start_ms: int
    end_ms: int
    dimensions: Mapping[str, str]
    signals: tuple[str, ...]
    magnitude: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (used by ``spanpulse generate --labels``)."""
        return {
            "kind": self.kind,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "dimensions": dict(self.dimensions),
            "signals": list(self.signals),
            "magnitude": self.magnitude,
        }


@dataclass(frozen=True)
class _Ctx:
    """What an incident rewrite needs besides the calls: its absolute range and the chunk's."""

    index: int
    start_ms: int
    end_ms: int
    chunk_lo: int
    chunk_hi: int
    traffic: TrafficModel


Apply = Callable[[pl.DataFrame, Incident, _Ctx], pl.DataFrame]


@dataclass(frozen=True)
class IncidentKind:
    """Contract of one incident kind: allowed targets, magnitude meaning, signals and rewrite."""

    name: str
    targets: frozenset[str]
    required: frozenset[str]
    magnitude: float
    magnitude_range: tuple[float, float]
    magnitude_meaning: str
    signals: tuple[str, ...]
    apply: Apply
    params: frozenset[str] = frozenset()
    any_of_targets: bool = False  # at least one of ``targets`` instead of all of ``required``


# ---------------------------------------------------------------------------- expression helpers
def _active(ctx: _Ctx) -> pl.Expr:
    return (pl.col("end_time_ms") >= ctx.start_ms) & (pl.col("end_time_ms") < ctx.end_ms)


def _progress(ctx: _Ctx) -> pl.Expr:
    """0 at the incident start, 1 at its end: the ramp of slow incidents."""
    span = float(ctx.end_ms - ctx.start_ms)
    return ((pl.col("end_time_ms") - ctx.start_ms) / span).clip(0.0, 1.0)


def _matches(target: Mapping[str, str]) -> pl.Expr:
    expr = pl.lit(True)
    for key, value in target.items():
        expr = expr & (pl.col(key) == value)
    return expr


def _uniform(ctx: _Ctx, salt: int = 0) -> pl.Expr:
    """Per-call uniform in [0, 1) from 32 random trace-id bits, distinct per incident and salt."""
    offset = 8 * ((ctx.index + salt) % 4)
    bits = pl.col("trace_id").str.slice(offset, 8).str.to_integer(base=16)
    return bits.cast(pl.Float64) / float(2**32)


def _boost(target_share: float, base_share: float) -> float:
    """Probability to flip a normal call so that the share becomes ``target_share``."""
    return max(0.0, (target_share - base_share) / (1.0 - base_share))


def _by(column: str, mapping: Mapping[str, Any], dtype: pl.DataType) -> pl.Expr:
    return pl.col(column).replace_strict(dict(mapping), default=None, return_dtype=dtype)


def _set(mask: pl.Expr, column: str, value: pl.Expr | Any) -> pl.Expr:
    new = value if isinstance(value, pl.Expr) else pl.lit(value)
    return pl.when(mask).then(new).otherwise(pl.col(column)).alias(column)


# ---------------------------------------------------------------------------- incident rewrites
def _length_spike(df: pl.DataFrame, inc: Incident, ctx: _Ctx) -> pl.DataFrame:
    """Make one model hit ``max_tokens``: finish becomes length, output the cap, slower."""
    is_length = pl.col("finish_reason").is_in(list(LENGTH_FINISH.values()))
    p = _boost(inc.magnitude, ctx.traffic.length_rate)
    hit = _active(ctx) & _matches(inc.target) & ~pl.col("is_error") & ~is_length
    hit = hit & (_uniform(ctx) < p)
    cap = _by("feature", {f.name: f.max_tokens for f in FEATURES}, pl.Int64())
    new_out = pl.max_horizontal(pl.col("output_tokens"), cap.fill_null(pl.col("output_tokens")))
    speed = _by("model", {m.name: m.tokens_per_s for m in MODELS}, pl.Float64()).fill_null(60.0)
    extra_ms = ((new_out - pl.col("output_tokens")) / speed * 1000.0).round().cast(pl.Int64)
    return df.with_columns(
        _set(hit, "finish_reason", _by("provider", LENGTH_FINISH, pl.String())),
        _set(hit, "output_tokens", new_out),
        _set(hit, "start_time_ms", pl.col("start_time_ms") - extra_ms),
        _set(hit, "refusal", False),
        _set(hit & pl.col("parse_ok").is_not_null(), "parse_ok", False),
    )


def _refusal_spike(df: pl.DataFrame, inc: Incident, ctx: _Ctx) -> pl.DataFrame:
    """Update a tenant's model: the response model changes and refusals jump."""
    rows = _active(ctx) & _matches(inc.target)
    snapshot = (
        pl.lit(inc.response_model)
        if inc.response_model
        else _by("model", {m.name: m.next_snapshot for m in MODELS}, pl.String())
    )
    p = _boost(inc.magnitude, ctx.traffic.refusal_rate)
    hit = rows & ~pl.col("is_error") & ~pl.col("refusal") & (_uniform(ctx) < p)
    short = (20.0 + _uniform(ctx, salt=1) * 40.0).floor().cast(pl.Int64)
    return df.with_columns(
        _set(rows, "response_model", snapshot.fill_null(pl.col("response_model"))),
        _set(hit, "refusal", True),
        _set(hit, "finish_reason", _by("provider", REFUSAL_FINISH, pl.String())),
        _set(hit, "output_tokens", short),
        _set(hit, "reasoning_tokens", 0),
        _set(hit & pl.col("parse_ok").is_not_null(), "parse_ok", False),
    )


def _parse_failure_spike(df: pl.DataFrame, inc: Incident, ctx: _Ctx) -> pl.DataFrame:
    """Ship a new prompt version of a feature whose structured-output parses start failing."""
    rows = _active(ctx) & _matches(inc.target)
    p = _boost(inc.magnitude, ctx.traffic.parse_failure_rate)
    hit = rows & pl.col("parse_ok").fill_null(False) & (_uniform(ctx) < p)
    return df.with_columns(
        _set(rows, "prompt_version", _new_prompt_version(inc)),
        _set(hit, "parse_ok", False),
    )


def _runaway_agent(df: pl.DataFrame, inc: Incident, ctx: _Ctx) -> pl.DataFrame:
    """Loop one tenant's agent: its calls (and so its tokens) multiply by ``magnitude``."""
    lo, hi = max(ctx.chunk_lo, ctx.start_ms), min(ctx.chunk_hi, ctx.end_ms)
    if hi <= lo:
        return df
    tenant = inc.target["tenant"]
    rate = inc.magnitude - 1.0
    extra = ctx.traffic.tenant_calls(tenant, lo, (hi - lo) / 1000.0, rate, stream=1 + ctx.index)
    return df.vstack(extra.filter(pl.col("end_time_ms") < ctx.end_ms))


def _prompt_bloat(df: pl.DataFrame, inc: Incident, ctx: _Ctx) -> pl.DataFrame:
    """Grow a feature's prompt slowly: input tokens creep to ``1 + magnitude`` times normal."""
    rows = _active(ctx) & _matches(inc.target) & ~pl.col("is_error")
    grown = (pl.col("input_tokens") * (1.0 + inc.magnitude * _progress(ctx))).floor()
    limit = (context_window_expr() * 0.98).fill_null(grown)
    return df.with_columns(
        _set(rows, "input_tokens", pl.min_horizontal(grown, limit).cast(pl.Int64)),
    )


def _context_fill_creep(df: pl.DataFrame, inc: Incident, ctx: _Ctx) -> pl.DataFrame:
    """Grow conversations of a feature/tenant: context fill ramps up to ``magnitude``."""
    rows = _active(ctx) & _matches(inc.target) & ~pl.col("is_error")
    window = context_window_expr()
    fill = pl.col("input_tokens") / window
    goal = inc.magnitude * (0.85 + 0.15 * _uniform(ctx))
    new_fill = fill + (goal - fill).clip(lower_bound=0.0) * _progress(ctx)
    grown = (new_fill * window).floor().cast(pl.Int64).fill_null(pl.col("input_tokens"))
    return df.with_columns(_set(rows, "input_tokens", grown))


def _error_storm(df: pl.DataFrame, inc: Incident, ctx: _Ctx) -> pl.DataFrame:
    """Fail a provider heavily: calls become fast errors with no usage and no outcome."""
    p = _boost(inc.magnitude, ctx.traffic.error_rate)
    hit = _active(ctx) & _matches(inc.target) & ~pl.col("is_error") & (_uniform(ctx) < p)
    fail_ms = (200.0 + _uniform(ctx, salt=1) * 1800.0).round().cast(pl.Int64)
    return df.with_columns(
        _set(hit, "is_error", True),
        *(
            _set(hit, c, 0)
            for c in ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
        ),
        _set(hit, "finish_reason", pl.lit(None, pl.String())),
        _set(hit, "ttft_ms", pl.lit(None, pl.Int64())),
        _set(hit, "parse_ok", pl.lit(None, pl.Boolean())),
        _set(hit, "refusal", False),
        _set(hit, "start_time_ms", pl.col("end_time_ms") - fail_ms),
    )


def _latency_spike(df: pl.DataFrame, inc: Incident, ctx: _Ctx) -> pl.DataFrame:
    """Slow a model down: latency and TTFT multiply by ``magnitude``."""
    rows = _active(ctx) & _matches(inc.target) & ~pl.col("is_error")
    latency = pl.col("end_time_ms") - pl.col("start_time_ms")
    slow = (latency * inc.magnitude).round().cast(pl.Int64)
    return df.with_columns(
        _set(rows, "start_time_ms", pl.col("end_time_ms") - slow),
        _set(rows, "ttft_ms", (pl.col("ttft_ms") * inc.magnitude).round().cast(pl.Int64)),
    )


def _new_prompt_version(inc: Incident) -> str:
    if inc.prompt_version:
        return inc.prompt_version
    current = FEATURE_BY_NAME[inc.target["feature"]].prompt_version
    match = re.fullmatch(r"(.*-v)(\d+)", current)
    return f"{match.group(1)}{int(match.group(2)) + 1}" if match else f"{current}-next"


_SHARE = (0.0, 1.0)
_FACTOR = (1.0, 1000.0)

KINDS: Final[Mapping[str, IncidentKind]] = {
    k.name: k
    for k in (
        IncidentKind("length_spike", frozenset({"model"}), frozenset({"model"}), 0.25, _SHARE,
                     "length-stop share of the model's calls", ("length_share",), _length_spike),
        IncidentKind("refusal_spike", frozenset({"tenant", "model"}), frozenset({"tenant"}), 0.2,
                     _SHARE, "refusal share of the tenant's calls", ("refusal_rate",),
                     _refusal_spike, frozenset({"response_model"})),
        IncidentKind("parse_failure_spike", frozenset({"feature"}), frozenset({"feature"}), 0.25,
                     _SHARE, "parse-failure share of the feature's parse attempts",
                     ("parse_failure_rate",), _parse_failure_spike, frozenset({"prompt_version"})),
        IncidentKind("runaway_agent", frozenset({"tenant"}), frozenset({"tenant"}), 10.0, _FACTOR,
                     "multiplier of the tenant's call rate", ("calls", "tokens"), _runaway_agent),
        IncidentKind("prompt_bloat", frozenset({"feature"}), frozenset({"feature"}), 0.8,
                     (0.0, 10.0), "relative input-token growth reached at the end",
                     ("input_tokens",), _prompt_bloat),
        IncidentKind("context_fill_creep", frozenset({"feature", "tenant"}), frozenset(), 0.9,
                     _SHARE, "context fill reached at the end", ("context_fill",),
                     _context_fill_creep, any_of_targets=True),
        IncidentKind("error_storm", frozenset({"provider"}), frozenset({"provider"}), 0.3, _SHARE,
                     "error share of the provider's calls", ("error_rate",), _error_storm),
        IncidentKind("latency_spike", frozenset({"model"}), frozenset({"model"}), 5.0, _FACTOR,
                     "latency multiplier", ("latency", "ttft"), _latency_spike),
    )
}  # fmt: skip


# ---------------------------------------------------------------------------- scenario
@dataclass(frozen=True)
class Scenario:
    """A seeded traffic definition plus incidents; validated on construction.

    Raises:
        ScenarioError: when an incident is inconsistent (unknown target, out of range, ...).
    """

    seed: int
    start_ms: int
    duration_s: float
    tenants: int = 500
    rate_per_s: float = 50.0
    incidents: tuple[Incident, ...] = ()
    name: str = ""
    description: str = ""
    source: str = field(default="<scenario>", compare=False)

    def __post_init__(self) -> None:
        _check_scenario(self)
        for index, incident in enumerate(self.incidents):
            _check_incident(self, index, incident)

    # -------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read and validate a scenario TOML file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            msg = f"{path}: cannot read scenario file: {err.strerror or err}"
            raise ScenarioError(msg) from err
        return cls.loads(text, source=str(path))

    @classmethod
    def loads(cls, text: str, source: str = "<string>") -> Scenario:
        """Parse and validate scenario TOML text (``source`` prefixes error messages)."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            msg = f"{source}: invalid TOML: {err}"
            raise ScenarioError(msg) from err
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<mapping>") -> Scenario:
        """Build from an already-parsed mapping (the TOML document)."""
        return _parse_scenario(data, source)

    # -------------------------------------------------------------- generation
    @property
    def end_ms(self) -> int:
        """Scenario end, epoch milliseconds (exclusive)."""
        return self.start_ms + round(self.duration_s * 1000)

    def traffic_model(self) -> TrafficModel:
        """Return the incident-free traffic model this scenario is built on."""
        return TrafficModel(self.seed, tenants=self.tenants, rate_per_s=self.rate_per_s)

    def calls_chunks(self, chunk_s: float = 60.0) -> Iterator[pl.DataFrame]:
        """Yield the scenario's calls chunk by chunk (by start time), each sorted by end time."""
        if chunk_s <= 0:
            msg = f"chunk_s must be > 0, got {chunk_s}"
            raise ValueError(msg)
        traffic = self.traffic_model()
        step = round(chunk_s * 1000)
        for lo in range(self.start_ms, self.end_ms, step):
            hi = min(lo + step, self.end_ms)
            df = traffic.calls(lo, (hi - lo) / 1000.0)
            for index, incident in enumerate(self.incidents):
                ctx = self._ctx(index, lo, hi, traffic)
                if _overlaps(df, ctx):
                    df = KINDS[incident.kind].apply(df, incident, ctx)
            yield df.sort("end_time_ms", maintain_order=True)

    def calls(self, chunk_s: float = 600.0) -> pl.DataFrame:
        """Return all calls of the scenario in one frame (small scenarios and tests)."""
        return pl.concat(list(self.calls_chunks(chunk_s))).sort("end_time_ms", maintain_order=True)

    def baseline_target_calls(self, index: int) -> int:
        """Return the incident-free calls on incident ``index``'s target during the incident.

        Why: an incident on a slice with a handful of calls per window is one that the
        detectors refuse to page on by design (1 refusal out of 3 calls is not an incident);
        ``spanpulse evaluate`` shows this number next to each incident so a miss on a thin
        slice reads as what it is.  Only the incident's own minutes are generated.
        """
        incident = self.incidents[index]
        start, end = self._incident_range(incident)
        lo = max(self.start_ms, start - _CALL_OVERHANG_MS)  # calls started before, ending inside
        calls = self.traffic_model().calls(lo, (end - lo) / 1000.0)
        inside = (pl.col("end_time_ms") >= start) & (pl.col("end_time_ms") < end)
        return calls.filter(inside & _matches(incident.target)).height

    def labels(self) -> list[IncidentLabel]:
        """Return the ground-truth label of every incident, in file order."""
        return [self._label(i, inc) for i, inc in enumerate(self.incidents)]

    def _ctx(self, index: int, lo: int, hi: int, traffic: TrafficModel) -> _Ctx:
        start, end = self._incident_range(self.incidents[index])
        return _Ctx(index, start, end, lo, hi, traffic)

    def _incident_range(self, incident: Incident) -> tuple[int, int]:
        start = self.start_ms + round(incident.start_s * 1000)
        return start, start + round(incident.duration_s * 1000)

    def _label(self, index: int, incident: Incident) -> IncidentLabel:
        start, end = self._incident_range(incident)
        dims = dict(incident.target)
        if incident.kind == "parse_failure_spike":
            dims["prompt_version"] = _new_prompt_version(incident)
        kind = KINDS[incident.kind]
        return IncidentLabel(kind.name, start, end, dims, kind.signals, incident.magnitude)


def _overlaps(df: pl.DataFrame, ctx: _Ctx) -> bool:
    """Tell whether a chunk can hold calls of the incident (skips most rewrites cheaply)."""
    if ctx.chunk_lo < ctx.end_ms and ctx.start_ms < ctx.chunk_hi:
        return True  # new calls may start inside the incident (runaway_agent)
    if df.height == 0:
        return False
    first, last = df["end_time_ms"].min(), df["end_time_ms"].max()
    return bool(first < ctx.end_ms and ctx.start_ms <= last)  # type: ignore[operator]


# ---------------------------------------------------------------------------- validation
_TOP_KEYS: Final = frozenset(
    {"name", "description", "seed", "start", "duration", "tenants", "rate", "incident"}
)
_INCIDENT_KEYS: Final = frozenset(
    {"kind", "start", "duration", "target", "magnitude", "prompt_version", "response_model", "note"}
)
_DURATION_RE: Final = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def _fail(source: str, key: str, problem: str) -> ScenarioError:
    return ScenarioError(f"{source}: {key}: {problem}")


def _parse_scenario(data: Mapping[str, Any], source: str) -> Scenario:
    _reject_unknown(data, _TOP_KEYS, "", source)
    for key in ("seed", "start", "duration"):
        if key not in data:
            raise _fail(source, key, "missing (required)")
    raw_incidents = data.get("incident", [])
    if not isinstance(raw_incidents, list):
        raise _fail(source, "incident", "expected an array of tables ([[incident]])")
    incidents = tuple(
        _parse_incident(raw, f"incident[{i}]", source) for i, raw in enumerate(raw_incidents)
    )
    return Scenario(
        seed=_int(data["seed"], "seed", source, minimum=0),
        start_ms=_timestamp_ms(data["start"], "start", source),
        duration_s=_duration(data["duration"], "duration", source),
        tenants=_int(data.get("tenants", 500), "tenants", source, minimum=1),
        rate_per_s=_positive(data.get("rate", 50.0), "rate", source),
        incidents=incidents,
        name=_str(data.get("name", ""), "name", source),
        description=_str(data.get("description", ""), "description", source),
        source=source,
    )


def _parse_incident(raw: Any, key: str, source: str) -> Incident:
    if not isinstance(raw, Mapping):
        raise _fail(source, key, "expected a table")
    _reject_unknown(raw, _INCIDENT_KEYS, f"{key}.", source)
    for required in ("kind", "start", "duration", "target"):
        if required not in raw:
            raise _fail(source, f"{key}.{required}", "missing (required)")
    kind = _str(raw["kind"], f"{key}.kind", source)
    if kind not in KINDS:
        raise _fail(source, f"{key}.kind", f"unknown kind {kind!r}; expected one of {_list(KINDS)}")
    target = raw["target"]
    if not isinstance(target, Mapping) or not all(isinstance(v, str) for v in target.values()):
        raise _fail(source, f"{key}.target", "expected a table of strings, e.g. {model = 'gpt-4o'}")
    magnitude = raw.get("magnitude", KINDS[kind].magnitude)
    return Incident(
        kind=kind,
        start_s=_duration(raw["start"], f"{key}.start", source, allow_zero=True),
        duration_s=_duration(raw["duration"], f"{key}.duration", source),
        target=dict(target),
        magnitude=_number(magnitude, f"{key}.magnitude", source),
        prompt_version=_opt_str(raw.get("prompt_version"), f"{key}.prompt_version", source),
        response_model=_opt_str(raw.get("response_model"), f"{key}.response_model", source),
        note=_str(raw.get("note", ""), f"{key}.note", source),
    )


def _check_scenario(s: Scenario) -> None:
    if s.seed < 0:
        raise _fail(s.source, "seed", f"must be >= 0, got {s.seed}")
    if s.start_ms < 0:
        raise _fail(s.source, "start", "must not be before 1970-01-01T00:00:00Z")
    if not s.duration_s > 0:
        raise _fail(s.source, "duration", f"must be > 0 seconds, got {s.duration_s}")
    if s.tenants < 1:
        raise _fail(s.source, "tenants", f"must be >= 1, got {s.tenants}")
    if not s.rate_per_s > 0:
        raise _fail(s.source, "rate", f"must be > 0 calls/s, got {s.rate_per_s}")


def _check_incident(s: Scenario, index: int, inc: Incident) -> None:
    key = f"incident[{index}]"
    kind = KINDS.get(inc.kind)
    if kind is None:
        raise _fail(
            s.source, f"{key}.kind", f"unknown kind {inc.kind!r}; expected one of {_list(KINDS)}"
        )
    if inc.start_s < 0 or not inc.duration_s > 0:
        raise _fail(s.source, f"{key}.duration", "start must be >= 0 and duration > 0")
    if inc.start_s + inc.duration_s > s.duration_s + 1e-9:
        end = inc.start_s + inc.duration_s
        problem = f"incident ends at {end:g}s, after the scenario's duration {s.duration_s:g}s"
        raise _fail(s.source, f"{key}.duration", problem)
    _check_targets(s, key, kind, inc.target)
    lo, hi = kind.magnitude_range
    if not (lo < inc.magnitude <= hi) or math.isnan(inc.magnitude):
        problem = f"{kind.magnitude_meaning}: must be in ({lo:g}, {hi:g}], got {inc.magnitude:g}"
        raise _fail(s.source, f"{key}.magnitude", problem)
    for param in ("prompt_version", "response_model"):
        if getattr(inc, param) is not None and param not in kind.params:
            raise _fail(s.source, f"{key}.{param}", f"not used by kind {inc.kind!r}")


def _check_targets(s: Scenario, key: str, kind: IncidentKind, target: Mapping[str, str]) -> None:
    for name in target:
        if name not in kind.targets:
            problem = f"not a target of {kind.name!r}; expected {_list(kind.targets)}"
            raise _fail(s.source, f"{key}.target.{name}", problem)
    missing = sorted(kind.required - set(target))
    if missing:
        raise _fail(s.source, f"{key}.target.{missing[0]}", f"missing (required by {kind.name!r})")
    if kind.any_of_targets and not target:
        raise _fail(s.source, f"{key}.target", f"needs at least one of {_list(kind.targets)}")
    known = {
        "model": set(MODEL_BY_NAME),
        "feature": set(FEATURE_BY_NAME),
        "provider": set(PROVIDERS),
        "tenant": {tenant_name(i) for i in range(s.tenants)},
    }
    for name, value in target.items():
        if value not in known[name]:
            hint = (
                f"t-0000 .. {tenant_name(s.tenants - 1)}"
                if name == "tenant"
                else _list(known[name])
            )
            raise _fail(
                s.source, f"{key}.target.{name}", f"unknown {name} {value!r}; expected {hint}"
            )
    if kind.name == "parse_failure_spike" and not FEATURE_BY_NAME[target["feature"]].parses:
        parsing = [f.name for f in FEATURES if f.parses]
        problem = f"feature {target['feature']!r} never parses output; expected {_list(parsing)}"
        raise _fail(s.source, f"{key}.target.feature", problem)


def _reject_unknown(
    data: Mapping[str, Any], allowed: frozenset[str], prefix: str, source: str
) -> None:
    for key in data:
        if key not in allowed:
            raise _fail(source, f"{prefix}{key}", f"unknown key; expected one of {_list(allowed)}")


def _list(items: Any) -> str:
    return ", ".join(sorted(items))


def _int(value: Any, key: str, source: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(source, key, f"expected an integer, got {value!r}")
    if value < minimum:
        raise _fail(source, key, f"must be >= {minimum}, got {value}")
    return value


def _number(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(source, key, f"expected a number, got {value!r}")
    return float(value)


def _positive(value: Any, key: str, source: str) -> float:
    number = _number(value, key, source)
    if not number > 0:
        raise _fail(source, key, f"must be > 0, got {value!r}")
    return number


def _str(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str):
        raise _fail(source, key, f"expected a string, got {value!r}")
    return value


def _opt_str(value: Any, key: str, source: str) -> str | None:
    return None if value is None else _str(value, key, source)


def _timestamp_ms(value: Any, key: str, source: str) -> int:
    """RFC 3339 text or a TOML offset datetime; naive times are rejected (UTC must be explicit)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as err:
            raise _fail(source, key, f"not an RFC 3339 timestamp: {value!r}") from err
    if not isinstance(value, datetime):
        raise _fail(source, key, f"expected an RFC 3339 timestamp, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _fail(source, key, "timestamp needs an offset, e.g. 2025-03-04T09:00:00Z")
    return round(value.timestamp() * 1000)


def _duration(value: Any, key: str, source: str, allow_zero: bool = False) -> float:
    """Seconds as a number, or text like ``90s``, ``30m``, ``2h``, ``1h30m``."""
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if not value.strip() or match is None:
            raise _fail(source, key, f"not a duration: {value!r} (use seconds or e.g. '30m', '2h')")
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    else:
        seconds = _number(value, key, source)
    if seconds < 0 or (seconds == 0 and not allow_zero) or math.isnan(seconds):
        raise _fail(source, key, f"must be {'>=' if allow_zero else '>'} 0 seconds, got {value!r}")
    return seconds

"""The typed, validated job configuration (``spanpulse.toml``), loaded once at the entrypoint.

Why one frozen object: every component takes its parameters from here as constructor
arguments, defaults live in one place, and a bad file fails at start with a one-line message
that names the key, says what was expected, and how to fix it -- never a traceback, and never
the value of a secret.

Environment overrides: ``SPANPULSE_<SECTION>__<KEY>=value`` (double underscore between levels),
e.g. ``SPANPULSE_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or ``SPANPULSE_WINDOW__LENGTH=5m``.  The
value is parsed as a TOML value when it parses (numbers, booleans, arrays) and as a string
otherwise.  Secrets in ``[kafka.properties]`` may be given as ``"env:VAR"`` or ``"file:/path"``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from spanpulse.schemas.record import DIMENSIONS

ENCODINGS: Final = ("otlp_proto", "otlp_json", "span_json")
ENV_PREFIX: Final = "SPANPULSE_"
_SECRET_HINTS: Final = ("password", "secret", "token", "key", "jaas")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class ConfigError(ValueError):
    """A configuration problem, phrased as one line: ``key: what is wrong; how to fix it``."""


@dataclass(frozen=True)
class InputTopic:
    """One input topic and the encoding of its messages."""

    topic: str
    encoding: str = "otlp_proto"


@dataclass(frozen=True)
class KafkaSettings:
    """Broker connection, topic names and passthrough librdkafka properties."""

    bootstrap_servers: str = "localhost:9092"
    dead_letter_topic: str = "spanpulse.deadletter"
    alert_topic: str = "spanpulse.alerts"
    start_from: str = "earliest"
    batch_size: int = 5000
    properties: Mapping[str, str] = field(default_factory=dict)

    def client_config(self) -> dict[str, str]:
        """Return librdkafka settings (bootstrap + resolved properties, secrets included)."""
        conf = {"bootstrap.servers": self.bootstrap_servers}
        conf.update(
            {k: _resolve_secret(f"kafka.properties.{k}", v) for k, v in self.properties.items()}
        )
        return conf


@dataclass(frozen=True)
class WindowSettings:
    """Event-time tumbling windows; durations in milliseconds."""

    length_ms: int = 60_000
    allowed_lateness_ms: int = 30_000
    idle_timeout_ms: int = 30_000


@dataclass(frozen=True)
class Grain:
    """A rollup group-by set; its name joins the dimensions with ``.``."""

    dims: tuple[str, ...]

    @property
    def name(self) -> str:
        """Return the grain's name, e.g. ``tenant.model``."""
        return ".".join(self.dims)


#: ``tenant.feature`` and ``feature.prompt_version.model`` are breakdowns: they tell which
#: feature (or model) drives a tenant's (or a prompt version's) change, so alerts name it in
#: ``contributors`` and inhibition can tie them to the feature's or model's own alert (see
#: ``detectors/inhibit.py``); no detector watches them by default (``grain_families``).
DEFAULT_GRAINS: Final = (
    Grain(("tenant",)),
    Grain(("tenant", "model")),
    Grain(("tenant", "feature")),
    Grain(("model",)),
    Grain(("feature", "prompt_version")),
    Grain(("feature", "prompt_version", "model")),
)


@dataclass(frozen=True)
class RollupSettings:
    """What the windows aggregate and where the Parquet files go."""

    output_dir: Path = Path("spanpulse-data/rollups")
    grains: tuple[Grain, ...] = DEFAULT_GRAINS
    exemplars: int = 3
    context_fill_threshold: float = 0.8


@dataclass(frozen=True)
class CardinalitySettings:
    """Per-dimension value limits and a per-grain series limit (see docs/cardinality.md)."""

    limits: Mapping[str, int] = field(
        default_factory=lambda: {
            "tenant": 1000,
            "model": 200,
            "response_model": 200,
            "prompt_version": 50,
            "feature": 200,
            "service": 200,
            "environment": 20,
            "provider": 50,
            "operation": 20,
        }
    )
    series_limit: int = 5000


@dataclass(frozen=True)
class AttributeSettings:
    """Attribute keys for app-level dimensions (span attribute first, then resource)."""

    tenant: tuple[str, ...] = ("tenant.id", "app.tenant_id")
    feature: tuple[str, ...] = ("app.feature",)
    prompt_version: tuple[str, ...] = ("app.prompt_version", "llm.prompt.version")
    parse_ok: tuple[str, ...] = ("app.output.parse_ok",)
    refusal: tuple[str, ...] = ("app.refusal",)


@dataclass(frozen=True)
class PriceOverride:
    """USD per million tokens for a custom or self-hosted model."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus endpoint; port 0 disables it."""

    port: int = 9464
    addr: str = "0.0.0.0"  # noqa: S104 - a scrape target must listen beyond loopback in containers


@dataclass(frozen=True)
class RecoverySettings:
    """Bytewax recovery store; disabled when ``dir`` is unset."""

    dir: Path | None = None
    snapshot_interval_ms: int = 30_000
    backup_interval_ms: int = 0


@dataclass(frozen=True)
class DedupSettings:
    """Spans delivered twice, dropped across batches per partition (docs/reliability.md).

    ``horizon_ms`` 0 turns it off (copies are then dropped within one batch only); ``max_ids``
    bounds the remembered ids per partition (16 bytes each).
    """

    horizon_ms: int = 600_000
    max_ids: int = 1_000_000


@dataclass(frozen=True)
class Settings:
    """The whole job configuration."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    inputs: tuple[InputTopic, ...] = (InputTopic("otlp_spans"),)
    window: WindowSettings = field(default_factory=WindowSettings)
    rollups: RollupSettings = field(default_factory=RollupSettings)
    cardinality: CardinalitySettings = field(default_factory=CardinalitySettings)
    attributes: AttributeSettings = field(default_factory=AttributeSettings)
    pricing: Mapping[str, PriceOverride] = field(default_factory=dict)
    context_windows: Mapping[str, int] = field(default_factory=dict)
    dead_letter_payloads: bool = True
    hash_tenant_ids: bool = False
    tenant_salt: str = ""
    detectors: Mapping[str, Any] = field(default_factory=dict)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    dedup: DedupSettings = field(default_factory=DedupSettings)


# ---------------------------------------------------------------------------- parsing helpers


def parse_duration_ms(key: str, value: object) -> int:
    """Parse ``"90s"``, ``"1m"``, ``"250ms"`` (or a number of seconds) into milliseconds."""
    if isinstance(value, bool):
        msg = f"{key}: expected a duration like '30s' or '1m', got {value!r}"
        raise ConfigError(msg)
    if isinstance(value, int | float):
        if value < 0:
            msg = f"{key}: duration must not be negative, got {value!r}"
            raise ConfigError(msg)
        return int(value * 1000)
    m = _DURATION.match(str(value))
    if not m:
        msg = f"{key}: expected a duration like '30s', '1m' or '250ms', got {value!r}"
        raise ConfigError(msg)
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def _resolve_secret(key: str, value: str) -> str:
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            msg = f"{key}: environment variable {name} is not set; export it or give the value directly"
            raise ConfigError(msg)
        return os.environ[name]
    if value.startswith("file:"):
        try:
            return Path(value[5:]).read_text().strip()
        except OSError as err:
            msg = f"{key}: cannot read secret file {value[5:]!r} ({err.strerror}); check the path"
            raise ConfigError(msg) from err
    return value


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        msg = f"{key}: expected a table ([{key}]), got {type(value).__name__}"
        raise ConfigError(msg)
    return value


def _expect(key: str, value: object, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind is not bool and bool not in _as_tuple(kind):
        msg = f"{key}: expected {what}, got {value!r}"
        raise ConfigError(msg)
    if not isinstance(value, kind):
        shown = "<hidden>" if any(h in key.lower() for h in _SECRET_HINTS) else repr(value)
        msg = f"{key}: expected {what}, got {shown}"
        raise ConfigError(msg)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _reject_unknown(section: str, table: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        where = f"{section}.{unknown[0]}" if section else unknown[0]
        msg = f"{where}: unknown key; valid keys here are {', '.join(sorted(known))}"
        raise ConfigError(msg)


def _positive_int(key: str, value: object) -> int:
    n = _expect(key, value, int, "a positive integer")
    if n <= 0:
        msg = f"{key}: expected a positive integer, got {n}"
        raise ConfigError(msg)
    return int(n)


def _str_list(key: str, value: object) -> tuple[str, ...]:
    items = _expect(key, value, list, "a list of strings")
    if not items or not all(isinstance(v, str) and v for v in items):
        msg = f"{key}: expected a non-empty list of attribute names, got {items!r}"
        raise ConfigError(msg)
    return tuple(items)


# ---------------------------------------------------------------------------- sections


def _kafka(raw: Mapping[str, Any]) -> KafkaSettings:
    t = _table(raw, "kafka")
    known = {
        "bootstrap_servers",
        "dead_letter_topic",
        "alert_topic",
        "start_from",
        "batch_size",
        "properties",
    }
    _reject_unknown("kafka", t, known)
    d = KafkaSettings()
    start = t.get("start_from", d.start_from)
    if start not in ("earliest", "latest"):
        msg = f"kafka.start_from: expected 'earliest' or 'latest', got {start!r}"
        raise ConfigError(msg)
    props = _expect(
        "kafka.properties", t.get("properties", {}), dict, "a table of librdkafka properties"
    )
    for k, v in props.items():
        _expect(f"kafka.properties.{k}", v, (str, int, bool), "a string, number or boolean")
    return KafkaSettings(
        bootstrap_servers=_expect(
            "kafka.bootstrap_servers",
            t.get("bootstrap_servers", d.bootstrap_servers),
            str,
            "'host:port[,host:port]'",
        ),
        dead_letter_topic=_expect(
            "kafka.dead_letter_topic",
            t.get("dead_letter_topic", d.dead_letter_topic),
            str,
            "a topic name",
        ),
        alert_topic=_expect(
            "kafka.alert_topic", t.get("alert_topic", d.alert_topic), str, "a topic name"
        ),
        start_from=start,
        batch_size=_positive_int("kafka.batch_size", t.get("batch_size", d.batch_size)),
        properties={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in props.items()},
    )


def _inputs(raw: Mapping[str, Any]) -> tuple[InputTopic, ...]:
    items = raw.get("inputs", [{"topic": "otlp_spans"}])
    _expect("inputs", items, list, "an array of tables ([[inputs]] topic = ..., encoding = ...)")
    if not items:
        msg = "inputs: at least one [[inputs]] table with a topic is required"
        raise ConfigError(msg)
    out = []
    for i, item in enumerate(items):
        key = f"inputs[{i}]"
        _expect(key, item, dict, "a table with topic and encoding")
        _reject_unknown(key, item, {"topic", "encoding"})
        topic = _expect(f"{key}.topic", item.get("topic"), str, "a topic name")
        enc = item.get("encoding", "otlp_proto")
        if enc not in ENCODINGS:
            msg = f"{key}.encoding: expected one of {', '.join(ENCODINGS)}, got {enc!r}"
            raise ConfigError(msg)
        out.append(InputTopic(topic=topic, encoding=enc))
    return tuple(out)


def _window(raw: Mapping[str, Any]) -> WindowSettings:
    t = _table(raw, "window")
    _reject_unknown("window", t, {"length", "allowed_lateness", "idle_timeout"})
    d = WindowSettings()
    length = parse_duration_ms("window.length", t.get("length", d.length_ms / 1000))
    if length < 1000 or 86_400_000 % length:
        msg = f"window.length: must be at least 1s and divide a day evenly (e.g. '1m', '5m', '1h'), got {t.get('length')!r}"
        raise ConfigError(msg)
    return WindowSettings(
        length_ms=length,
        allowed_lateness_ms=parse_duration_ms(
            "window.allowed_lateness", t.get("allowed_lateness", d.allowed_lateness_ms / 1000)
        ),
        idle_timeout_ms=parse_duration_ms(
            "window.idle_timeout", t.get("idle_timeout", d.idle_timeout_ms / 1000)
        ),
    )


def _rollups(raw: Mapping[str, Any]) -> RollupSettings:
    t = _table(raw, "rollups")
    _reject_unknown("rollups", t, {"output_dir", "grains", "exemplars", "context_fill_threshold"})
    d = RollupSettings()
    grains = d.grains
    if "grains" in t:
        items = _expect(
            "rollups.grains",
            t["grains"],
            list,
            "a list of dimension lists, e.g. [['tenant'], ['tenant','model']]",
        )
        parsed = []
        for i, g in enumerate(items):
            dims = _str_list(f"rollups.grains[{i}]", g)
            bad = [x for x in dims if x not in DIMENSIONS]
            if bad:
                msg = f"rollups.grains[{i}]: unknown dimension {bad[0]!r}; valid dimensions are {', '.join(DIMENSIONS)}"
                raise ConfigError(msg)
            parsed.append(Grain(dims))
        if len({g.name for g in parsed}) != len(parsed):
            msg = "rollups.grains: the same grain is listed twice; remove the duplicate"
            raise ConfigError(msg)
        grains = tuple(parsed)
    thr = _expect(
        "rollups.context_fill_threshold",
        t.get("context_fill_threshold", d.context_fill_threshold),
        (int, float),
        "a ratio between 0 and 1",
    )
    if not 0 < thr <= 1:
        msg = f"rollups.context_fill_threshold: expected a ratio in (0, 1], got {thr}"
        raise ConfigError(msg)
    exemplars = _expect(
        "rollups.exemplars", t.get("exemplars", d.exemplars), int, "an integer between 0 and 20"
    )
    if not 0 <= exemplars <= 20:
        msg = f"rollups.exemplars: expected an integer between 0 and 20, got {exemplars}"
        raise ConfigError(msg)
    out_dir = _expect(
        "rollups.output_dir", t.get("output_dir", str(d.output_dir)), str, "a directory path"
    )
    return RollupSettings(Path(out_dir), grains, exemplars, float(thr))


def _cardinality(raw: Mapping[str, Any]) -> CardinalitySettings:
    t = _table(raw, "cardinality")
    _reject_unknown("cardinality", t, {"limits", "series_limit"})
    d = CardinalitySettings()
    limits = dict(d.limits)
    for k, v in _expect(
        "cardinality.limits", t.get("limits", {}), dict, "a table of dimension = limit"
    ).items():
        if k not in DIMENSIONS:
            msg = f"cardinality.limits.{k}: unknown dimension; valid dimensions are {', '.join(DIMENSIONS)}"
            raise ConfigError(msg)
        limits[k] = _positive_int(f"cardinality.limits.{k}", v)
    return CardinalitySettings(
        limits, _positive_int("cardinality.series_limit", t.get("series_limit", d.series_limit))
    )


def _attributes(raw: Mapping[str, Any]) -> AttributeSettings:
    t = _table(raw, "attributes")
    known = {"tenant", "feature", "prompt_version", "parse_ok", "refusal"}
    _reject_unknown("attributes", t, known)
    d = AttributeSettings()
    return AttributeSettings(
        **{k: _str_list(f"attributes.{k}", t[k]) if k in t else getattr(d, k) for k in known}
    )


def _pricing(raw: Mapping[str, Any]) -> dict[str, PriceOverride]:
    t = _table(raw, "pricing")
    out = {}
    for model, spec in t.items():
        key = f'pricing."{model}"'
        _expect(key, spec, dict, "a table with input and output (USD per million tokens)")
        _reject_unknown(key, spec, {"input", "output", "cached_input", "cache_write"})
        vals: dict[str, float | None] = {}
        for f in ("input", "output", "cached_input", "cache_write"):
            if f in spec:
                v = _expect(
                    f"{key}.{f}",
                    spec[f],
                    (int, float),
                    "a non-negative number (USD per million tokens)",
                )
                if v < 0:
                    msg = f"{key}.{f}: price must not be negative, got {v}"
                    raise ConfigError(msg)
                vals[f] = float(v)
            elif f in ("input", "output"):
                msg = f"{key}.{f}: missing; give USD per million tokens, e.g. {f} = 0.5"
                raise ConfigError(msg)
        out[model] = PriceOverride(**vals)  # type: ignore[arg-type]
    return out


def _context_windows(raw: Mapping[str, Any]) -> dict[str, int]:
    t = _table(raw, "context_windows")
    return {k: _positive_int(f'context_windows."{k}"', v) for k, v in t.items()}


#: ``[detectors]`` keys a config file may set (the rest keep DetectorConfig's defaults).
DETECTOR_KEYS: Final = {
    "budgets_usd_per_day": dict,
    "budgets_usd_per_hour": dict,
    "default_budget_usd_per_day": float,
    "default_budget_usd_per_hour": float,
    "critical_score": float,
    "level_shift_threshold": float,
    "level_shift_min_change": float,
    "level_shift_min_calls": int,
    "level_shift_min_history": int,
    "level_shift_unseasoned_ratio": float,
    "level_shift_unseasoned_min_history": int,
    "level_shift_jump_ratio": float,
    "proportion_threshold": float,
    "drift_threshold": float,
    "drift_min_change": float,
    "drift_min_calls": int,
    "min_calls_for_percentiles": int,
    "max_exemplars": int,
    "max_contributors": int,
    "contributor_windows": int,
    "idle_after_windows": int,
    "rule_resolve_after": int,
    "rule_cooldown": int,
    "grain_families": "families",
    "rules": "rules",
    "enabled": bool,
}

#: Keys of one ``[[detectors.rules]]`` table and the ``ThresholdRule`` field each sets.
RULE_KEYS: Final = {
    "metric": "metric", "op": "op", "value": "value", "for": "for_windows",
    "resolve_ratio": "resolve_ratio", "min_calls": "min_calls", "grains": "grains",
    "severity": "severity",
}  # fmt: skip


def _detectors(raw: Mapping[str, Any]) -> dict[str, Any]:
    t = _table(raw, "detectors")
    _reject_unknown("detectors", t, set(DETECTOR_KEYS))
    out: dict[str, Any] = {}
    for key, value in t.items():
        kind = DETECTOR_KEYS[key]
        where = f"detectors.{key}"
        if kind is dict:
            table = _expect(where, value, dict, "a table of tenant = USD")
            for tenant, usd in table.items():
                v = _expect(f'{where}."{tenant}"', usd, (int, float), "a budget in USD")
                if v <= 0:
                    msg = f'{where}."{tenant}": budget must be positive, got {v}'
                    raise ConfigError(msg)
            out[key] = {k: float(v) for k, v in table.items()}
        elif kind == "families":
            table = _expect(where, value, dict, 'a table of grain = ["family", ...]')
            out[key] = {g: _str_list(f'{where}."{g}"', fams) for g, fams in table.items()}
        elif kind == "rules":
            out[key] = _rules(where, value)
        elif kind is float:
            out[key] = float(_expect(where, value, (int, float), "a number"))
        elif kind is int:
            out[key] = _positive_int(where, value)
        else:
            out[key] = _expect(where, value, bool, "true or false")
    try:
        detector_config(out)
    except ValueError as err:
        msg = f"detectors: {err}"
        raise ConfigError(msg) from err
    return out


def _rules(where: str, value: object) -> tuple[Any, ...]:
    """Parse ``[[detectors.rules]]``; the list replaces the default rules (empty: no rules)."""
    from spanpulse.detectors.config import ThresholdRule

    items = _expect(where, value, list, "an array of tables ([[detectors.rules]])")
    rules = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        table = _expect(at, item, dict, "a table with metric, op, value")
        _reject_unknown(at, table, set(RULE_KEYS))
        missing = [k for k in ("metric", "op", "value") if k not in table]
        if missing:
            msg = f"{at}: missing {', '.join(missing)}; a rule needs metric, op and value"
            raise ConfigError(msg)
        kw: dict[str, Any] = {RULE_KEYS[k]: v for k, v in table.items()}
        kw["value"] = float(_expect(f"{at}.value", table["value"], (int, float), "a number"))
        if "grains" in table:
            kw["grains"] = _str_list(f"{at}.grains", table["grains"])
        try:
            rules.append(ThresholdRule(**kw))
        except (TypeError, ValueError) as err:
            msg = f"{at}: {err}"
            raise ConfigError(msg) from err
    return tuple(rules)


def detector_config(detectors: Mapping[str, Any]) -> Any:
    """Build the detectors' ``DetectorConfig`` from the validated ``[detectors]`` table."""
    from spanpulse.detectors.config import DetectorConfig

    kw = {k: v for k, v in detectors.items() if k != "enabled"}
    if "grain_families" in kw:  # per grain, over the defaults (tenant.model stays scoped)
        from spanpulse.detectors.config import DEFAULT_GRAIN_FAMILIES

        kw["grain_families"] = {**DEFAULT_GRAIN_FAMILIES, **kw["grain_families"]}
    return DetectorConfig(**kw)


def _metrics(raw: Mapping[str, Any]) -> MetricsSettings:
    t = _table(raw, "metrics")
    _reject_unknown("metrics", t, {"port", "addr"})
    d = MetricsSettings()
    port = _expect(
        "metrics.port", t.get("port", d.port), int, "a TCP port (0 disables the endpoint)"
    )
    if not 0 <= port <= 65535:
        msg = f"metrics.port: expected a TCP port between 0 and 65535, got {port}"
        raise ConfigError(msg)
    return MetricsSettings(
        port=port, addr=_expect("metrics.addr", t.get("addr", d.addr), str, "an address")
    )


def _recovery(raw: Mapping[str, Any]) -> RecoverySettings:
    t = _table(raw, "recovery")
    _reject_unknown("recovery", t, {"dir", "snapshot_interval", "backup_interval"})
    d = RecoverySettings()
    rdir = t.get("dir")
    snap = parse_duration_ms(
        "recovery.snapshot_interval", t.get("snapshot_interval", d.snapshot_interval_ms / 1000)
    )
    if snap <= 0:
        msg = "recovery.snapshot_interval: must be greater than zero, e.g. '30s'"
        raise ConfigError(msg)
    return RecoverySettings(
        dir=Path(_expect("recovery.dir", rdir, str, "a directory path"))
        if rdir is not None
        else None,
        snapshot_interval_ms=snap,
        backup_interval_ms=parse_duration_ms(
            "recovery.backup_interval", t.get("backup_interval", 0)
        ),
    )


def _dedup(raw: Mapping[str, Any]) -> DedupSettings:
    t = _table(raw, "dedup")
    _reject_unknown("dedup", t, {"horizon", "max_ids"})
    d = DedupSettings()
    return DedupSettings(
        horizon_ms=parse_duration_ms("dedup.horizon", t.get("horizon", d.horizon_ms / 1000)),
        max_ids=_positive_int("dedup.max_ids", t.get("max_ids", d.max_ids)),
    )


_TOP_KEYS: Final = {
    "kafka", "inputs", "window", "rollups", "cardinality", "attributes", "pricing",
    "context_windows", "dead_letter", "privacy", "detectors", "metrics", "recovery", "dedup",
}  # fmt: skip


def from_mapping(raw: Mapping[str, Any]) -> Settings:
    """Validate a parsed TOML document (plus overrides) into :class:`Settings`."""
    _reject_unknown("", raw, set(_TOP_KEYS))
    dl = _table(raw, "dead_letter")
    _reject_unknown("dead_letter", dl, {"include_payload"})
    privacy = _table(raw, "privacy")
    _reject_unknown("privacy", privacy, {"hash_tenant_ids", "tenant_salt"})
    hash_ids = _expect(
        "privacy.hash_tenant_ids", privacy.get("hash_tenant_ids", False), bool, "true or false"
    )
    salt = _expect(
        "privacy.tenant_salt",
        privacy.get("tenant_salt", ""),
        str,
        "a secret string, env:VAR or file:/path",
    )
    if hash_ids and not salt:
        msg = "privacy.tenant_salt: required when hash_tenant_ids = true; set it to env:VAR or file:/path"
        raise ConfigError(msg)
    return Settings(
        kafka=_kafka(raw),
        inputs=_inputs(raw),
        window=_window(raw),
        rollups=_rollups(raw),
        cardinality=_cardinality(raw),
        attributes=_attributes(raw),
        pricing=_pricing(raw),
        context_windows=_context_windows(raw),
        dead_letter_payloads=_expect(
            "dead_letter.include_payload", dl.get("include_payload", True), bool, "true or false"
        ),
        hash_tenant_ids=hash_ids,
        tenant_salt=_resolve_secret("privacy.tenant_salt", salt) if hash_ids else "",
        detectors=_detectors(raw),
        metrics=_metrics(raw),
        recovery=_recovery(raw),
        dedup=_dedup(raw),
    )


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return ``raw`` with ``SPANPULSE_SECTION__KEY`` environment overrides applied."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                msg = f"{name}: {'.'.join(path[:-1])} is not a table, so it cannot take a sub-key"
                raise ConfigError(msg)
            node = nxt
        node[path[-1]] = _parse_env_value(text)
    return out


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load, override from the environment, and validate; raise :class:`ConfigError` on any problem."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as err:
            msg = f"config: file {str(path)!r} not found; pass --config with an existing TOML file"
            raise ConfigError(msg) from err
        except tomllib.TOMLDecodeError as err:
            msg = f"config: {path} is not valid TOML ({err}); fix the syntax at that position"
            raise ConfigError(msg) from err
    raw = apply_env(raw, os.environ if environ is None else environ)
    return from_mapping(raw)

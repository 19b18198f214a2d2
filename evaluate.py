"""``spanpulse evaluate``: run the real job over labelled scenarios and score its alerts.

For every scenario file: start the embedded broker, produce the scenario's traffic, run the job
bounded (read to the end offsets, close every window, flush) with the detectors as configured
(built-in defaults unless ``--config``), read every alert back from the alert topic, and score
the alerts against the scenario's incident labels with :mod:`spanpulse.schemas.evaluation`.
The results go to a Markdown file together with the command that produced them (and, with
``--json``, to a JSON file with every incident and every false episode).

Why ``span_json`` by default: the evaluation measures the *detectors*, which see the same
rollups whatever the wire format.  ``span_json`` is the cheapest path from generated calls to
records (one flat JSON object per call, no HTTP parent or tool spans to encode, ship and skip),
so a run spends its time in windows and detectors.  ``--encoding otlp_proto`` runs the
Collector's format instead.  One input partition keeps event time in the producer's order, so
the only late calls are the scenario's own (a call ending after the next generated minute).

The job's settings come from ``--config`` (or the built-in defaults) *without* ``SPANPULSE_*``
environment overrides, so results depend only on files; the broker address, topics, rollup
directory, metrics port (off) and recovery (off) are always the evaluation's own.

``--tenants/--rate/--duration`` change the scenario (for quick runs): a shorter duration drops
the incidents that no longer fit, and the results file says so.  Numbers measured with
overrides are not the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from spanpulse.config import (
    InputTopic,
    MetricsSettings,
    RecoverySettings,
    Settings,
    detector_config,
    from_mapping,
    load,
)
from spanpulse.schemas.evaluation import MATCH_KINDS, Evaluation, MatchRules, score_alerts
from spanpulse.schemas.scenario import IncidentLabel, Scenario

PACKAGE_DIR: Final = Path(__file__).resolve().parent
DEFAULT_SCENARIOS: Final = (
    PACKAGE_DIR / "scenarios" / "all_incidents.toml",
    PACKAGE_DIR / "scenarios" / "baseline.toml",
    PACKAGE_DIR / "scenarios" / "baseline_day.toml",
)
DEFAULT_OUTPUT: Final = Path("docs/evaluation-results.md")
ENCODINGS: Final = ("span_json", "otlp_proto")
SPANS_TOPIC: Final = "spans"
ALERT_TOPIC: Final = "spanpulse.alerts"
DEAD_LETTER_TOPIC: Final = "spanpulse.deadletter"
SPANS_PARTITIONS: Final = 1
ALERT_IDLE_S: Final = 2.0
MAX_LISTED_FALSE: Final = 200

#: Issue 3's targets (default configuration, thresholds fixed before evaluation).
TARGET_RECALL: Final = 0.95
TARGET_PRECISION: Final = 0.9
TARGET_TTD_WINDOWS: Final = 3.0
TARGET_FALSE_PER_DAY: Final = 1.0
TARGET_TENANTS: Final = 500
#: Incidents whose target gets fewer calls per window than this (the level-shift and drift
#: detectors' default ``min_calls``) are marked *thin* in the results: too small to page on.
THIN_TARGET_CALLS: Final = 20

Say = Callable[[str], None]


class EvaluateError(Exception):
    """A user-facing problem with the evaluation's inputs (one line, no traceback)."""


# ---------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Overrides:
    """Scenario overrides for quick runs; ``None`` keeps the file's value."""

    tenants: int | None = None
    rate: float | None = None
    duration_s: float | None = None

    @property
    def active(self) -> bool:
        """Tell whether any override is set."""
        return any(v is not None for v in (self.tenants, self.rate, self.duration_s))

    def describe(self) -> str:
        """Return e.g. ``tenants=50, rate=20, duration=40m`` (empty without overrides)."""
        parts = []
        if self.tenants is not None:
            parts.append(f"tenants={self.tenants}")
        if self.rate is not None:
            parts.append(f"rate={self.rate:g}")
        if self.duration_s is not None:
            parts.append(f"duration={_duration_text(self.duration_s)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything ``spanpulse evaluate`` was asked to do."""

    scenarios: tuple[Path, ...] = DEFAULT_SCENARIOS
    output: Path = DEFAULT_OUTPUT
    json_out: Path | None = None
    config: Path | None = None
    overrides: Overrides = field(default_factory=Overrides)
    encoding: str = "span_json"
    command: str = "spanpulse evaluate"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvaluateOptions:
        """Build options from the parsed ``evaluate`` arguments."""
        return cls(
            scenarios=tuple(args.scenarios) or DEFAULT_SCENARIOS,
            output=args.output,
            json_out=args.json_out,
            config=args.config,
            overrides=Overrides(args.tenants, args.rate, args.duration),
            encoding=args.encoding,
            command=command_line(args),
        )


def command_line(args: argparse.Namespace) -> str:
    """Return the canonical command for the parsed arguments (what the results file shows)."""
    words = ["spanpulse", "evaluate", *(str(p) for p in args.scenarios)]
    if args.output != DEFAULT_OUTPUT:
        words += ["--output", str(args.output)]
    for flag, value in (("--json", args.json_out), ("--config", args.config)):
        if value is not None:
            words += [flag, str(value)]
    if args.tenants is not None:
        words += ["--tenants", str(args.tenants)]
    if args.rate is not None:
        words += ["--rate", f"{args.rate:g}"]
    if args.duration is not None:
        words += ["--duration", _duration_text(args.duration)]
    if args.encoding != "span_json":
        words += ["--encoding", args.encoding]
    return shlex.join(words)


def _duration_text(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


# ---------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class PreparedScenario:
    """A scenario as it will run: validated, overrides applied, ready to write for ``generate``."""

    path: Path
    scenario: Scenario
    document: Mapping[str, Any]
    dropped: tuple[int, ...] = ()


def prepare_scenario(path: Path, overrides: Overrides) -> PreparedScenario:
    """Load and validate a scenario file and apply the overrides.

    A duration override drops the incidents that would end after it (their indices are kept
    in ``dropped``); every other inconsistency is a :class:`ScenarioError`.
    """
    original = Scenario.load(path)
    if not overrides.active:
        return PreparedScenario(path, original, _read_toml(path))
    document = dict(_read_toml(path))
    dropped: tuple[int, ...] = ()
    if overrides.duration_s is not None:
        dropped = tuple(
            i
            for i, inc in enumerate(original.incidents)
            if inc.start_s + inc.duration_s > overrides.duration_s + 1e-9
        )
        document["duration"] = overrides.duration_s
        incidents = document.get("incident", [])
        document["incident"] = [inc for i, inc in enumerate(incidents) if i not in dropped]
    if overrides.tenants is not None:
        document["tenants"] = overrides.tenants
    if overrides.rate is not None:
        document["rate"] = overrides.rate
    scenario = Scenario.from_mapping(document, source=f"{path} (with {overrides.describe()})")
    return PreparedScenario(path, scenario, document, dropped)


def _read_toml(path: Path) -> dict[str, Any]:
    """Read a file ``Scenario.load`` already accepted (so it exists and parses)."""
    return tomllib.loads(path.read_text(encoding="utf-8"))


def to_toml(document: Mapping[str, Any]) -> str:
    """Write a scenario document back as TOML (scalars, inline string tables, ``[[incident]]``).

    >>> print(to_toml({"seed": 1, "rate": 2.5, "incident": [{"target": {"model": "gpt-4o"}}]}))
    seed = 1
    rate = 2.5
    <BLANKLINE>
    [[incident]]
    target = { "model" = "gpt-4o" }
    <BLANKLINE>
    """
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in document.items() if k != "incident"]
    for incident in document.get("incident", []):
        lines += ["", "[[incident]]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in incident.items()]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").isalnum() and key.isascii() else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON string escapes are TOML basic-string escapes; TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        return _toml_string(value.isoformat())
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    return _toml_string(str(value))


# ---------------------------------------------------------------------------- job settings
def base_settings(config: Path | None) -> Settings:
    """Return the job configuration: ``config`` without environment overrides, or the defaults."""
    return load(config, environ={}) if config is not None else from_mapping({})


def job_settings(base: Settings, bootstrap: str, encoding: str, rollups: Path) -> Settings:
    """Point ``base`` at the evaluation's broker, topics and scratch directory."""
    kafka = replace(
        base.kafka,
        bootstrap_servers=bootstrap,
        alert_topic=ALERT_TOPIC,
        dead_letter_topic=DEAD_LETTER_TOPIC,
        start_from="earliest",
        properties={},
    )
    return replace(
        base,
        kafka=kafka,
        inputs=(InputTopic(SPANS_TOPIC, encoding),),
        rollups=replace(base.rollups, output_dir=rollups),
        metrics=MetricsSettings(port=0),
        recovery=RecoverySettings(),
    )


# ---------------------------------------------------------------------------- one scenario
@dataclass(frozen=True)
class ScenarioRun:
    """What happened when one scenario ran, and its scores."""

    prepared: PreparedScenario
    evaluation: Evaluation
    produced: Mapping[str, int]
    totals: Mapping[str, Any]
    alert_messages: int
    seconds: float
    #: Incident-free calls on each incident's target during it (file order), see
    #: :meth:`~spanpulse.schemas.scenario.Scenario.baseline_target_calls`.
    target_calls: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """The scenario's name (its file stem when unnamed)."""
        return self.prepared.scenario.name or self.prepared.path.stem


def run_scenario(
    prepared: PreparedScenario, base: Settings, encoding: str, workdir: Path, say: Say
) -> ScenarioRun:
    """Broker up, traffic in, job bounded, alerts out, score; the broker is stopped after."""
    from spanpulse.broker import EmbeddedBroker, create_topics
    from spanpulse.cli import generate_to_kafka, run_job
    from spanpulse.sinks.alerts import tail
    from spanpulse.sinks.kafka_source import STOP_REQUESTED

    t0 = time.monotonic()
    scenario_file = workdir / "scenario.toml"
    scenario_file.write_text(to_toml(prepared.document), encoding="utf-8")
    scenario = prepared.scenario
    name = scenario.name or prepared.path.stem
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        create_topics(broker.bootstrap, [SPANS_TOPIC], partitions=SPANS_PARTITIONS)
        create_topics(broker.bootstrap, [ALERT_TOPIC, DEAD_LETTER_TOPIC], partitions=1)
        client = {"bootstrap.servers": broker.bootstrap}
        gen = argparse.Namespace(
            scenario=scenario_file, encoding=encoding, convention="otel", topic=SPANS_TOPIC,
            realtime=False, labels_out=None, rate=scenario.rate_per_s, tenants=scenario.tenants,
            duration=scenario.duration_s, start=None, seed=scenario.seed,
        )  # fmt: skip
        say(f"{name}: generating {scenario.duration_s / 3600:.3g} h of traffic ({encoding})")
        produced = generate_to_kafka(gen, client)
        say(f"{name}: {produced['calls']:,} calls produced; running the job")
        settings = job_settings(base, broker.bootstrap, encoding, workdir / "rollups")
        totals = run_job(settings, bounded=True, quiet=True)
        if STOP_REQUESTED.is_set():
            raise KeyboardInterrupt
        alerts = list(tail(client, ALERT_TOPIC, idle_timeout_s=ALERT_IDLE_S))
    rules = MatchRules(window_ms=settings.window.length_ms)
    evaluation = score_alerts(
        scenario.labels(), alerts, duration_ms=scenario.end_ms - scenario.start_ms, rules=rules
    )
    seconds = time.monotonic() - t0
    say(
        f"{name}: job {totals['records']:,} calls in {totals['seconds']:.0f} s; "
        f"{len(alerts)} alert messages, {len(evaluation.episodes)} episodes; "
        f"recall {_num(evaluation.recall)}, precision {_num(evaluation.precision)}, "
        f"false/24h {evaluation.false_per_day:.1f}"
    )
    target_calls = tuple(scenario.baseline_target_calls(i) for i in range(len(scenario.incidents)))
    return ScenarioRun(prepared, evaluation, produced, totals, len(alerts), seconds, target_calls)


# ---------------------------------------------------------------------------- the whole run
@dataclass(frozen=True)
class Environment:
    """Where and with what the numbers were measured."""

    measured_at: datetime
    cpu_count: int
    platform: str
    python: str
    spanpulse_version: str
    git: str
    detector_version: str
    algorithm_version: int
    config: str
    load_average: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "measured_at": self.measured_at.isoformat().replace("+00:00", "Z"),
            "cpu_count": self.cpu_count,
            "platform": self.platform,
            "python": self.python,
            "spanpulse_version": self.spanpulse_version,
            "git": self.git,
            "detector_config_version": self.detector_version,
            "detector_algorithm_version": self.algorithm_version,
            "config": self.config,
            "load_average_1m_at_end": self.load_average,
        }


@dataclass(frozen=True)
class EvaluationReport:
    """Every scenario's run plus the environment and command: what the results file shows."""

    options: EvaluateOptions
    environment: Environment
    runs: tuple[ScenarioRun, ...]


def run_evaluation(
    options: EvaluateOptions, say: Say, now: Callable[[], datetime]
) -> EvaluationReport:
    """Validate every input first, then run each scenario and collect the report.

    Raises:
        ScenarioError: for an invalid scenario file or override.
        EvaluateError: for an unusable output path or encoding.
        ConfigError: for an invalid ``--config``.
    """
    if options.encoding not in ENCODINGS:
        msg = f"--encoding must be one of {', '.join(ENCODINGS)}, got {options.encoding!r}"
        raise EvaluateError(msg)
    prepared = [prepare_scenario(p, options.overrides) for p in options.scenarios]
    base = base_settings(options.config)
    for out in (options.output, options.json_out):
        if out is not None:
            _check_writable(out)
    runs = []
    for item in prepared:
        with tempfile.TemporaryDirectory(prefix="spanpulse-evaluate-") as tmp:
            runs.append(run_scenario(item, base, options.encoding, Path(tmp), say))
    return EvaluationReport(options, environment(base, options.config, now()), tuple(runs))


def _check_writable(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"cannot create the directory of {str(path)!r} ({err.strerror}); pick another path"
        raise EvaluateError(msg) from err
    if path.is_dir():
        msg = f"{str(path)!r} is a directory; give a file name"
        raise EvaluateError(msg)


def environment(base: Settings, config: Path | None, measured_at: datetime) -> Environment:
    """Describe the machine, the code and the detector configuration."""
    from importlib.metadata import PackageNotFoundError, version

    from spanpulse.detectors.config import ALGORITHM_VERSION

    try:
        spanpulse_version = version("spanpulse")
    except PackageNotFoundError:
        spanpulse_version = "unknown"
    return Environment(
        measured_at=measured_at,
        cpu_count=os.cpu_count() or 0,
        platform=platform.platform(),
        python=platform.python_version(),
        spanpulse_version=spanpulse_version,
        git=_git_revision(),
        detector_version=detector_config(base.detectors).version,
        algorithm_version=ALGORITHM_VERSION,
        config=str(config) if config is not None else "built-in defaults",
        load_average=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    )


def _git_revision() -> str:
    """Commit of the code that ran, ``+ uncommitted changes`` when the tree is dirty."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{sha} + uncommitted changes" if dirty else sha


# ---------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class Summary:
    """Pooled numbers the targets are judged on.

    Recall, precision and time to detect pool the scenarios that have incidents; false
    episodes per 24 h pool the incident-free ones (every alert there is false).
    """

    incidents: int
    detected: int
    recall: float | None
    precision: float | None
    own_precision: float | None
    median_ttd_windows: float | None
    baseline_hours: float
    baseline_false: int
    kinds: Mapping[str, tuple[int, int, float | None]]

    @property
    def false_per_day(self) -> float | None:
        """False episodes per 24 simulated hours of incident-free traffic."""
        return 24.0 * self.baseline_false / self.baseline_hours if self.baseline_hours else None

    @property
    def kind_recalls(self) -> dict[str, float]:
        """Recall per incident kind."""
        return {k: d / n for k, (n, d, _) in self.kinds.items() if n}


def summarize(runs: Sequence[ScenarioRun]) -> Summary:
    """Pool the runs into the numbers the targets are judged on."""
    outcomes = [o for r in runs for o in r.evaluation.incidents]
    with_incidents = [r.evaluation for r in runs if r.evaluation.incidents]
    free = [r.evaluation for r in runs if not r.evaluation.incidents]
    verdicts = [v for e in with_incidents for v in e.verdicts]
    episodes = len(verdicts)
    false = sum(v.false for v in verdicts)
    own = sum(v.kind == "own" for v in verdicts)
    kinds: dict[str, tuple[int, int, float | None]] = {}
    for kind in dict.fromkeys(o.label.kind for o in outcomes):
        of_kind = [o for o in outcomes if o.label.kind == kind]
        ttds = [o.ttd_windows for o in of_kind if o.ttd_windows is not None]
        kinds[kind] = (len(of_kind), sum(o.detected for o in of_kind), _median(ttds))
    detected = sum(o.detected for o in outcomes)
    return Summary(
        incidents=len(outcomes),
        detected=detected,
        recall=detected / len(outcomes) if outcomes else None,
        precision=(episodes - false) / episodes if episodes else None,
        own_precision=own / episodes if episodes else None,
        median_ttd_windows=_median([o.ttd_windows for o in outcomes if o.ttd_windows is not None]),
        baseline_hours=sum(e.simulated_hours for e in free),
        baseline_false=sum(len(e.false_episodes) for e in free),
        kinds=kinds,
    )


def _median(values: Sequence[float]) -> float | None:
    import statistics

    return float(statistics.median(values)) if values else None


# ---------------------------------------------------------------------------- rendering
def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _dims(dims: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(dims.items())) or "(all)"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "no")


def _hhmm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M")


def render_markdown(report: EvaluationReport) -> str:
    """Return the results file: command, environment, targets, tables, false episodes."""
    sections = [
        _header(report),
        _targets(report),
        _scenario_table(report.runs),
        _kind_table(summarize(report.runs)),
        _incident_table(report.runs),
        _false_tables(report.runs),
    ]
    return "\n\n".join(s.rstrip("\n") for s in sections) + "\n"


def _header(report: EvaluationReport) -> str:
    env, opts = report.environment, report.options
    rules = report.runs[0].evaluation.rules if report.runs else MatchRules()
    load = f"; 1-min load average at the end {env.load_average}" if env.load_average else ""
    overrides = (
        f"\n- **scenario overrides: {opts.overrides.describe()}** — these numbers are for a changed"
        " scenario, not the targets' setting"
        if opts.overrides.active
        else ""
    )
    return f"""# Detector evaluation results

Generated by `spanpulse evaluate` (issue 3); do not edit by hand. Reproduce with:

```
{opts.command}
```

- measured: {env.measured_at.strftime("%Y-%m-%d %H:%M")} UTC
- machine: {env.cpu_count} CPUs, {env.platform}, Python {env.python}{load}
- spanpulse {env.spanpulse_version}, git {env.git}
- detectors: configuration version `{env.detector_version}` (algorithm {env.algorithm_version}), \
job config: {env.config}
- run: embedded broker (tansu), `{opts.encoding}` input on {SPANS_PARTITIONS} partition, 1 worker, \
bounded (`run --until-caught-up` semantics)
- matching: grace {rules.grace_windows} windows after an incident's end, window \
{rules.window_ms / 1000:g} s, contributors must explain >= {rules.min_contributor_share:g} of an \
alert without a shared dimension (see `docs/evaluation.md`){overrides}
"""


def _targets(report: EvaluationReport) -> str:
    s = summarize(report.runs)
    free_tenants = {r.prepared.scenario.tenants for r in report.runs if not r.evaluation.incidents}
    kinds_ok = all(v >= TARGET_RECALL for v in s.kind_recalls.values()) if s.kinds else None
    missed = sorted(k for k, v in s.kind_recalls.items() if v < TARGET_RECALL)
    fpd = s.false_per_day
    rows = [
        (
            f"every incident kind detected (recall >= {TARGET_RECALL})",
            f"{_num(s.recall)} ({s.detected}/{s.incidents})"
            + (f"; missed: {', '.join(missed)}" if missed else ""),
            _met(kinds_ok),
        ),
        (
            f"precision >= {TARGET_PRECISION}",
            f"{_num(s.precision)} (on the alert's own dimensions: {_num(s.own_precision)})",
            _met(None if s.precision is None else s.precision >= TARGET_PRECISION),
        ),
        (
            f"median time to detect <= {TARGET_TTD_WINDOWS:g} windows",
            _num(s.median_ttd_windows, 1),
            _met(
                None if s.median_ttd_windows is None else s.median_ttd_windows <= TARGET_TTD_WINDOWS
            ),
        ),
        (
            f"<= {TARGET_FALSE_PER_DAY:g} false alert episode per 24 simulated hours "
            f"({TARGET_TENANTS} tenants, incident-free)",
            "n/a (no incident-free scenario)"
            if fpd is None
            else f"{fpd:.1f} ({s.baseline_false} in {s.baseline_hours:g} h, "
            f"tenants {', '.join(map(str, sorted(free_tenants)))})",
            _met(None if fpd is None else fpd <= TARGET_FALSE_PER_DAY),
        ),
    ]
    lines = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += [
        "",
        "Recall, precision and time to detect pool the scenarios with incidents; false episodes "
        "per 24 h pool the incident-free ones. Precision counts every episode on a series that "
        "holds the incident's calls, symptoms included (a feature whose model mix contains the "
        "incident's model, a tenant whose contributors point at it); *own dimensions* counts only "
        "alerts that name the target, a part of it, or what contains it.",
    ]
    return "\n".join(lines)


def _scenario_table(runs: Sequence[ScenarioRun]) -> str:
    lines = [
        "## Per scenario",
        "",
        "| scenario | tenants | calls/s | hours | calls | incidents | detected | recall | precision "
        "| precision (own dims) "
        "| median TTD (windows) | episodes | false episodes | false / 24 h | late calls | job s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        e, sc = r.evaluation, r.prepared.scenario
        lines.append(
            f"| {r.name} (`{r.prepared.path.name}`) | {sc.tenants} | {sc.rate_per_s:g} "
            f"| {e.simulated_hours:.3g} | {r.totals.get('records', 0):,} | {len(e.incidents)} "
            f"| {e.detected} | {_num(e.recall)} | {_num(e.precision)} | {_num(e.own_precision)} "
            f"| {_num(e.median_ttd_windows, 1)} "
            f"| {len(e.episodes)} | {len(e.false_episodes)} | {e.false_per_day:.1f} "
            f"| {r.totals.get('late_calls', 0):,} | {float(r.totals.get('seconds', 0.0)):.0f} |"
        )
    dropped = [(r, i) for r in runs for i in r.prepared.dropped]
    if dropped:
        lines += ["", "Incidents dropped by the duration override: " + ", ".join(
            f"{r.name}#{i}" for r, i in dropped)]  # fmt: skip
    return "\n".join(lines)


def _kind_table(s: Summary) -> str:
    lines = [
        "## Per incident kind",
        "",
        "| kind | incidents | detected | recall | median TTD (windows) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {kind} | {n} | {d} | {_num(d / n if n else None)} | {_num(ttd, 1)} |"
        for kind, (n, d, ttd) in s.kinds.items()
    ]
    return "\n".join(lines) if s.kinds else "## Per incident kind\n\nNo incidents."


def _incident_table(runs: Sequence[ScenarioRun]) -> str:
    lines = [
        "## Incidents",
        "",
        "*target calls / window*: calls the incident-free traffic puts on the incident's target "
        "per window during the incident; below "
        f"{THIN_TARGET_CALLS} (the continuous detectors' per-window minimum) the slice is too thin "
        "to page on by design, marked *thin*. Such incidents still count in recall.",
        "",
        "| scenario | kind | target | UTC | target calls / window | detected | TTD (windows) "
        "| first detection | matching episodes (own / composition / contributors) |",
        "|---|---|---|---|---:|---|---:|---|---:|",
    ]
    for r in runs:
        for i, o in enumerate(r.evaluation.incidents):
            lab = o.label
            first = (
                f"{o.matches[0].detector} `{o.matches[0].metric}` on {o.matches[0].grain} "
                f"({_dims(o.matches[0].dimensions)}; {o.kinds[0]})"
                if o.matches
                else "-"
            )
            by_kind = " / ".join(str(o.kinds.count(k)) for k in MATCH_KINDS)
            lines.append(
                f"| {r.name} | {lab.kind} | {_dims(lab.dimensions)} "
                f"| {_hhmm(lab.start_ms)}-{_hhmm(lab.end_ms)} | {_per_window(r, i, lab)} "
                f"| {'yes' if o.detected else '**no**'} "
                f"| {_num(o.ttd_windows, 0)} | {first} | {len(o.matches)} ({by_kind}) |"
            )
    return "\n".join(lines) if len(lines) > 6 else "## Incidents\n\nNo incidents."


def _per_window(run: ScenarioRun, index: int, label: IncidentLabel) -> str:
    """Target calls per window of an incident, ``thin`` when under :data:`THIN_TARGET_CALLS`."""
    if index >= len(run.target_calls):
        return "n/a"
    windows = max((label.end_ms - label.start_ms) / run.evaluation.rules.window_ms, 1.0)
    per_window = run.target_calls[index] / windows
    thin = " *thin*" if per_window < THIN_TARGET_CALLS else ""
    return f"{per_window:,.1f}{thin}"


def _false_tables(runs: Sequence[ScenarioRun]) -> str:
    false = [(r, f) for r in runs for f in r.evaluation.false_episodes]
    head = "## False episodes"
    if not false:
        return f"{head}\n\nNone: every alert episode matched an incident."
    counts: dict[tuple[str, str, str, str], int] = {}
    for r, f in false:
        key = (r.name, f.episode.detector, f.episode.metric, f.episode.grain)
        counts[key] = counts.get(key, 0) + 1
    lines = [
        head,
        "",
        "Episodes that matched no incident, by detector, metric and grain:",
        "",
        "| scenario | detector | metric | grain | episodes |",
        "|---|---|---|---|---:|",
    ]
    lines += [
        f"| {s} | {d} | `{m}` | {g} | {n} |"
        for (s, d, m, g), n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0]))
    ]
    lines += [
        "",
        "Every false episode (fired = window end of the first firing message; *during* = incidents "
        "it overlaps in time but not in place):",
        "",
        "| scenario | fired (UTC) | detector | metric | grain | dimensions | severity | ended | during |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r, f in false[:MAX_LISTED_FALSE]:
        ep = f.episode
        during = ", ".join(r.evaluation.incidents[i].label.kind for i in f.during) or "-"
        ended = "open" if ep.ended_ms is None else _hhmm(ep.ended_ms)
        lines.append(
            f"| {r.name} | {_iso_minute(ep.fired_ms)} | {ep.detector} | `{ep.metric}` | {ep.grain} "
            f"| {_dims(ep.dimensions)} | {ep.severity} | {ended} | {during} |"
        )
    if len(false) > MAX_LISTED_FALSE:
        lines += ["", f"... and {len(false) - MAX_LISTED_FALSE} more (run with `--json` for all)."]
    return "\n".join(lines)


def _iso_minute(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def report_dict(report: EvaluationReport) -> dict[str, Any]:
    """Return the JSON dump: command, environment, summary and every scenario's details."""
    s = summarize(report.runs)
    return {
        "command": report.options.command,
        "environment": report.environment.to_dict(),
        "encoding": report.options.encoding,
        "overrides": report.options.overrides.describe(),
        "summary": {
            "incidents": s.incidents,
            "detected": s.detected,
            "recall": s.recall,
            "recall_by_kind": s.kind_recalls,
            "precision": s.precision,
            "own_precision": s.own_precision,
            "median_ttd_windows": s.median_ttd_windows,
            "incident_free_hours": s.baseline_hours,
            "incident_free_false_episodes": s.baseline_false,
            "false_per_24h": s.false_per_day,
        },
        "scenarios": [
            {
                "name": r.name,
                "path": str(r.prepared.path),
                "tenants": r.prepared.scenario.tenants,
                "rate": r.prepared.scenario.rate_per_s,
                "dropped_incidents": list(r.prepared.dropped),
                "produced": dict(r.produced),
                "job": dict(r.totals),
                "alert_messages": r.alert_messages,
                "seconds": round(r.seconds, 1),
                "incident_target_calls": list(r.target_calls),
                "evaluation": r.evaluation.to_dict(),
            }
            for r in report.runs
        ],
    }


# ---------------------------------------------------------------------------- CLI entry
def run_from_args(args: argparse.Namespace) -> int:
    """``spanpulse evaluate``: run, write the results file (and JSON), print a summary line."""
    options = EvaluateOptions.from_args(args)
    report = run_evaluation(options, say=_stderr, now=lambda: datetime.now(UTC))
    options.output.write_text(render_markdown(report), encoding="utf-8")
    if options.json_out is not None:
        options.json_out.write_text(
            json.dumps(report_dict(report), indent=2) + "\n", encoding="utf-8"
        )
    s = summarize(report.runs)
    sys.stdout.write(
        json.dumps(
            {
                "output": str(options.output),
                "recall": s.recall,
                "precision": s.precision,
                "own_precision": s.own_precision,
                "median_ttd_windows": s.median_ttd_windows,
                "false_per_24h": s.false_per_day,
            }
        )
        + "\n"
    )
    return 0


def _stderr(text: str) -> None:
    sys.stderr.write(f"spanpulse evaluate: {text}\n")
    sys.stderr.flush()

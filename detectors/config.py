"""All detector settings in one frozen object, with defaults that work without tuning.

Why one object: the engine, the docs and the tests read the same defaults; a changed
setting changes :meth:`DetectorConfig.version`, and detector state saved under another
version is discarded instead of being misread (Quix's ``state_suffix`` habit).

Defaults, and why (details per family in ``docs/detectors.md``):

* A deployment with 500 tenants evaluates ~10^7 (series x signal x window) tests a day, so
  significance alone would page someone daily for noise.  Every statistical alert therefore
  needs a small p-value (proportion: score 0.35, p ~ 4e-6; drift: 0.4, p ~ 2e-7; level
  shift: 0.3, p ~ 5e-5, plus a 30 % change), a *material* change, and a second confirming
  window.
* Proportions need >= 5 events, >= 2x and >= +1 point: 1 refusal in 3 calls never pages.
* Threshold rules mirror the issue's examples; ``for: 3`` windows, >= 20 calls, and rates are
  judged by their confidence bound.
* Budgets are empty by default: budget burn only runs for tenants you give a budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from spanpulse.detectors.drift import DriftParams
from spanpulse.detectors.level_shift import Direction, LevelShiftParams
from spanpulse.detectors.policy import PolicyParams
from spanpulse.detectors.proportion import ProportionParams
from spanpulse.detectors.signals import LABELS, PERCENTILES, PROPORTIONS

#: Algorithm version: bump when a detector's state layout or meaning changes.
ALGORITHM_VERSION: Final = 3

#: Score the level-shift family alerts at by default (also reported by bench/nab_eval.py).
DEFAULT_LEVEL_SHIFT_THRESHOLD: Final = 0.3

Op = Literal[">", ">=", "<", "<="]
Severity = Literal["warning", "critical"]

KNOWN_SIGNALS: Final = frozenset(LABELS) | frozenset(PROPORTIONS) | frozenset(PERCENTILES)


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """A static rule: ``metric op value`` for ``for_windows`` consecutive windows.

    ``resolve_ratio`` is the hysteresis: an open alert stays open while the value is beyond
    ``value * resolve_ratio`` (for ``>``) and resolves after the policy's ``resolve_after``
    windows inside it.  ``min_calls`` guards percentiles and rates against tiny windows
    (for proportions it applies to the denominator).  ``grains`` limits the rule to some
    grains (``None`` = every grain).

    Rules on proportions respect counts: a window *breaches* ``rate > value`` only when the
    Wilson lower confidence bound of the rate (``confidence_z``, default one-sided 99 %) is
    above ``value`` — 1 failure in 36 attempts (2.8 %) does not breach a 2 % rule, 40 in 400
    does breach a 5 % rule.  ``<`` rules use the upper bound.  The bound is used for both the
    ``for: N`` windows (each must breach) and the hysteresis.
    """

    metric: str
    op: Op
    value: float
    for_windows: int = 3
    resolve_ratio: float = 0.9
    min_calls: int = 20
    grains: tuple[str, ...] | None = None
    severity: Severity = "warning"
    confidence_z: float = 2.326

    def __post_init__(self) -> None:
        if self.metric not in KNOWN_SIGNALS:
            msg = f"ThresholdRule.metric {self.metric!r} is not a known signal; use one of {sorted(KNOWN_SIGNALS)}"
            raise ValueError(msg)
        if self.op not in (">", ">=", "<", "<="):
            msg = f"ThresholdRule.op must be one of > >= < <=, got {self.op!r}"
            raise ValueError(msg)
        if self.severity not in ("warning", "critical"):
            msg = f"ThresholdRule.severity must be warning or critical, got {self.severity!r}"
            raise ValueError(msg)
        if self.for_windows < 1:
            msg = f"ThresholdRule.for_windows must be >= 1, got {self.for_windows}"
            raise ValueError(msg)

    @property
    def name(self) -> str:
        """Stable rule name used as the alert metric suffix, e.g. ``length_share>0.05``."""
        return f"{self.metric}{self.op}{self.value:g}"

    def breached(self, value: float, hysteresis: bool = False) -> bool:
        """Return whether ``value`` breaches the rule (or its relaxed bound with hysteresis)."""
        bound = self.value * self.resolve_ratio if hysteresis else self.value
        if self.op in (">", ">="):
            return value > bound if self.op == ">" else value >= bound
        if hysteresis:
            bound = self.value / self.resolve_ratio if self.resolve_ratio else self.value
        return value < bound if self.op == "<" else value <= bound


DEFAULT_RULES: Final = (
    ThresholdRule("length_share", ">", 0.05),
    ThresholdRule("context_fill_p95", ">", 0.8),
    ThresholdRule("parse_failure_rate", ">", 0.02),
)

DEFAULT_LEVEL_SHIFT_METRICS: Final[Mapping[str, Direction]] = {
    "input_tokens_p95": "up",
    "output_tokens_p95": "up",
    "latency_p95": "up",
    "context_fill_p95": "up",
    "call_rate": "both",
    "cost_usd": "up",
    "cost_per_call": "up",
}

#: Volume signals follow the working day: they alert only once a full daily cycle has been
#: learned for the time slot (before that, a morning ramp would look like a level shift).
DEFAULT_SEASONAL_METRICS: Final = ("call_rate", "cost_usd", "calls", "tokens")

DEFAULT_PROPORTION_METRICS: Final = (
    "length_share",
    "refusal_rate",
    "content_filter_rate",
    "parse_failure_rate",
    "error_rate",
)

DEFAULT_DRIFT_METRICS: Final = ("input_tokens_per_call", "context_fill_p95")

#: Detector families, as named in alerts' ``detector`` field.
FAMILIES: Final = ("level_shift", "proportion_shift", "drift", "threshold", "budget_burn")

#: Families per grain; a grain not listed runs every family.  ``tenant.model`` is the
#: finest default grain (up to tenants x models series): it watches only count-aware
#: proportions -- a refusal spike of one tenant on one model is its job -- and leaves volume,
#: percentiles, drift and absolute rules to the coarser grains, where they are less noisy and
#: where its rows still appear as contributors.  This also keeps the detection cost in line
#: with the number of tenants rather than tenants x models.  ``tenant.feature`` and
#: ``feature.prompt_version.model`` only supply contributors (which feature drives a tenant's
#: change, which model a prompt version's).
DEFAULT_GRAIN_FAMILIES: Final[Mapping[str, tuple[str, ...]]] = {
    "tenant.model": ("proportion_shift",),
    "tenant.feature": (),  # contributors of tenant only
    "feature.prompt_version.model": (),  # contributors of feature.prompt_version only
}

#: Signals that are additive over children (contributors use differences, not weights).
ADDITIVE_SIGNALS: Final = frozenset({"call_rate", "calls", "cost_usd", "tokens"})


@dataclass(frozen=True, slots=True)
class ReleaseParams:
    """Release-regression settings (see :mod:`spanpulse.detectors.release`)."""

    compare_windows: int = 30
    min_calls: int = 200
    max_p: float = 1e-6
    min_ratio: float = 1.5
    min_delta: float = 0.01
    percentile_ratio: float = 1.3
    baseline_windows: int = 240
    max_versions: int = 4
    resolve_after: int = 10


@dataclass(frozen=True)
class DetectorConfig:
    """Every detector setting; immutable; build once at the entrypoint."""

    level_shift: LevelShiftParams = field(default_factory=LevelShiftParams)
    level_shift_metrics: Mapping[str, Direction] = field(
        default_factory=lambda: dict(DEFAULT_LEVEL_SHIFT_METRICS)
    )
    level_shift_threshold: float = DEFAULT_LEVEL_SHIFT_THRESHOLD
    level_shift_resolve: float = 0.2
    level_shift_min_history: int = 120
    level_shift_min_change: float = 0.3
    level_shift_min_calls: int = 20
    level_shift_seasonal_metrics: tuple[str, ...] = DEFAULT_SEASONAL_METRICS
    level_shift_unseasoned_ratio: float = 5.0  # volume jump trusted before a day is learned
    level_shift_unseasoned_min_history: int = 30  # ... and after this many windows (not 120)
    level_shift_jump_ratio: float = 3.0  # x baseline: triggers at the resolve score (heavy tails)
    level_shift_policy: PolicyParams = field(default_factory=lambda: PolicyParams(2, 3, 15))

    proportion: ProportionParams = field(default_factory=ProportionParams)
    proportion_metrics: tuple[str, ...] = DEFAULT_PROPORTION_METRICS
    proportion_threshold: float = 0.35
    proportion_resolve: float = 0.2
    proportion_policy: PolicyParams = field(default_factory=lambda: PolicyParams(2, 3, 15))

    drift: DriftParams = field(default_factory=DriftParams)
    drift_metrics: tuple[str, ...] = DEFAULT_DRIFT_METRICS
    drift_threshold: float = 0.4
    drift_resolve: float = 0.2
    drift_min_change: float = 0.15
    drift_min_calls: int = 20
    drift_policy: PolicyParams = field(default_factory=lambda: PolicyParams(2, 5, 30))

    rules: tuple[ThresholdRule, ...] = DEFAULT_RULES
    rule_resolve_after: int = 3
    rule_cooldown: int = 10

    budgets_usd_per_day: Mapping[str, float] = field(default_factory=dict)
    budgets_usd_per_hour: Mapping[str, float] = field(default_factory=dict)
    default_budget_usd_per_day: float | None = None
    default_budget_usd_per_hour: float | None = None
    budget_grain: str = "tenant"
    budget_min_spent_fraction: float = 0.1
    budget_policy: PolicyParams = field(default_factory=lambda: PolicyParams(3, 3, 30))

    release: ReleaseParams = field(default_factory=ReleaseParams)
    release_grains: Mapping[str, str] = field(
        default_factory=lambda: {
            "feature.prompt_version": "prompt_version",
            "model.response_model": "response_model",
        }
    )

    grain_families: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_GRAIN_FAMILIES)
    )

    critical_score: float = 0.6
    min_calls_for_percentiles: int = 50
    percentile_max_windows: int = 30
    max_exemplars: int = 5
    max_contributors: int = 3
    contributor_windows: int = 3
    max_children: int = 50
    idle_after_windows: int = 360

    def __post_init__(self) -> None:
        for name in (
            "level_shift_metrics",
            "budgets_usd_per_day",
            "budgets_usd_per_hour",
            "release_grains",
            "grain_families",
        ):
            value = getattr(self, name)
            object.__setattr__(self, name, dict(sorted(dict(value).items())))
        unknown = (
            set(self.level_shift_metrics) | set(self.proportion_metrics) | set(self.drift_metrics)
        ) - KNOWN_SIGNALS
        if unknown:
            msg = f"DetectorConfig names unknown signals {sorted(unknown)}; known: {sorted(KNOWN_SIGNALS)}"
            raise ValueError(msg)
        bad = {f for fams in self.grain_families.values() for f in fams} - set(FAMILIES)
        if bad:
            msg = f"grain_families names unknown families {sorted(bad)}; known: {list(FAMILIES)}"
            raise ValueError(msg)
        not_props = set(self.proportion_metrics) - set(PROPORTIONS)
        if not_props:
            msg = f"proportion_metrics must be proportions {sorted(PROPORTIONS)}, got {sorted(not_props)}"
            raise ValueError(msg)
        if self.contributor_windows < 1:
            msg = (
                f"DetectorConfig: contributor_windows must be >= 1, got {self.contributor_windows}"
            )
            raise ValueError(msg)
        for name in ("level_shift", "proportion", "drift"):
            thr, res = getattr(self, f"{name}_threshold"), getattr(self, f"{name}_resolve")
            if not 0.0 < res <= thr < 1.0:
                msg = f"DetectorConfig: need 0 < {name}_resolve <= {name}_threshold < 1, got {res}, {thr}"
                raise ValueError(msg)

    @property
    def version(self) -> str:
        """Hash of the algorithm version and every setting: state saved under another is stale."""
        return hashlib.sha256(f"{ALGORITHM_VERSION}|{self!r}".encode()).hexdigest()[:16]

    def families(self, grain: str) -> frozenset[str]:
        """Detector families that run on ``grain`` (every family unless configured)."""
        return frozenset(self.grain_families.get(grain, FAMILIES))

    def budget_per_day(self, tenant: str) -> float | None:
        """Daily budget of ``tenant`` (its own, else the default, else None)."""
        return self.budgets_usd_per_day.get(tenant, self.default_budget_usd_per_day)

    def budget_per_hour(self, tenant: str) -> float | None:
        """Hourly budget of ``tenant`` (its own, else the default, else None)."""
        return self.budgets_usd_per_hour.get(tenant, self.default_budget_usd_per_hour)

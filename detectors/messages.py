"""Human sentences for alerts: ``message`` (what is wrong) and ``next_step`` (where to look).

Built only from dimension values and numbers — never from prompt or completion content.
Kept apart from the detectors so wording can change without touching any statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final

from spanpulse.detectors.signals import LABELS, UNITS
from spanpulse.schemas.alert import Contributor

_NEXT_STEPS: Final[Mapping[str, str]] = {
    "length_share": "Open the exemplar traces; check max_tokens and output length",
    "refusal_rate": "Open the exemplar traces; review recent system-prompt and input changes",
    "content_filter_rate": "Open the exemplar traces; check inputs and the provider's "
    "content-filter settings",
    "parse_failure_rate": "Open the exemplar traces; check the output-format instructions and "
    "response_model changes",
    "error_rate": "Check provider status and the error codes in the exemplar traces "
    "(rate limits, timeouts)",
    "input_tokens_p95": "Look for prompt bloat: retrieved context size, conversation history, "
    "system-prompt growth",
    "input_tokens_per_call": "Look for prompt bloat: retrieved context size, conversation "
    "history, system-prompt growth",
    "output_tokens_p95": "Check for runaway generations: max_tokens, stop sequences, prompt "
    "changes",
    "latency_p95": "Compare provider latency with output length; check for retries and "
    "rate limiting",
    "context_fill_p95": "Check history truncation and retrieval size; calls near the context "
    "limit get cut off",
    "call_rate": "Check for retry loops or a traffic change upstream",
    "cost_usd": "Check which model and feature drove the spend; look for retries or loops",
}
_DEFAULT_NEXT: Final = "Open the exemplar traces and compare with the previous hours"


def hhmm(ts: datetime) -> str:
    """Format a time as ``HH:MMZ`` (UTC)."""
    return ts.strftime("%H:%MZ")


def label(metric: str) -> str:
    """Human label of a signal (falls back to the metric name)."""
    return LABELS.get(metric.split(">")[0].split("<")[0], metric)


def fmt(value: float | None, metric: str) -> str:
    """Format a value in the signal's unit (percent for ratios, $ for money)."""
    if value is None:
        return "n/a"
    unit = UNITS.get(metric, "")
    if unit == "ratio":
        return f"{100.0 * value:.1f}%"
    if unit == "usd":
        return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"
    if unit == "seconds":
        return f"{value:.2f}s"
    if unit == "fraction":
        return f"{value:.2f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def where(dimensions: Mapping[str, str]) -> str:
    """Describe a series, e.g. ``tenant acme, model gpt-4o``."""
    return ", ".join(f"{k} {v}" for k, v in sorted(dimensions.items())) or "all traffic"


def contributor_clause(contributors: Sequence[Contributor], parent: Mapping[str, str]) -> str:
    """``; driven by model gpt-4o (85% of the change)`` or an empty string."""
    if not contributors:
        return ""
    top = contributors[0]
    own = {k: v for k, v in top.dimensions.items() if parent.get(k) != v}
    share = f" ({100.0 * top.share:.0f}% of the change)" if top.share is not None else ""
    return f"; driven by {where(own or top.dimensions)}{share}"


def anomaly_message(
    metric: str,
    dims: Mapping[str, str],
    observed: float | None,
    expected: float | None,
    since: datetime,
    contributors: Sequence[Contributor],
    detail: str = "",
    versus: str = "baseline",
) -> str:
    """Return one sentence for a firing statistical (``baseline``) or rule (``threshold``) alert."""
    base = f"{versus} {fmt(expected, metric)}" if expected is not None else f"no {versus}"
    extra = f", {detail}" if detail else ""
    return (
        f"{label(metric)} for {where(dims)} is {fmt(observed, metric)} ({base}{extra}) "
        f"since {hhmm(since)}{contributor_clause(contributors, dims)}."
    )


def resolved_message(
    metric: str,
    dims: Mapping[str, str],
    observed: float | None,
    expected: float | None,
    started: datetime,
    ended: datetime,
    previous: float | None = None,
    versus: str = "baseline",
) -> str:
    """Return one sentence for a resolved alert.

    When the baseline itself moved to the new level (the detector adopted a persistent
    change), say so instead of claiming the signal went "back".
    """
    lasted = f"lasted {hhmm(started)}-{hhmm(ended)}"
    if observed is None:
        return f"Resolved: {label(metric)} for {where(dims)} no longer seen; {lasted}."
    adopted = (
        versus == "baseline" and previous and expected is not None
        and abs(expected - previous) > 0.2 * abs(previous)
    )  # fmt: skip
    if adopted:
        return (
            f"Resolved: {label(metric)} for {where(dims)} settled at {fmt(observed, metric)}, "
            f"now treated as the new normal (was {fmt(previous, metric)}); {lasted}."
        )
    base = f" ({versus} {fmt(expected, metric)})" if expected is not None else ""
    return f"Resolved: {label(metric)} for {where(dims)} back to {fmt(observed, metric)}{base}; {lasted}."


def next_step(
    metric: str, contributors: Sequence[Contributor], dims: Mapping[str, str], extra: str = ""
) -> str:
    """Return what to look at first, e.g. ``Open the exemplar traces…; start with model X``."""
    step = _NEXT_STEPS.get(metric.split(">")[0].split("<")[0], _DEFAULT_NEXT)
    if extra:
        step += f"; {extra}"
    if contributors:
        own = {k: v for k, v in contributors[0].dimensions.items() if dims.get(k) != v}
        step += f"; start with {where(own or contributors[0].dimensions)}"
    return step + "."

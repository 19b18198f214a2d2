"""Scoring of alerts against incident labels: episodes, matching, recall, precision, TTD, noise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from spanpulse.schemas.evaluation import (
    GRACE_WINDOWS,
    MatchRules,
    build_episodes,
    compatible,
    score_alerts,
)
from spanpulse.schemas.record import OTHER
from spanpulse.schemas.scenario import IncidentLabel

DAY = "2025-03-04"
T0 = 1_741_078_800_000  # 2025-03-04T09:00:00Z
MIN = 60_000
HOUR = 60 * MIN


def at(hhmm: str) -> int:
    h, m = map(int, hhmm.split(":"))
    return T0 + (h - 9) * HOUR + m * MIN


def iso(hhmm: str) -> str:
    return f"{DAY}T{hhmm}:00Z"


def alert(
    window: str,
    *,
    fp: str = "f1",
    status: str = "firing",
    dims: Mapping[str, str] | None = None,
    started: str | None = None,
    ended: str | None = None,
    metric: str = "length_share",
    detector: str = "proportion_shift",
    contributors: Sequence[tuple[Mapping[str, str], float]] = (),
) -> dict[str, Any]:
    """An alert message for the 1-minute window starting at ``window`` (HH:MM)."""
    dims = dict(dims if dims is not None else {"model": "gpt-4o"})
    start = at(window)
    end_hhmm = f"{(start + MIN - T0) // HOUR + 9:02d}:{((start + MIN - T0) % HOUR) // MIN:02d}"
    return {
        "id": f"{fp}|{window}|{status}",
        "fingerprint": fp,
        "status": status,
        "severity": "warning",
        "detector": detector,
        "metric": metric,
        "grain": ".".join(sorted(dims)),
        "dimensions": dims,
        "window_start": iso(window),
        "window_end": iso(end_hhmm),
        "started_at": iso(started or window),
        "ended_at": iso(ended) if ended else None,
        "contributors": [{"dimensions": dict(d), "share": s} for d, s in contributors],
    }


def label(
    kind: str = "length_spike",
    start: str = "09:30",
    end: str = "09:50",
    dims: Mapping[str, str] | None = None,
) -> IncidentLabel:
    return IncidentLabel(
        kind, at(start), at(end), dict(dims or {"model": "gpt-4o"}), ("length_share",), 0.25
    )


# ---------------------------------------------------------------------------- episodes
def test_duplicates_are_one_message_and_a_resolve_closes_the_episode() -> None:
    fire = alert("09:32", started="09:30")
    resolve = alert("09:52", status="resolved", started="09:30", ended="09:53")
    episodes = build_episodes([fire, fire, resolve, resolve, fire])
    assert len(episodes) == 1
    ep = episodes[0]
    assert (ep.onset_start_ms, ep.fired_ms, ep.ended_ms) == (at("09:30"), at("09:33"), at("09:53"))
    assert ep.notifications == 1


def test_refire_after_resolve_is_a_new_episode_and_repeats_are_renotifications() -> None:
    msgs = [
        alert("10:40"),  # out of order on purpose: episodes follow window order
        alert("09:32"),
        alert("09:35"),  # firing again while open: same episode
        alert("09:50", status="resolved", ended="09:51"),
        alert("09:40", status="resolved", fp="orphan"),  # resolve without a firing: ignored
    ]
    episodes = build_episodes(msgs)
    assert [(e.fired_ms, e.ended_ms, e.notifications) for e in episodes] == [
        (at("09:33"), at("09:51"), 2),
        (at("10:41"), None, 1),  # never resolved: open until the end of the data
    ]


def test_resolve_without_ended_at_ends_at_its_window_end() -> None:
    episodes = build_episodes([alert("09:32"), alert("09:40", status="resolved")])
    assert episodes[0].ended_ms == at("09:41")


def test_episodes_of_different_series_are_ordered_by_firing_time() -> None:
    episodes = build_episodes([alert("09:50", fp="b"), alert("09:31", fp="a")])
    assert [e.fingerprint for e in episodes] == ["a", "b"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fingerprint": None}, "missing field 'fingerprint'"),
        ({"status": "pending"}, "status must be firing or resolved"),
        ({"window_end": "yesterday"}, "window_end: not an ISO 8601 time"),
        ({"window_end": "2025-03-04T09:33:00"}, "needs a UTC offset"),
    ],
)
def test_malformed_alerts_are_rejected_with_the_field_named(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_episodes([{**alert("09:32"), **change}])


# ---------------------------------------------------------------------------- matching in place
#: A parse_failure_spike's label: the target feature plus the prompt version it introduced.
EXTRACT_V4 = {"feature": "extract", "prompt_version": "extract-v4"}


@pytest.mark.parametrize(
    ("series", "target", "kind"),
    [
        ({"model": "gpt-4o"}, {"model": "gpt-4o"}, "own"),
        ({"model": "gpt-4o", "tenant": "t-0003"}, {"model": "gpt-4o"}, "own"),
        ({"model": "gpt-4o-mini"}, {"model": "gpt-4o"}, None),
        # a coarser grain that contains a tenant + model target
        ({"tenant": "t-0005"}, {"tenant": "t-0005", "model": "claude-sonnet-4"}, "own"),
        ({"model": "claude-sonnet-4"}, {"tenant": "t-0005", "model": "claude-sonnet-4"}, "own"),
        ({"tenant": "t-0006"}, {"tenant": "t-0005", "model": "claude-sonnet-4"}, None),
        (
            {"tenant": "t-0005", "model": "gpt-4o"},
            {"tenant": "t-0005", "model": "claude-sonnet-4"},
            None,
        ),
        # provider targets resolve through the model catalogue
        ({"model": "claude-3-5-haiku"}, {"provider": "anthropic"}, "own"),
        ({"model": "claude-sonnet-4", "tenant": "t-0001"}, {"provider": "anthropic"}, "own"),
        ({"model": "gpt-4o"}, {"provider": "anthropic"}, None),
        # feature targets: the rollout's prompt versions, old and new, are the feature's
        ({"feature": "extract", "prompt_version": "extract-v4"}, EXTRACT_V4, "own"),
        ({"feature": "extract", "prompt_version": "extract-v3"}, EXTRACT_V4, "own"),
        ({"feature": "summarize", "prompt_version": "summarize-v7"}, EXTRACT_V4, None),
        # symptoms through a feature's model mix
        ({"feature": "chat", "prompt_version": "chat-v12"}, {"model": "gpt-4o"}, "composition"),
        ({"feature": "summarize", "prompt_version": "summarize-v7"}, {"model": "gpt-4o"}, None),
        (
            {"feature": "search", "prompt_version": "search-v5"},
            {"provider": "anthropic"},
            "composition",
        ),
        ({"model": "gpt-4o"}, {"feature": "agent"}, "composition"),
        ({"model": "claude-3-5-haiku"}, {"feature": "agent"}, None),
        # nothing in common and no contributors: not attributable
        ({"tenant": "t-0003"}, {"provider": "anthropic"}, None),
        ({"tenant": "t-0003"}, {"feature": "agent"}, None),
        ({"feature": "agent", "prompt_version": "agent-v21"}, {"tenant": "t-0020"}, None),
        # the overflow bucket may hold the target
        ({"tenant": OTHER}, {"tenant": "t-0420"}, "own"),
    ],
)
def test_place_matching(series: dict[str, str], target: dict[str, str], kind: str | None) -> None:
    ep = build_episodes([alert("09:32", dims=series)])[0]
    assert MatchRules().place(ep, label(dims=target)) == kind


def test_contributors_attribute_a_tenant_alert_when_they_explain_most_of_it() -> None:
    storm = label("error_storm", dims={"provider": "anthropic"})
    anthropic = [({"tenant": "t-0003", "model": "claude-sonnet-4"}, 0.4),
                 ({"tenant": "t-0003", "model": "claude-3-5-haiku"}, 0.2),
                 ({"tenant": "t-0003", "model": "gpt-4o"}, 0.3)]  # fmt: skip
    mostly = build_episodes([alert("09:33", dims={"tenant": "t-0003"}, contributors=anthropic)])
    assert MatchRules().place(mostly[0], storm) == "contributors"  # 0.6 >= 0.5
    partly = [(d, s) for d, s in anthropic if d["model"] != "claude-3-5-haiku"]
    barely = build_episodes([alert("09:33", dims={"tenant": "t-0003"}, contributors=partly)])
    assert MatchRules().place(barely[0], storm) is None  # 0.4 < 0.5
    assert MatchRules(min_contributor_share=0.4).place(barely[0], storm) == "contributors"


def test_contributors_of_another_tenant_never_match_a_tenant_incident() -> None:
    runaway = label("runaway_agent", dims={"tenant": "t-0020"})
    other = [({"tenant": "t-0100", "model": "gpt-4o"}, 1.0)]
    ep = build_episodes([alert("09:33", dims={"tenant": "t-0100"}, contributors=other)])[0]
    assert MatchRules().place(ep, runaway) is None
    model_alert = [({"tenant": "t-0020", "model": "gpt-4o"}, 0.9)]
    ep = build_episodes([alert("09:33", dims={"model": "gpt-4o"}, contributors=model_alert)])[0]
    assert MatchRules().place(ep, runaway) == "contributors"


def test_compatible_needs_a_shared_dimension() -> None:
    assert compatible({"model": "gpt-4o"}, {"provider": "openai"})
    assert not compatible({"environment": "prod"}, {"model": "gpt-4o"})


# ---------------------------------------------------------------------------- matching in time
def test_grace_period_after_the_incident_end() -> None:
    lab = label(start="09:30", end="09:50")
    assert GRACE_WINDOWS == 5
    late = build_episodes([alert("09:54", dims={"model": "gpt-4o"})])[0]  # onset 4 windows after
    too_late = build_episodes([alert("09:55", dims={"model": "gpt-4o"})])[0]  # 5 windows after
    rules = MatchRules()
    assert rules.match(late, lab) == "own"
    assert rules.match(too_late, lab) is None
    assert MatchRules(grace_windows=6).match(too_late, lab) == "own"


def test_an_episode_that_fired_before_the_incident_is_not_a_detection() -> None:
    lab = label(start="09:30", end="09:50")
    before = alert("09:28", dims={"model": "gpt-4o"})  # fires at 09:29, still open at 09:30
    ev = score_alerts([lab], [before], duration_ms=2 * HOUR)
    assert ev.recall == 0.0
    assert [v.during for v in ev.false_episodes] == [()]
    pending_across = alert("09:30", dims={"model": "gpt-4o"}, started="09:27")
    ev = score_alerts([lab], [pending_across], duration_ms=2 * HOUR)
    assert ev.recall == 1.0  # the onset runs into the incident: the detector saw it start
    assert ev.incidents[0].ttd_windows == 1.0


# ---------------------------------------------------------------------------- metrics
def test_metrics_of_a_small_run() -> None:
    spike = label("length_spike", "09:30", "09:50", {"model": "gpt-4o"})
    storm = label("error_storm", "10:10", "10:25", {"provider": "anthropic"})
    refusal = label(
        "refusal_spike", "10:40", "10:50", {"tenant": "t-0005", "model": "claude-sonnet-4"}
    )
    alerts = [
        # the spike: model alert after 3 windows, then a feature symptom, then a duplicate
        alert("09:32", fp="m", dims={"model": "gpt-4o"}, started="09:30"),
        alert("09:32", fp="m", dims={"model": "gpt-4o"}, started="09:30"),
        alert("09:52", fp="m", status="resolved", dims={"model": "gpt-4o"}, ended="09:53"),
        alert("09:34", fp="c", dims={"feature": "chat", "prompt_version": "chat-v12"}),
        # the storm: a haiku alert 5 windows in
        alert("10:14", fp="h", dims={"model": "claude-3-5-haiku"}, metric="error_rate"),
        # noise: an unrelated tenant during the storm, and a model alert in quiet time
        alert("10:15", fp="n1", dims={"tenant": "t-0100"}, metric="latency_p95"),
        alert("11:30", fp="n2", dims={"model": "gemini-2.0-flash"}, metric="latency_p95"),
    ]
    ev = score_alerts([spike, storm, refusal], alerts, duration_ms=2 * HOUR)
    assert [o.detected for o in ev.incidents] == [True, True, False]
    assert [o.ttd_windows for o in ev.incidents] == [3.0, 5.0, None]
    assert [len(o.matches) for o in ev.incidents] == [2, 1, 0]
    assert ev.incidents[0].kinds == ("own", "composition")
    assert ev.recall == pytest.approx(2 / 3)
    assert len(ev.episodes) == 5
    assert ev.precision == pytest.approx(3 / 5)
    assert ev.own_precision == pytest.approx(2 / 5)
    assert ev.median_ttd_windows == 4.0
    assert len(ev.false_episodes) == 2
    assert ev.false_per_hour == 1.0
    assert ev.false_per_day == 24.0
    false = {v.episode.fingerprint: v.during for v in ev.false_episodes}
    assert false == {"n1": (1,), "n2": ()}
    kinds = ev.by_kind()
    assert [
        (k, s.incidents, s.detected, s.recall, s.median_ttd_windows) for k, s in kinds.items()
    ] == [
        ("length_spike", 1, 1, 1.0, 3.0),
        ("error_storm", 1, 1, 1.0, 5.0),
        ("refusal_spike", 1, 0, 0.0, None),
    ]
    dumped = ev.to_dict()
    assert dumped["episodes_by_match"] == {"own": 2, "composition": 1, "contributors": 0, "None": 2}
    assert [f["fingerprint"] for f in dumped["false_episode_list"]] == ["n1", "n2"]


def test_time_to_detect_is_in_windows_of_the_given_length() -> None:
    lab = label(start="09:30", end="10:30")
    five_min = {**alert("09:40"), "window_start": iso("09:40"), "window_end": iso("09:45")}
    ev = score_alerts([lab], [five_min], duration_ms=2 * HOUR, rules=MatchRules(window_ms=5 * MIN))
    assert ev.incidents[0].ttd_windows == 3.0


def test_an_incident_free_run_counts_every_episode_as_false() -> None:
    alerts = [alert("09:10", fp="a"), alert("10:10", fp="b"), alert("10:11", fp="b")]
    ev = score_alerts([], alerts, duration_ms=2 * HOUR)
    assert ev.recall is None and ev.median_ttd_windows is None
    assert ev.precision == 0.0
    assert len(ev.false_episodes) == 2
    assert ev.false_per_day == 24.0


def test_no_alerts_means_no_precision_and_no_false_episodes() -> None:
    ev = score_alerts([label()], [], duration_ms=HOUR)
    assert ev.precision is None and ev.recall == 0.0 and ev.false_per_hour == 0.0


def test_invalid_durations_and_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="duration_ms must be > 0"):
        score_alerts([], [], duration_ms=0)
    with pytest.raises(ValueError, match="window_ms > 0"):
        MatchRules(window_ms=0)

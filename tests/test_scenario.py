"""Tests of scenario files: every incident moves its signal inside its range and nowhere else."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from spanpulse.schemas.scenario import KINDS, SIGNALS, IncidentLabel, Scenario, ScenarioError
from spanpulse.schemas.traffic import LENGTH_FINISH, context_fill_expr

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
BASE: dict[str, Any] = {
    "seed": 3,
    "start": "2025-03-04T09:00:00Z",
    "duration": "40m",
    "tenants": 500,
    "rate": 20.0,
}
START_MS = 1_741_078_800_000
INC_START, INC_END = START_MS + 10 * 60_000, START_MS + 30 * 60_000

TARGETS: dict[str, dict[str, Any]] = {
    "length_spike": {"target": {"model": "gpt-4o"}, "magnitude": 0.25},
    "refusal_spike": {"target": {"tenant": "t-0001", "model": "gpt-4o-mini"}, "magnitude": 0.2},
    "parse_failure_spike": {"target": {"feature": "extract"}, "magnitude": 0.3},
    "runaway_agent": {"target": {"tenant": "t-0030"}, "magnitude": 10.0},
    "prompt_bloat": {"target": {"feature": "summarize"}, "magnitude": 1.0},
    "context_fill_creep": {"target": {"feature": "agent"}, "magnitude": 0.9},
    "error_storm": {"target": {"provider": "anthropic"}, "magnitude": 0.3},
    "latency_spike": {"target": {"model": "claude-3-5-haiku"}, "magnitude": 5.0},
}


def _scenario(kind: str) -> Scenario:
    incident = {"kind": kind, "start": "10m", "duration": "20m", **TARGETS[kind]}
    return Scenario.from_mapping({**BASE, "incident": [incident]})


@cache
def _calls(kind: str) -> pl.DataFrame:
    """Calls of the one-incident scenario of ``kind`` (``baseline``: none), computed once."""
    if kind == "baseline":
        return Scenario.from_mapping(BASE).calls()
    return _scenario(kind).calls()


@pytest.fixture(scope="module")
def baseline() -> pl.DataFrame:
    return _calls("baseline")


def _inside(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("end_time_ms").is_between(INC_START, INC_END, closed="left"))


def _outside(df: pl.DataFrame) -> pl.DataFrame:
    inside = pl.col("end_time_ms").is_between(INC_START, INC_END, closed="left")
    return df.filter(~inside).sort("span_id")


def _late(df: pl.DataFrame) -> pl.DataFrame:
    """The last quarter of the incident, where ramped incidents are near full strength."""
    late_start = INC_END - (INC_END - INC_START) // 4
    return df.filter(pl.col("end_time_ms").is_between(late_start, INC_END, closed="left"))


def _share(df: pl.DataFrame, expr: pl.Expr) -> float:
    return float(df.select(expr.cast(pl.Float64).mean()).item())


def _length_share(df: pl.DataFrame) -> float:
    d = df.filter((pl.col("model") == "gpt-4o") & ~pl.col("is_error"))
    return _share(d, pl.col("finish_reason").is_in(list(LENGTH_FINISH.values())))


def _refusal_rate(df: pl.DataFrame) -> float:
    d = df.filter((pl.col("tenant") == "t-0001") & (pl.col("model") == "gpt-4o-mini"))
    return _share(d, pl.col("refusal"))


def _parse_failure_rate(df: pl.DataFrame) -> float:
    d = df.filter((pl.col("feature") == "extract") & pl.col("parse_ok").is_not_null())
    return _share(d, ~pl.col("parse_ok"))


def _tenant_calls(df: pl.DataFrame) -> float:
    return float(df.filter(pl.col("tenant") == "t-0030").height)


def _summarize_input(df: pl.DataFrame) -> float:
    d = df.filter((pl.col("feature") == "summarize") & ~pl.col("is_error"))
    return float(d["input_tokens"].mean())  # type: ignore[arg-type]


def _agent_fill(df: pl.DataFrame) -> float:
    d = df.filter((pl.col("feature") == "agent") & ~pl.col("is_error"))
    return float(d.select(context_fill_expr().median()).item())


def _anthropic_errors(df: pl.DataFrame) -> float:
    return _share(df.filter(pl.col("provider") == "anthropic"), pl.col("is_error"))


def _haiku_latency(df: pl.DataFrame) -> float:
    d = df.filter((pl.col("model") == "claude-3-5-haiku") & ~pl.col("is_error"))
    return float(d.select((pl.col("end_time_ms") - pl.col("start_time_ms")).median()).item())


# kind -> (signal on a frame, which part of the incident to read, (min ratio to baseline))
MOVES: dict[str, tuple[Callable[[pl.DataFrame], float], Callable[..., pl.DataFrame], float]] = {
    "length_spike": (_length_share, _inside, 10.0),
    "refusal_spike": (_refusal_rate, _inside, 20.0),
    "parse_failure_spike": (_parse_failure_rate, _inside, 8.0),
    "runaway_agent": (_tenant_calls, _inside, 7.0),
    "prompt_bloat": (_summarize_input, _late, 1.6),
    "context_fill_creep": (_agent_fill, _late, 8.0),
    "error_storm": (_anthropic_errors, _inside, 20.0),
    "latency_spike": (_haiku_latency, _inside, 4.5),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_incident_moves_its_signal_only_inside_its_range(kind: str, baseline: pl.DataFrame) -> None:
    scenario = _scenario(kind)
    df = _calls(kind)
    signal, part, min_ratio = MOVES[kind]
    before, after = signal(part(baseline)), signal(part(df))
    assert before > 0
    assert after / before >= min_ratio, (kind, before, after)
    # byte-identical traffic outside the incident's event-time range
    assert _outside(df).equals(_outside(baseline))
    label = scenario.labels()[0]
    assert (label.start_ms, label.end_ms) == (INC_START, INC_END)
    assert set(label.signals) <= set(SIGNALS)


def test_incident_leaves_untargeted_calls_alone(baseline: pl.DataFrame) -> None:
    df = _calls("length_spike")
    others = pl.col("model") != "gpt-4o"
    assert df.filter(others).sort("span_id").equals(baseline.filter(others).sort("span_id"))
    df = _calls("error_storm")
    others = pl.col("provider") != "anthropic"
    assert df.filter(others).sort("span_id").equals(baseline.filter(others).sort("span_id"))


def test_magnitudes_are_reached() -> None:
    df = _inside(_calls("length_spike"))
    assert _length_share(df) == pytest.approx(0.25, abs=0.04)
    df = _inside(_calls("error_storm"))
    assert _anthropic_errors(df) == pytest.approx(0.3, abs=0.03)
    df = _inside(_calls("latency_spike"))
    base = _inside(_calls("baseline"))
    assert _haiku_latency(df) / _haiku_latency(base) == pytest.approx(5.0, rel=0.05)


def test_refusal_spike_changes_the_response_model(baseline: pl.DataFrame) -> None:
    df = _inside(_calls("refusal_spike"))
    rows = df.filter((pl.col("tenant") == "t-0001") & (pl.col("model") == "gpt-4o-mini"))
    assert set(rows["response_model"]) == {"gpt-4o-mini-2025-02-11"}
    assert set(rows.filter("refusal")["finish_reason"]) == {"stop"}  # OpenAI refuses with stop
    untouched = _inside(baseline).filter(pl.col("model") == "gpt-4o-mini")
    assert set(untouched["response_model"]) == {"gpt-4o-mini-2024-07-18"}


def test_parse_failure_spike_ships_a_new_prompt_version() -> None:
    scenario = _scenario("parse_failure_spike")
    df = _calls("parse_failure_spike").filter(pl.col("feature") == "extract")
    inside = _inside(df)
    assert set(inside["prompt_version"]) == {"extract-v4"}
    assert set(_outside(df)["prompt_version"]) == {"extract-v3"}
    assert scenario.labels()[0].dimensions == {"feature": "extract", "prompt_version": "extract-v4"}


def test_runaway_agent_multiplies_tokens_too(baseline: pl.DataFrame) -> None:
    df = _inside(_calls("runaway_agent"))
    base = _inside(baseline)
    mine = pl.col("tenant") == "t-0030"
    tokens = pl.col("input_tokens") + pl.col("output_tokens")
    ratio = (
        df.filter(mine).select(tokens.sum()).item() / base.filter(mine).select(tokens.sum()).item()
    )
    assert ratio > 6.0
    assert df.height - base.height == df.filter(mine).height - base.filter(mine).height


def test_ramped_incidents_start_small() -> None:
    early_end = INC_START + (INC_END - INC_START) // 10
    early = pl.col("end_time_ms").is_between(INC_START, early_end, closed="left")
    bloat = _calls("prompt_bloat").filter(early)
    base = _calls("baseline").filter(early)
    assert _summarize_input(bloat) / _summarize_input(base) < 1.15


def test_chunk_size_does_not_change_a_scenario() -> None:
    scenario = Scenario.from_mapping(
        {
            **BASE,
            "duration": "20m",
            "incident": [
                {"kind": "runaway_agent", "start": "5m", "duration": "10m",
                 "target": {"tenant": "t-0002"}},
                {"kind": "latency_spike", "start": "3m", "duration": "7m",
                 "target": {"model": "gpt-4o"}},
            ],
        }
    )  # fmt: skip
    small = pl.concat(list(scenario.calls_chunks(45.0))).sort("span_id")
    large = pl.concat(list(scenario.calls_chunks(600.0))).sort("span_id")
    assert small.height > 20_000
    assert small.equals(large)


def test_labels_are_ground_truth_records() -> None:
    scenario = Scenario.load(SCENARIO_DIR / "all_incidents.toml")
    labels = scenario.labels()
    assert [label.kind for label in labels] == [inc.kind for inc in scenario.incidents]
    assert set(label.kind for label in labels) == set(KINDS)
    for label in labels:
        assert isinstance(label, IncidentLabel)
        assert scenario.start_ms <= label.start_ms < label.end_ms <= scenario.end_ms
        assert label.dimensions
        json.dumps(label.to_dict())
    first = labels[0].to_dict()
    assert first == {
        "kind": "length_spike",
        "start_ms": scenario.start_ms + 30 * 60_000,
        "end_ms": scenario.start_ms + 50 * 60_000,
        "dimensions": {"model": "gpt-4o"},
        "signals": ["length_share"],
        "magnitude": 0.25,
    }
    ordered = sorted(labels, key=lambda label: label.start_ms)
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert a.end_ms <= b.start_ms  # no overlap: one detection maps to one label


def test_shipped_scenario_files_are_valid() -> None:
    files = sorted(SCENARIO_DIR.glob("*.toml"))
    names = {f.stem for f in files}
    assert set(KINDS) | {"baseline", "demo", "all_incidents"} <= names
    for path in files:
        scenario = Scenario.load(path)
        assert scenario.name == path.stem
        if path.stem in KINDS:
            assert [inc.kind for inc in scenario.incidents] == [path.stem]
    assert Scenario.load(SCENARIO_DIR / "baseline.toml").incidents == ()


def test_timestamps_and_durations_parse() -> None:
    text = """
seed = 1
start = 2025-03-04T10:00:00+01:00
duration = "1h30m"
[[incident]]
kind = "error_storm"
start = 90
duration = "2m30s"
target = { provider = "openai" }
"""
    scenario = Scenario.loads(text)
    assert scenario.start_ms == START_MS
    assert scenario.duration_s == 5400.0
    incident = scenario.incidents[0]
    assert (incident.start_s, incident.duration_s, incident.magnitude) == (90.0, 150.0, 0.3)


GOOD = 'seed = 1\nstart = "2025-03-04T09:00:00Z"\nduration = "1h"\n'


def _with_incident(body: str) -> str:
    return GOOD + "[[incident]]\n" + body


BAD_FILES = [
    ('start = "2025-03-04T09:00:00Z"\nduration = "1h"\n', "seed: missing"),
    (GOOD + "colour = 'red'\n", "colour: unknown key"),
    ('seed = "7"\nstart = "2025-03-04T09:00:00Z"\nduration = "1h"\n', "seed: expected an integer"),
    ('seed = 1\nstart = "2025-03-04T09:00:00"\nduration = "1h"\n', "start: timestamp needs"),
    ('seed = 1\nstart = "yesterday"\nduration = "1h"\n', "start: not an RFC 3339"),
    ('seed = 1\nstart = "2025-03-04T09:00:00Z"\nduration = "1 h"\n', "duration: not a"),
    (GOOD + "rate = -5\n", "rate: must be > 0"),
    (GOOD + "tenants = 0\n", "tenants: must be >= 1"),
    (GOOD + "incident = 3\n", "incident: expected an array"),
    ("seed = 1\nstart = \n", "invalid TOML"),
    (_with_incident('kind = "meltdown"\nstart = "1m"\nduration = "1m"\ntarget = {}\n'),
     "incident[0].kind: unknown kind 'meltdown'"),
    (_with_incident('kind = "length_spike"\nstart = "1m"\nduration = "1m"\n'),
     "incident[0].target: missing"),
    (_with_incident('kind = "length_spike"\nstart = "1m"\nduration = "1m"\n'
                    'target = { model = "gpt-5" }\n'), "incident[0].target.model: unknown model"),
    (_with_incident('kind = "length_spike"\nstart = "1m"\nduration = "1m"\n'
                    'target = { tenant = "t-0001" }\n'), "incident[0].target.tenant: not a target"),
    (_with_incident('kind = "runaway_agent"\nstart = "1m"\nduration = "1m"\n'
                    'target = { tenant = "t-0500" }\n'), "incident[0].target.tenant: unknown"),
    (_with_incident('kind = "error_storm"\nstart = "50m"\nduration = "20m"\n'
                    'target = { provider = "openai" }\n'), "incident[0].duration: incident ends"),
    (_with_incident('kind = "error_storm"\nstart = "5m"\nduration = "20m"\n'
                    'target = { provider = "openai" }\nmagnitude = 1.5\n'),
     "incident[0].magnitude"),
    (_with_incident('kind = "runaway_agent"\nstart = "5m"\nduration = "20m"\n'
                    'target = { tenant = "t-0001" }\nmagnitude = 0.5\n'), "incident[0].magnitude"),
    (_with_incident('kind = "error_storm"\nstart = "5m"\nduration = "2m"\n'
                    'target = { provider = "openai" }\nprompt_version = "v2"\n'),
     "incident[0].prompt_version: not used"),
    (_with_incident('kind = "parse_failure_spike"\nstart = "5m"\nduration = "2m"\n'
                    'target = { feature = "chat" }\n'), "incident[0].target.feature: feature"),
    (_with_incident('kind = "context_fill_creep"\nstart = "5m"\nduration = "2m"\ntarget = {}\n'),
     "incident[0].target: needs at least one"),
    (_with_incident('kind = "error_storm"\nstart = "5m"\nduration = "2m"\n'
                    'target = { provider = "openai" }\nseverity = 3\n'),
     "incident[0].severity: unknown key"),
    (_with_incident('kind = "error_storm"\nstart = "5m"\nduration = "2m"\n'
                    'target = { provider = 3 }\n'), "incident[0].target: expected a table"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_scenarios_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        Scenario.loads(text, source="bad.toml")
    message = str(info.value)
    assert message.startswith("bad.toml: ")
    assert expected in message
    assert "\n" not in message


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        Scenario.load(tmp_path / "nope.toml")
    path = tmp_path / "broken.toml"
    path.write_text(GOOD + "rate = 0\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"broken\.toml: rate"):
        Scenario.load(path)


@pytest.mark.parametrize("kind", ["refusal_spike", "runaway_agent", "error_storm"])
def test_baseline_target_calls_count_the_incident_free_slice(
    kind: str, baseline: pl.DataFrame
) -> None:
    target = TARGETS[kind]["target"]
    match = pl.all_horizontal([pl.col(k) == v for k, v in target.items()])
    expected = _inside(baseline).filter(match).height
    got = _scenario(kind).baseline_target_calls(0)
    assert got == expected > 0
    if kind == "runaway_agent":  # the incident itself multiplies the slice; the baseline does not
        assert _inside(_calls(kind)).filter(match).height > 5 * got

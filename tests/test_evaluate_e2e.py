"""``spanpulse evaluate`` end to end: real broker, real job, results file; and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spanpulse.cli import main
from spanpulse.evaluate import Overrides, prepare_scenario, to_toml
from spanpulse.schemas.scenario import Scenario

SMALL = """
name = "e2e_small_length_spike"
seed = 11
start = "2025-03-04T09:00:00Z"
duration = "40m"
tenants = 50
rate = 20.0

[[incident]]
kind = "length_spike"
start = "20m"
duration = "12m"
target = { model = "gpt-4o" }
magnitude = 0.4
"""


@pytest.mark.integration
def test_evaluate_detects_a_large_length_spike_and_writes_the_results(tmp_path: Path) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL)
    out, dump = tmp_path / "results" / "eval.md", tmp_path / "eval.json"
    rc = main(["evaluate", str(scenario), "--output", str(out), "--json", str(dump)])
    assert rc == 0
    text = out.read_text()
    assert f"spanpulse evaluate {scenario} --output {out} --json {dump}" in text
    assert "| e2e_small_length_spike (`small.toml`) | 50 | 20 |" in text
    data = json.loads(dump.read_text())
    ev = data["scenarios"][0]["evaluation"]
    assert ev["incidents"] == 1 and ev["recall"] == 1.0, ev["incident_outcomes"]
    first = ev["incident_outcomes"][0]["first_episode"]
    assert first["match"] == "own" and first["dimensions"].get("model") == "gpt-4o", first
    assert data["scenarios"][0]["produced"]["calls"] == data["scenarios"][0]["job"]["records"]
    assert data["summary"]["median_ttd_windows"] <= 5
    # gpt-4o's share of 20 calls/s over 50 tenants: well above the thin-slice floor of 20/window
    (target_calls,) = data["scenarios"][0]["incident_target_calls"]
    assert 12 * 20 < target_calls < 12 * 20 * 60
    per_window = f"{target_calls / 12:,.1f}"
    assert f"| 09:20-09:32 | {per_window} | yes |" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "no-such-scenario.toml"], "cannot read scenario file"),
        (["evaluate", "{scenario}", "--tenants", "0"], "tenants: must be >= 1"),
        (
            ["evaluate", "{scenario}", "--config", "no-such.toml"],
            "config: file 'no-such.toml' not found",
        ),
        (["evaluate", "{scenario}", "--output", "{tmp}"], "is a directory"),
    ],
)
def test_bad_inputs_end_with_one_line_before_any_broker_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL)
    args = [a.format(scenario=scenario, tmp=tmp_path) for a in argv]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spanpulse evaluate: error:"), err
    assert message in err[0]


def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--rate", "-3"])
    assert exc.value.code == 2
    assert "expected a number > 0" in capsys.readouterr().err


def test_overrides_change_the_scenario_and_drop_incidents_that_no_longer_fit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "two.toml"
    path.write_text(
        SMALL
        + '\n[[incident]]\nkind = "error_storm"\nstart = "5m"\nduration = "10m"\n'
        + 'target = { provider = "anthropic" }\n'
    )
    prepared = prepare_scenario(path, Overrides(tenants=30, rate=5.0, duration_s=20 * 60.0))
    assert prepared.dropped == (0,)  # the length spike ends at 32m, after the new 20m
    sc = prepared.scenario
    assert (sc.tenants, sc.rate_per_s, sc.duration_s) == (30, 5.0, 1200.0)
    assert [lab.kind for lab in sc.labels()] == ["error_storm"]
    # the document written for `generate` is the same scenario
    assert Scenario.loads(to_toml(prepared.document)) == sc
    untouched = prepare_scenario(path, Overrides())
    assert untouched.dropped == () and untouched.scenario == Scenario.load(path)

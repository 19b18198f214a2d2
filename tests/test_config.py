"""Config loading: defaults, env overrides, and one-line errors for every invalid case."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from spanpulse.config import DEFAULT_GRAINS, ConfigError, apply_env, from_mapping, load
from tests.cli_process import assert_one_line_error, run_cli

CASES = tomllib.loads((Path(__file__).parent / "testdata" / "config_cases.toml").read_text())[
    "case"
]


def test_defaults_are_valid_and_documented_values():
    s = from_mapping({})
    assert s.inputs[0].topic == "otlp_spans" and s.inputs[0].encoding == "otlp_proto"
    assert s.window.length_ms == 60_000
    assert s.rollups.grains == DEFAULT_GRAINS
    assert [g.name for g in s.rollups.grains] == [
        "tenant",
        "tenant.model",
        "tenant.feature",
        "model",
        "feature.prompt_version",
        "feature.prompt_version.model",
    ]
    assert s.kafka.alert_topic == "spanpulse.alerts"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_config_gives_one_line_error_naming_the_key(case, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(case["toml"].replace("\\n", "\n"))
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    message = str(info.value)
    assert case["error"] in message
    assert "\n" not in message


def test_env_overrides_nested_keys_and_types():
    raw = apply_env(
        {"window": {"length": "1m"}},
        {
            "SPANPULSE_WINDOW__LENGTH": "5m",
            "SPANPULSE_KAFKA__BATCH_SIZE": "100",
            "SPANPULSE_KAFKA__BOOTSTRAP_SERVERS": "b1:9092,b2:9092",
            "UNRELATED": "x",
        },
    )
    s = from_mapping(raw)
    assert s.window.length_ms == 300_000
    assert s.kafka.batch_size == 100
    assert s.kafka.bootstrap_servers == "b1:9092,b2:9092"


def test_secrets_resolve_from_env_and_file_and_are_never_echoed(tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cr3t-from-file\n")
    s = from_mapping(
        {
            "kafka": {
                "properties": {
                    "sasl.password": f"file:{secret_file}",
                    "sasl.username": "env:SP_TEST_USER",
                }
            }
        }
    )
    import os

    os.environ["SP_TEST_USER"] = "alice"
    try:
        conf = s.kafka.client_config()
    finally:
        del os.environ["SP_TEST_USER"]
    assert conf["sasl.password"] == "s3cr3t-from-file"
    assert conf["sasl.username"] == "alice"
    with pytest.raises(ConfigError) as info:
        from_mapping(
            {"kafka": {"properties": {"sasl.password": "env:SP_MISSING_VAR"}}}
        ).kafka.client_config()
    assert "SP_MISSING_VAR is not set" in str(info.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[window\nlength=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad, environ={})


def test_cli_reports_config_error_in_one_line_without_traceback(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('[window]\nlength = "soon"\n')
    assert_one_line_error(run_cli("run", "--config", str(bad)), 2, "window.length")


def test_cli_rejects_bad_flag_in_one_line():
    assert_one_line_error(run_cli("run", "--workers", "zero"), 2, "--workers")


def test_tenant_hashing_needs_a_salt_and_resolves_it_from_env(monkeypatch):
    with pytest.raises(ConfigError, match="privacy.tenant_salt: required"):
        from_mapping({"privacy": {"hash_tenant_ids": True}})
    monkeypatch.setenv("SP_SALT", "pepper")
    s = from_mapping({"privacy": {"hash_tenant_ids": True, "tenant_salt": "env:SP_SALT"}})
    assert s.hash_tenant_ids and s.tenant_salt == "pepper"


def test_threshold_rules_and_grain_families_come_from_config() -> None:
    from spanpulse.config import detector_config

    s = from_mapping({"detectors": {
        "rules": [{"metric": "length_share", "op": ">", "value": 0.1, "for": 2, "grains": ["model"]}],
        "grain_families": {"tenant": ["proportion_shift"]},
        "level_shift_min_change": 0.5,
    }})  # fmt: skip
    cfg = detector_config(s.detectors)
    (rule,) = cfg.rules
    assert (rule.metric, rule.op, rule.value, rule.for_windows, rule.grains) == (
        "length_share", ">", 0.1, 2, ("model",),
    )  # fmt: skip
    assert cfg.families("tenant") == {"proportion_shift"}
    assert cfg.families("tenant.model") == {"proportion_shift"}  # defaults kept per grain
    assert cfg.level_shift_min_change == 0.5


@pytest.mark.parametrize(
    ("detectors", "needle"),
    [
        ({"rules": [{"metric": "nope", "op": ">", "value": 1}]}, "not a known signal"),
        ({"rules": [{"metric": "length_share", "value": 1}]}, "missing op"),
        (
            {"rules": [{"metric": "length_share", "op": ">", "value": 1, "severity": "x"}]},
            "severity",
        ),
        ({"rules": [{"metric": "length_share", "op": ">", "value": 1, "fro": 2}]}, "fro"),
        ({"grain_families": {"tenant": ["levelshift"]}}, "unknown families"),
        ({"contributor_windows": 0}, "contributor_windows: expected a positive integer"),
    ],
)
def test_bad_detector_rules_are_one_line_errors(detectors: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as err:
        from_mapping({"detectors": detectors})
    assert "\n" not in str(err.value)

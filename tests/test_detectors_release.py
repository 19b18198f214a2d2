"""Release regression: a new prompt version compared with the previous one."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import jsonschema
import numpy as np
import polars as pl
from test_detectors_fixtures import Traffic, make_row

from spanpulse.detectors.config import DetectorConfig
from spanpulse.detectors.release import ReleaseBank, release_key
from spanpulse.schemas.alert import Alert, load_alert_schema

VALIDATOR = jsonschema.Draft202012Validator(load_alert_schema())
GRAIN = "feature.prompt_version"


def _rows(rng: np.random.Generator, i: int, versions: dict[str, Traffic]) -> pl.DataFrame:
    rows = [
        make_row(rng, i, t, dims={"feature": "search", "prompt_version": v}, grain=GRAIN)
        for v, t in versions.items()
    ]
    return pl.DataFrame(rows)


def _run(bank: ReleaseBank, rng: np.random.Generator, windows: range,
         versions: dict[str, Traffic]) -> list[tuple[int, Alert]]:  # fmt: skip
    out: list[tuple[int, Alert]] = []
    for i in windows:
        out += [(i, a) for a in bank.observe_window(_rows(rng, i, versions))]
    return out


def _established(seed: int = 0) -> tuple[ReleaseBank, np.random.Generator, Traffic]:
    bank, rng = ReleaseBank(DetectorConfig()), np.random.default_rng(seed)
    base = Traffic(calls_per_min=200, p_parse_fail=0.005, parse_share=0.5)
    assert _run(bank, rng, range(0, 60), {"v11": base}) == []
    return bank, rng, base


def test_release_key_routes_by_parent_dimensions() -> None:
    cfg = DetectorConfig()
    row: dict[str, Any] = {"grain": GRAIN, "feature": "search", "prompt_version": "v12"}
    assert release_key(row, cfg) == release_key({**row, "prompt_version": "v13"}, cfg)
    assert release_key({**row, "feature": "chat"}, cfg) != release_key(row, cfg)
    assert release_key({"grain": "tenant", "tenant": "a"}, cfg) is None


def test_regressing_prompt_version_fires_once_with_both_versions() -> None:
    bank, rng, base = _established()
    bad = replace(base, p_parse_fail=0.08, output_median=400.0)
    alerts = _run(bank, rng, range(60, 90), {"v11": base, "v12": bad})
    firing = [(i, a) for i, a in alerts if a.status == "firing"]
    metrics = {a.metric for _, a in firing}
    assert {"parse_failure_rate", "output_tokens_p95"} <= metrics, [a.message for _, a in firing]
    assert len(firing) == len(metrics)  # once per metric, not every window
    assert all(i - 60 < 5 for i, _ in firing)
    a = next(a for _, a in firing if a.metric == "parse_failure_rate")
    assert a.detector == "release_regression"
    assert a.dimensions == {"feature": "search", "prompt_version": "v12"}
    assert [c.dimensions["prompt_version"] for c in a.contributors] == ["v12", "v11"]
    assert "v12" in a.message and "v11" in a.message and "roll back" in a.next_step
    assert a.details["previous_version"] == "v11"
    for _, x in alerts:
        VALIDATOR.validate(json.loads(x.to_json_bytes()))
    assert bank.firing  # the gauge counts open alerts


def test_rollback_resolves_the_regression() -> None:
    bank, rng, base = _established(seed=1)
    bad = replace(base, p_parse_fail=0.1)
    opened = [a for _, a in _run(bank, rng, range(60, 70), {"v11": base, "v12": bad})]
    assert any(a.metric == "parse_failure_rate" and a.status == "firing" for a in opened)
    later = _run(bank, rng, range(70, 90), {"v11": base})  # v12 rolled back
    resolved = [a for _, a in later if a.status == "resolved"]
    assert {a.fingerprint for a in opened if a.status == "firing"} == {
        a.fingerprint for a in resolved
    }
    assert all("no longer receives traffic" in a.message for a in resolved)
    assert not bank.firing


def test_an_equivalent_new_version_raises_nothing() -> None:
    bank, rng, base = _established(seed=2)
    assert _run(bank, rng, range(60, 120), {"v11": base, "v12": base}) == []


def test_a_first_version_has_nothing_to_compare_with() -> None:
    bank = ReleaseBank(DetectorConfig())
    rng = np.random.default_rng(3)
    bad = Traffic(p_parse_fail=0.3, parse_share=0.5)
    assert _run(bank, rng, range(0, 40), {"v1": bad}) == []

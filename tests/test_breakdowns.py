"""Which rows break a series down: refinements and the single-version stand-ins."""

from __future__ import annotations

import polars as pl

from spanpulse.config import DEFAULT_GRAINS
from spanpulse.detectors.breakdowns import child_grains, stand_in_grains, window_children
from spanpulse.detectors.contributors import row_dimensions

GRAINS = [g.dims for g in DEFAULT_GRAINS]


def _rows(grain: str, rows: list[dict[str, str | int]]) -> pl.DataFrame:
    cols = {"grain": pl.String, "tenant": pl.String, "feature": pl.String,
            "prompt_version": pl.String, "model": pl.String, "calls": pl.Int64}  # fmt: skip
    return pl.DataFrame([{"grain": grain, **r} for r in rows], schema=cols)


def test_refinements_add_exactly_one_dimension() -> None:
    assert child_grains(("tenant",), GRAINS) == [("tenant", "model"), ("tenant", "feature")]
    assert child_grains(("feature", "prompt_version"), GRAINS) == [
        ("feature", "prompt_version", "model")
    ]


def test_tenant_feature_stands_in_for_the_tenants_of_a_prompt_version() -> None:
    assert stand_in_grains(("feature", "prompt_version"), GRAINS) == [
        (("tenant", "feature"), "prompt_version")
    ]
    assert stand_in_grains(("tenant",), GRAINS) == []  # no version to swap
    assert stand_in_grains(("model",), GRAINS) == []


def test_stand_in_rows_only_for_features_running_one_version_in_the_window() -> None:
    by_grain = {
        "feature.prompt_version": _rows("feature.prompt_version", [
            {"feature": "search", "prompt_version": "s5", "calls": 90},
            {"feature": "chat", "prompt_version": "c1", "calls": 50},  # a rollout: two versions
            {"feature": "chat", "prompt_version": "c2", "calls": 10},
        ]),
        "tenant.feature": _rows("tenant.feature", [
            {"tenant": "a", "feature": "search", "calls": 60},
            {"tenant": "b", "feature": "search", "calls": 30},
            {"tenant": "a", "feature": "chat", "calls": 60},
        ]),
        "feature.prompt_version.model": _rows("feature.prompt_version.model", [
            {"feature": "search", "prompt_version": "s5", "model": "m", "calls": 90},
        ]),
    }  # fmt: skip
    kids = window_children(by_grain, ("feature", "prompt_version"), GRAINS)
    assert kids is not None
    stand_ins = kids.filter(pl.col("grain") == "feature.prompt_version.tenant").sort("tenant")
    assert kids.filter(pl.col("grain") == "tenant.feature").is_empty()
    assert stand_ins.select("tenant", "feature", "prompt_version", "calls").rows() == [
        ("a", "search", "s5", 60),
        ("b", "search", "s5", 30),
    ]  # chat's tenants are left out: their calls mix c1 and c2
    dims = row_dimensions(stand_ins.row(0, named=True))
    assert dims == {"feature": "search", "prompt_version": "s5", "tenant": "a"}  # parent's + tenant
    assert kids.filter(pl.col("grain") == "feature.prompt_version.model").height == 1
    assert kids.columns == by_grain["tenant.feature"].columns


def test_no_children_without_rows() -> None:
    assert window_children({}, ("feature", "prompt_version"), GRAINS) is None

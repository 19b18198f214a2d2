"""Inhibition: a fleet-level alert holds back the per-tenant symptoms of the same incident."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

from spanpulse.detectors.inhibit import Inhibitor, WindowGate, grain_rank, signal_of
from spanpulse.schemas.alert import Alert, Contributor, build_alert

T0 = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)


def _alert(
    grain: str,
    dims: dict[str, str],
    metric: str = "length_share",
    detector: str = "proportion_shift",
    status: str = "firing",
    minute: int = 0,
    top: dict[str, str] | None = None,
) -> Alert:
    start = T0 + timedelta(minutes=minute)
    contributors = (Contributor(top, 0.2, 0.01, 0.9, 100),) if top else ()
    return build_alert(
        detector=detector, metric=metric, grain=grain, dimensions=dims,
        status="firing" if status == "firing" else "resolved", severity="warning",
        window_start=start, window_end=start + timedelta(minutes=1), started_at=start,
        observed=0.2, expected=0.01, score=0.9, threshold=0.35, message="m", next_step="n",
        contributors=contributors,
    )  # fmt: skip


MODEL = _alert("model", {"model": "gpt-4o"})
PAIR = _alert("tenant.model", {"tenant": "acme", "model": "gpt-4o"})
TENANT_VIA_MODEL = _alert("tenant", {"tenant": "acme"}, top={"tenant": "acme", "model": "gpt-4o"})
TENANT_OTHER_CAUSE = _alert("tenant", {"tenant": "beta"}, top={"tenant": "beta", "model": "o3"})


def test_signal_strips_rule_operators_and_grains_sort_fleet_first() -> None:
    assert signal_of(_alert("model", {"model": "x"}, metric="length_share>0.05")) == "length_share"
    assert signal_of(MODEL) == "length_share"
    order = sorted(["tenant.model", "tenant", "feature.prompt_version", "model"], key=grain_rank)
    assert order == ["model", "feature.prompt_version", "tenant", "tenant.model"]


def test_model_alert_holds_back_its_tenant_symptoms_in_any_arrival_order() -> None:
    inh = Inhibitor()
    out = inh.process([PAIR, TENANT_OTHER_CAUSE, TENANT_VIA_MODEL, MODEL])
    assert [a.grain for a in out] == ["model", "tenant"]
    assert out[1].dimensions == {"tenant": "beta"}  # a different cause still pages
    assert inh.inhibited == 2


def test_other_signal_is_not_covered() -> None:
    refusals = _alert("tenant.model", {"tenant": "acme", "model": "gpt-4o"}, metric="refusal_rate")
    assert Inhibitor().process([MODEL, refusals]) == [MODEL, refusals]


def test_rule_and_statistical_alert_on_one_series_page_once() -> None:
    rule = _alert("model", {"model": "gpt-4o"}, metric="length_share>0.05", detector="threshold")
    inh = Inhibitor()
    assert inh.process([MODEL]) == [MODEL]
    assert inh.process([rule]) == []  # next window: the rule confirms the same jump


def test_a_symptom_outliving_its_cause_is_released_after_the_grace_period() -> None:
    inh = Inhibitor(release_after=3)
    inh.process([MODEL, PAIR])
    model_resolved = _alert("model", {"model": "gpt-4o"}, status="resolved", minute=5)
    assert inh.process([model_resolved]) == [model_resolved]
    assert inh.process([]) == [] and inh.process([]) == []
    out = inh.process([])
    assert [(a.grain, a.status) for a in out] == [("tenant.model", "firing")]
    pair_resolved = _alert("tenant.model", {"tenant": "acme", "model": "gpt-4o"},
                           status="resolved", minute=8)  # fmt: skip
    assert inh.process([pair_resolved]) == [pair_resolved]  # released, so its resolve pages too


def test_a_symptom_resolving_within_the_grace_period_is_never_published() -> None:
    inh = Inhibitor(release_after=3)
    inh.process([MODEL, PAIR])
    inh.process([_alert("model", {"model": "gpt-4o"}, status="resolved", minute=5)])
    pair_resolved = _alert("tenant.model", {"tenant": "acme", "model": "gpt-4o"},
                           status="resolved", minute=6)  # fmt: skip
    assert inh.process([pair_resolved]) == []
    assert [inh.process([]) for _ in range(5)] == [[]] * 5


def test_a_held_alert_resolving_while_covered_is_never_published() -> None:
    inh = Inhibitor()
    inh.process([MODEL, PAIR])
    pair_resolved = _alert("tenant.model", {"tenant": "acme", "model": "gpt-4o"},
                           status="resolved", minute=3)  # fmt: skip
    assert inh.process([pair_resolved]) == []
    assert inh.held == {}


def test_release_and_budget_alerts_are_never_covered() -> None:
    release = _alert("feature.prompt_version", {"feature": "f", "prompt_version": "v2"},
                     detector="release_regression", top={"model": "gpt-4o"})  # fmt: skip
    inh = Inhibitor()
    assert inh.process([MODEL, release]) == [MODEL, release]


def test_gate_waits_for_every_grain_and_survives_pickle() -> None:
    gate = WindowGate(grains=3)
    assert gate.add("w0", [PAIR]) == []
    assert gate.add("w0", []) == []
    gate = pickle.loads(pickle.dumps(gate))
    assert gate.add("w0", [MODEL]) == [MODEL]
    assert gate.pending == {} and gate.reported == {}


def test_fleet_alert_holds_tenant_alerts_without_a_breakdown_but_not_other_causes() -> None:
    fleet = _alert("feature.prompt_version", {"feature": "agent", "prompt_version": "v3"},
                   metric="context_fill_p95", detector="drift")  # fmt: skip
    bare = _alert("tenant", {"tenant": "acme"}, metric="context_fill_p95", detector="drift")
    elsewhere = _alert("tenant", {"tenant": "beta"}, metric="context_fill_p95", detector="drift",
                       top={"tenant": "beta", "model": "o3"})  # fmt: skip
    out = Inhibitor().process([bare, elsewhere, fleet])
    assert [a.dimensions for a in out] == [fleet.dimensions, elsewhere.dimensions]


def test_a_feature_contributor_ties_a_tenant_to_the_prompt_version_alert() -> None:
    fleet = _alert("feature.prompt_version", {"feature": "agent", "prompt_version": "v3"},
                   metric="context_fill_p95", detector="drift")  # fmt: skip
    tenant = _alert("tenant", {"tenant": "acme"}, metric="context_fill_p95", detector="drift",
                    top={"tenant": "acme", "feature": "agent"})  # fmt: skip
    other = _alert("tenant", {"tenant": "beta"}, metric="context_fill_p95", detector="drift",
                   top={"tenant": "beta", "feature": "chat"})  # fmt: skip
    assert Inhibitor().process([tenant, other, fleet]) == [fleet, other]


def test_a_finer_alert_never_covers_a_coarser_one() -> None:
    tenant = _alert("tenant", {"tenant": "acme"}, top={"tenant": "acme", "model": "gpt-4o"})
    inh = Inhibitor()
    assert inh.process([PAIR]) == [PAIR]
    assert inh.process([tenant]) == [tenant]


def test_a_tenant_that_is_the_fleet_alerts_top_contributor_is_the_cause_not_a_symptom() -> None:
    fleet = _alert("model", {"model": "o3"}, metric="context_fill_p95", detector="drift",
                   top={"model": "o3", "tenant": "acme"})  # fmt: skip
    cause = _alert("tenant", {"tenant": "acme"}, metric="context_fill_p95", detector="drift")
    symptom = _alert("tenant", {"tenant": "beta"}, metric="context_fill_p95", detector="drift")
    assert Inhibitor().process([cause, symptom, fleet]) == [fleet, cause]


def test_child_baselines_keep_the_busiest_children() -> None:
    from spanpulse.detectors.contributors import ChildBaselines, child_key

    cb = ChildBaselines(max_children=3)
    big = child_key({"tenant": "big"})
    for _ in range(5):
        kids = [(child_key({"tenant": f"t{i}"}), {"calls": 1.0}, 1) for i in range(20)]
        cb.learn([*kids, (big, {"calls": 500.0}, 500)])
    assert len(cb) == 3
    assert cb.baseline(big, "calls") is not None  # least recently inserted, but the busiest

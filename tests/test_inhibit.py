"""Inhibition: a fleet-level alert holds back the per-tenant symptoms of the same incident."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spanpulse.detectors.inhibit import Inhibitor, WindowGate, explains, grain_rank, signal_of
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
    share: float = 0.9,
) -> Alert:
    start = T0 + timedelta(minutes=minute)
    contributors = (Contributor(top, 0.2, 0.01, share, 100),) if top else ()
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


def test_a_tenant_alert_whose_change_is_an_open_pair_alert_is_its_symptom() -> None:
    tenant = _alert("tenant", {"tenant": "acme"}, top={"tenant": "acme", "model": "gpt-4o"})
    elsewhere = _alert("tenant", {"tenant": "acme"}, metric="refusal_rate",
                       top={"tenant": "acme", "model": "o3"})  # fmt: skip
    inh = Inhibitor()
    assert inh.process([PAIR]) == [PAIR]
    assert inh.process([tenant, elsewhere]) == [elsewhere]  # 90 % of it is the paged pair


def test_a_tenant_that_is_the_fleet_alerts_top_contributor_is_the_cause_not_a_symptom() -> None:
    fleet = _alert("model", {"model": "o3"}, metric="context_fill_p95", detector="drift",
                   top={"model": "o3", "tenant": "acme"})  # fmt: skip
    cause = _alert("tenant", {"tenant": "acme"}, metric="context_fill_p95", detector="drift")
    other = _alert("tenant", {"tenant": "beta"}, metric="context_fill_p95", detector="drift")
    inh = Inhibitor()
    # o3's change is acme's: acme pages, o3 is held as its symptom, and beta -- which nothing
    # published explains -- pages too.
    assert inh.process([cause, other, fleet]) == [cause, other]
    assert inh.held[fleet.fingerprint][0] == cause.fingerprint


def test_a_small_top_contributor_does_not_make_a_tenant_the_cause() -> None:
    fleet = _alert("model", {"model": "o3"}, metric="parse_failure_rate",
                   top={"model": "o3", "tenant": "acme"}, share=0.13)  # fmt: skip
    bare = _alert("tenant", {"tenant": "acme"}, metric="parse_failure_rate")
    assert Inhibitor().process([bare, fleet]) == [fleet]


# ---------------------------------------------------------------- related signals
def test_related_signals_of_one_incident_are_one_page_and_the_relation_is_directed() -> None:
    model = _alert("model", {"model": "claude"})  # length_share
    latency = _alert("model", {"model": "claude"}, metric="latency_p95", detector="level_shift")
    tenant = _alert("tenant", {"tenant": "t5"}, metric="output_tokens_p95", detector="level_shift",
                    top={"tenant": "t5", "model": "claude"})  # fmt: skip
    bare = _alert("tenant", {"tenant": "t6"}, metric="output_tokens_p95", detector="level_shift")
    inh = Inhibitor()
    assert inh.process([tenant, latency, bare, model]) == [model]  # cause first, then symptoms
    inh = Inhibitor()
    assert inh.process([latency]) == [latency]
    assert inh.process([model]) == [model]  # slower calls do not explain length stops


def test_explains_table() -> None:
    assert explains("length_share", "parse_failure_rate")
    assert explains("input_tokens_per_call", "context_fill_p95")
    assert explains("context_fill_p95", "input_tokens_p95")
    assert not explains("latency_p95", "length_share")
    assert not explains("error_rate", "refusal_rate")


def test_a_tenant_whose_only_abnormal_slice_is_a_symptom_is_held() -> None:
    model = _alert("model", {"model": "claude"})
    pair = _alert("tenant.model", {"tenant": "t38", "model": "claude"})
    noisy = {"tenant": "t38", "model": "mini"}  # the top contributor, but no alert of its own
    tenant = _alert("tenant", {"tenant": "t38"}, top=noisy, share=0.55)
    inh = Inhibitor()
    assert inh.process([model]) == [model]
    assert inh.process([pair]) == []
    assert inh.process([tenant]) == []
    assert inh.held[tenant.fingerprint][0] == model.fingerprint
    # when its other slice pages on its own, the tenant alert is that slice's symptom instead
    inh = Inhibitor()
    mini = _alert("tenant.model", noisy)  # another model's slice: claude's alert does not hold it
    assert inh.process([model, pair, mini]) == [model, mini]
    assert inh.process([tenant]) == []
    assert inh.held[tenant.fingerprint][0] == mini.fingerprint


# ---------------------------------------------------------------- a finer cause
def _creep(grain: str, dims: dict[str, str], minute: int, top: dict[str, str] | None = None,
           metric: str = "context_fill_p95", status: str = "firing") -> Alert:  # fmt: skip
    return _alert(grain, dims, metric=metric, detector="drift", minute=minute, top=top,
                  status=status)  # fmt: skip


def test_a_model_alert_blaming_one_tenant_waits_for_the_tenant_and_is_its_symptom() -> None:
    model = _creep("model", {"model": "gemini"}, 0, top={"model": "gemini", "tenant": "t3"})
    tenant = _creep("tenant", {"tenant": "t3"}, 2, metric="input_tokens_per_call",
                    top={"tenant": "t3", "feature": "search"})  # fmt: skip
    inh = Inhibitor(defer_windows=3)
    assert inh.process([model]) == []
    assert inh.process([]) == []
    assert inh.process([tenant]) == [tenant]
    assert inh.held[model.fingerprint][0] == tenant.fingerprint
    assert inh.process([_creep("model", {"model": "gemini"}, 3, status="resolved")]) == []


def test_a_deferred_alert_without_a_finer_cause_is_published_late_and_stamped_so() -> None:
    model = _creep("model", {"model": "gemini"}, 0, top={"model": "gemini", "tenant": "t3"})
    inh = Inhibitor(defer_windows=2)
    assert [inh.process([], T0 + timedelta(minutes=m)) for m in (0, 1)] == [[], []]
    assert inh.process([model], T0) == []
    assert inh.process([], T0 + timedelta(minutes=1)) == []
    (out,) = inh.process([], T0 + timedelta(minutes=2))
    assert out.fingerprint == model.fingerprint
    assert out.window_start == T0 + timedelta(minutes=2)  # when a subscriber learns of it
    assert out.started_at == T0 and out.id != model.id


def test_a_deferred_alert_that_resolves_while_waiting_is_never_hidden() -> None:
    model = _creep("model", {"model": "gemini"}, 0, top={"model": "gemini", "tenant": "t3"})
    resolved = _creep("model", {"model": "gemini"}, 1, status="resolved")
    inh = Inhibitor(defer_windows=5)
    assert inh.process([model]) == []
    out = inh.process([resolved])
    assert [(a.fingerprint, a.status) for a in out] == [
        (model.fingerprint, "firing"),
        (model.fingerprint, "resolved"),
    ]
    assert inh.open == {} and inh.deferred == {}


def test_a_held_tenant_that_a_model_alert_blames_is_promoted_to_a_page() -> None:
    stale = _creep("feature.prompt_version", {"feature": "search", "prompt_version": "v5"}, 0,
                   metric="input_tokens_per_call")  # fmt: skip
    tenant = _creep("tenant", {"tenant": "t3"}, 1, metric="input_tokens_per_call",
                    top={"tenant": "t3", "feature": "search"})  # fmt: skip
    model = _creep("model", {"model": "mini"}, 3, top={"model": "mini", "tenant": "t3"})
    inh = Inhibitor()
    assert inh.process([stale]) == [stale]
    assert inh.process([tenant]) == []  # its breakdown points at the open search alert
    assert [a.fingerprint for a in inh.process([model])] == [tenant.fingerprint]
    assert inh.held[model.fingerprint][0] == tenant.fingerprint


def test_mutual_blame_makes_the_tenant_the_cause() -> None:
    model = _creep("model", {"model": "mini"}, 0, top={"model": "mini", "tenant": "t3"})
    tenant = _creep("tenant", {"tenant": "t3"}, 0, top={"tenant": "t3", "model": "mini"})
    inh = Inhibitor()
    assert inh.process([tenant, model]) == [tenant]
    assert inh.held[model.fingerprint][0] == tenant.fingerprint


def test_a_symptom_of_a_symptom_is_held_by_the_cause() -> None:
    tenant = _creep("tenant", {"tenant": "t3"}, 0)
    model = _creep("model", {"model": "mini"}, 1, top={"model": "mini", "tenant": "t3"})
    feature = _creep("feature.prompt_version", {"feature": "extract", "prompt_version": "v3"}, 2,
                     top={"feature": "extract", "prompt_version": "v3", "model": "mini"})  # fmt: skip
    inh = Inhibitor()
    assert inh.process([tenant]) == [tenant]
    assert inh.process([model]) == []
    assert inh.process([feature]) == []
    assert inh.held[feature.fingerprint][0] == tenant.fingerprint


def test_release_regressions_are_never_deferred() -> None:
    release = _alert("feature.prompt_version", {"feature": "f", "prompt_version": "v2"},
                     detector="release_regression",
                     top={"feature": "f", "prompt_version": "v2", "tenant": "t3"})  # fmt: skip
    assert Inhibitor().process([release]) == [release]


def test_a_symptom_is_released_only_after_every_explaining_alert_resolved() -> None:
    level = _alert("model", {"model": "o3"}, metric="input_tokens_p95", detector="level_shift")
    other = _creep("model", {"model": "x"}, 1, metric="input_tokens_per_call")
    bare = _creep("tenant", {"tenant": "t9"}, 0)  # no breakdown: rule 4, prompt-size family
    inh = Inhibitor(release_after=3, release_after_drift=3)
    assert inh.process([level]) == [level]
    assert inh.process([bare]) == []
    assert inh.process([other]) == [other]
    lvl_resolved = _alert("model", {"model": "o3"}, metric="input_tokens_p95",
                          detector="level_shift", status="resolved", minute=3)  # fmt: skip
    assert inh.process([lvl_resolved]) == [lvl_resolved]
    assert [inh.process([]) for _ in range(5)] == [[]] * 5  # x still explains it: held
    oth_resolved = _creep("model", {"model": "x"}, 9, metric="input_tokens_per_call",
                          status="resolved")  # fmt: skip
    assert inh.process([oth_resolved]) == [oth_resolved]
    assert inh.process([]) == [] and inh.process([]) == []
    (out,) = inh.process([])
    assert out.fingerprint == bare.fingerprint


def test_old_inhibitor_state_is_upgraded_on_unpickling() -> None:
    inh = Inhibitor()
    inh.process([MODEL])
    for name in ("deferred", "recent", "now", "_window"):
        del inh.__dict__[name]
    restored = pickle.loads(pickle.dumps(inh))
    assert restored.deferred == {} and restored.recent == {}
    assert restored.process([PAIR]) == []


def test_child_baselines_keep_the_busiest_children() -> None:
    from spanpulse.detectors.contributors import ChildBaselines, child_key

    cb = ChildBaselines(max_children=3)
    big = child_key({"tenant": "big"})
    for _ in range(5):
        kids = [(child_key({"tenant": f"t{i}"}), {"calls": 1.0}, 1) for i in range(20)]
        cb.learn([*kids, (big, {"calls": 500.0}, 500)])
    assert len(cb) == 3
    assert cb.baseline(big, "calls") is not None  # least recently inserted, but the busiest


def test_percentile_contributors_rank_small_children_by_their_per_call_mean() -> None:
    from spanpulse.detectors.contributors import ChildBaselines, child_key

    cb = ChildBaselines()
    claude, mini = (
        child_key({"tenant": "t5", "model": "claude"}),
        child_key({"tenant": "t5", "model": "mini"}),
    )
    for _ in range(30):  # calm: 20 calls each, too few for a p95 of their own
        cb.learn([(claude, {"output_tokens_per_call": 300.0}, 20),
                  (mini, {"output_tokens_per_call": 200.0}, 20)])  # fmt: skip
    kids = [(claude, {"output_tokens_per_call": 900.0}, 20),
            (mini, {"output_tokens_per_call": 210.0}, 20)]  # fmt: skip
    (top, second) = cb.explain("output_tokens_p95", False, [kids], None, 5)
    assert top.dimensions == {"tenant": "t5", "model": "claude"}
    assert top.share is not None and top.share > 0.95
    assert top.observed is None and top.expected is None  # no p95 of its own: not made up
    assert second.dimensions["model"] == "mini"


def test_contributors_sum_a_childs_excess_over_the_alerts_recent_windows() -> None:
    # An outage on haiku raises a tenant's error rate for three windows; the window that tips
    # the test over holds one error on o3. The contributor is haiku, not o3.
    from spanpulse.detectors.contributors import ChildBaselines, child_key

    cb = ChildBaselines()
    haiku, o3 = (
        child_key({"tenant": "t", "model": "haiku"}),
        child_key({"tenant": "t", "model": "o3"}),
    )
    for _ in range(30):
        cb.learn([(haiku, {"error_rate": (0.0, 15.0)}, 15), (o3, {"error_rate": (0.0, 10.0)}, 10)])
    windows = [
        [(haiku, {"error_rate": (3.0, 15.0)}, 15), (o3, {"error_rate": (0.0, 10.0)}, 10)],
        [(haiku, {"error_rate": (5.0, 15.0)}, 15), (o3, {"error_rate": (0.0, 10.0)}, 10)],
        [(haiku, {"error_rate": (0.0, 15.0)}, 15), (o3, {"error_rate": (1.0, 10.0)}, 10)],
    ]
    (last_only,) = cb.explain("error_rate", False, windows[-1:], 0.0, 3)
    assert last_only.dimensions["model"] == "o3"  # what one window says
    top = cb.explain("error_rate", False, windows, 0.0, 3)[0]
    assert top.dimensions["model"] == "haiku"
    assert top.share == pytest.approx(8 / 9)
    assert top.observed == 0.0  # the child's latest window, as reported


def test_cost_per_call_is_a_symptom_of_prompt_and_output_size_not_their_cause() -> None:
    for cause in ("input_tokens_p95", "input_tokens_per_call", "context_fill_p95",
                  "output_tokens_p95", "length_share"):  # fmt: skip
        assert explains(cause, "cost_per_call")
        assert not explains("cost_per_call", cause)


def test_drift_contributors_name_the_child_that_crept_not_the_last_windows_noise() -> None:
    # A tenant's agent prompts doubled for 20 windows and are back to normal for 3; the tenant's
    # drift alarm fires only now. The last windows show a little noise on extract; the short
    # levels still name agent.
    from spanpulse.detectors.contributors import ChildBaselines, child_key

    cb = ChildBaselines()
    agent, extract = (
        child_key({"tenant": "t", "feature": "agent"}),
        child_key({"tenant": "t", "feature": "extract"}),
    )
    names = frozenset({"input_tokens_per_call"})

    def window(a: float, e: float) -> list[tuple[Any, dict[str, Any], int]]:
        return [
            (agent, {"input_tokens_per_call": a}, 20),
            (extract, {"input_tokens_per_call": e}, 10),
        ]

    for _ in range(60):
        cb.learn(window(10_000.0, 3_000.0))
        cb.track(window(10_000.0, 3_000.0), names, 10.0)
    for _ in range(20):
        cb.track(window(20_000.0, 3_000.0), names, 10.0)
    last = [window(10_000.0, 3_300.0) for _ in range(3)]
    for w in last:
        cb.track(w, names, 10.0)
    assert cb.explain("input_tokens_per_call", False, last, None, 3)[0].dimensions == dict(extract)
    top = cb.explain_levels("input_tokens_per_call", 3)[0]
    assert top.dimensions == {"tenant": "t", "feature": "agent"}
    assert top.share is not None and top.share > 0.9
    assert top.expected == pytest.approx(10_000.0)
    assert top.observed is not None and 10_000.0 < top.observed < 20_000.0
    assert top.calls == 20


def test_child_levels_survive_a_pickle_of_an_older_version() -> None:
    from spanpulse.detectors.contributors import ChildBaselines

    cb = ChildBaselines()
    state = dict(cb.__dict__)
    del state["_levels"]  # pickled before the field existed
    old = ChildBaselines.__new__(ChildBaselines)
    old.__setstate__(state)
    assert old.explain_levels("input_tokens_per_call", 3) == []


def test_a_drift_symptom_gets_longer_to_wind_down_than_other_symptoms() -> None:
    cause = _alert("feature", {"feature": "agent"}, metric="input_tokens_per_call",
                   detector="drift")  # fmt: skip
    drift = _alert("tenant", {"tenant": "acme"}, metric="input_tokens_per_call", detector="drift",
                   top={"tenant": "acme", "feature": "agent"}, minute=1)  # fmt: skip
    level = _alert("tenant", {"tenant": "acme"}, metric="input_tokens_p95", detector="level_shift",
                   top={"tenant": "acme", "feature": "agent"}, minute=1)  # fmt: skip
    inh = Inhibitor(release_after=3, release_after_drift=6)
    assert inh.process([cause]) == [cause]
    assert inh.process([drift, level]) == []  # both blame the open feature alert
    inh.process([_alert("feature", {"feature": "agent"}, metric="input_tokens_per_call",
                        detector="drift", status="resolved", minute=2)])  # fmt: skip
    released = [(a.detector, a.metric) for _ in range(8) for a in inh.process([])]
    assert released == [("level_shift", "input_tokens_p95")]  # after 3 windows
    assert inh.held[drift.fingerprint][0] == level.fingerprint  # same series: one page (rule 1)
    inh2 = Inhibitor(release_after=3, release_after_drift=6)
    inh2.process([cause])
    inh2.process([drift])
    inh2.process([_alert("feature", {"feature": "agent"}, metric="input_tokens_per_call",
                         detector="drift", status="resolved", minute=2)])  # fmt: skip
    assert [inh2.process([]) for _ in range(4)] == [[]] * 4  # past release_after: still held
    drift_resolved = _alert("tenant", {"tenant": "acme"}, metric="input_tokens_per_call",
                            detector="drift", status="resolved", minute=7)  # fmt: skip
    assert inh2.process([drift_resolved]) == []  # wound down within its grace: never paged

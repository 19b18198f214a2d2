"""Alert lifecycle: for N windows, hysteresis, resolve, cooldown, quiet windows (table-driven)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from spanpulse.detectors.policy import AlertPolicy, PolicyParams

T0 = datetime(2025, 1, 1, tzinfo=UTC)
W = timedelta(minutes=1)

# Each step: "T" trigger+persist, "P" persist only, "-" neither, "q" quiet (no data).
CASES = [
    ("fires at once", PolicyParams(1, 2, 0), "T", [("fire", 0)]),
    ("for: 3 needs three windows", PolicyParams(3, 2, 0), "TPP", [("fire", 2)]),
    ("for: 3 broken streak", PolicyParams(3, 2, 0), "TP-TPP", [("fire", 5)]),
    ("quiet breaks a pending streak", PolicyParams(2, 2, 0), "TqTP", [("fire", 3)]),
    ("hysteresis keeps it open", PolicyParams(1, 2, 0), "TPPPP--", [("fire", 0), ("resolve", 6)]),
    ("resolve needs consecutive clears", PolicyParams(1, 2, 0), "T-P--",
     [("fire", 0), ("resolve", 4)]),
    ("quiet windows count as clear", PolicyParams(1, 2, 0), "Tqq", [("fire", 0), ("resolve", 2)]),
    ("cooldown blocks re-firing", PolicyParams(1, 1, 3), "T-TTTT",
     [("fire", 0), ("resolve", 1), ("fire", 5)]),
    ("persist alone never opens", PolicyParams(1, 1, 0), "PPPP", []),
]  # fmt: skip


@pytest.mark.parametrize(("name", "params", "steps", "expected"), CASES, ids=[c[0] for c in CASES])
def test_lifecycle(
    name: str, params: PolicyParams, steps: str, expected: list[tuple[str, int]]
) -> None:
    pol = AlertPolicy(params)
    seen = []
    for i, s in enumerate(steps):
        start, end = T0 + i * W, T0 + (i + 1) * W
        if s == "q":
            tr = pol.quiet(start, end)
        else:
            tr = pol.step(start, end, trigger=s == "T", persist=s in "TP")
        if tr:
            seen.append((tr, i))
    assert seen == expected


def test_episode_times_cover_the_anomalous_windows() -> None:
    pol = AlertPolicy(PolicyParams(2, 2, 0))
    steps = "TTPP--"
    for i, s in enumerate(steps):
        pol.step(T0 + i * W, T0 + (i + 1) * W, s == "T", s in "TP")
    assert pol.started_at == T0  # the first triggering window, before for: N confirmed it
    assert pol.ended_at == T0 + 4 * W  # end of the last window that still persisted
    assert not pol.firing and not pol.busy


@pytest.mark.parametrize("kwargs", [{"fire_after": 0}, {"resolve_after": 0}, {"cooldown": -1}])
def test_invalid_params_are_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="PolicyParams"):
        PolicyParams(**kwargs)

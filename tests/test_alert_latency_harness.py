"""The latency harness's split of alert latency into its own release and the job's share.

``bench/throughput.py --mode latency`` reports arrival - (window end + allowed lateness).  Part
of that is the harness's own release cadence (calls leave every 0.5 s once they have ended);
these tests pin down how that part is measured: which message carries which end times, and
when every partition had been sent the input that closes a window.
"""

from __future__ import annotations

import sys

import polars as pl
import pytest

from spanpulse.bench import throughput as tp
from spanpulse.schemas.traffic import TrafficModel

floor = sys.modules["floor"]  # bench/peers/floor.py, imported by the harness

START_MS = 1_790_000_000_000


def _calls(n: int) -> pl.DataFrame:
    df = TrafficModel(seed=3, tenants=20, rate_per_s=50.0).calls(START_MS, 60.0)
    return df.sort("end_time_ms").head(n)


@pytest.mark.parametrize("n", [1, 199, 200, 201, 450])
def test_message_max_ends_match_the_encoded_messages(n: int) -> None:
    df = _calls(n)
    messages = tp.encode(df, "otlp_proto")
    ends = tp.message_max_ends(df)
    assert len(ends) == len(messages)
    decoded = [max(c.end_ms for c in floor.calls_from_proto(m)) for m in messages]
    assert ends == decoded


def test_message_max_ends_do_not_need_sorted_input() -> None:
    df = _calls(450).reverse()
    ends = tp.message_max_ends(df)
    decoded = [
        max(c.end_ms for c in floor.calls_from_proto(m)) for m in tp.encode(df, "otlp_proto")
    ]
    assert ends == decoded


REL = {
    0: [(10.0, 1_000), (10.5, 2_000), (11.0, 3_000)],
    1: [(10.1, 1_500), (10.6, 2_500)],
    2: [(10.2, 2_100), (10.7, 2_200)],
    3: [(10.3, 900), (10.8, 2_050), (11.3, 4_000)],
}


@pytest.mark.parametrize(
    ("need_ms", "expected"),
    [
        (900, 10.3),  # every partition's first message already passes it: the last of those
        (2_000, 10.8),  # partition 3 passes it only with its second message
        (2_100, 11.3),  # partitions 0 and 3 need their third message; 3 is later
        (3_500, None),  # partitions 1 and 2 never pass it
    ],
)
def test_released_at_is_the_last_partition_to_pass(need_ms: int, expected: float | None) -> None:
    assert tp.released_at(REL, need_ms) == expected


def test_released_at_needs_every_partition() -> None:
    three = {p: REL[p] for p in (0, 1, 2)}
    assert tp.released_at(three, 900) is None


def _res(alerts: list[dict[str, object]]) -> dict[str, object]:
    return {"alerts": alerts, "allowed_lateness_s": 30.0}


def test_split_lines_report_release_and_job_share() -> None:
    end = "2026-11-24T09:14:00Z"
    end_s = 1_795_511_640.0
    alerts = [
        {"arrival": end_s + 32.8, "alert": {"window_end": end}, "input_released": end_s + 30.25},
        {"arrival": end_s + 32.9, "alert": {"window_end": end}, "input_released": end_s + 30.25},
        {"arrival": end_s + 33.0, "alert": {"window_end": end}, "input_released": None},
    ]
    (line,) = tp._split_lines(_res(alerts))
    assert "release" in line
    assert "median 0.25 s" in line  # the harness's share
    assert "median 2.60 s, max 2.65 s" in line  # arrival - release, alerts with a release only


def test_split_lines_absent_for_results_saved_before_the_split() -> None:
    alerts = [{"arrival": 100.0, "alert": {"window_end": 60_000}}]
    assert tp._split_lines(_res(alerts)) == []

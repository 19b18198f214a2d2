"""kill -9 the job while late rows flow; on-time and late rollups must equal an uninterrupted run's.

Out-of-order traffic (a tenth of the messages held back by three minutes of traffic) makes late
rows throughout the stream, and every restart reads batches of another size, so a replay cuts
the stream differently from the run it repeats: late decisions, late groups and the files they
are written to must not depend on either.
"""

from __future__ import annotations

import pytest

from drills.crash_drill import drill

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_kill_9_while_late_rows_flow_gives_identical_rollups(broker, tmp_path):
    res = drill(
        broker.bootstrap, tmp_path, kills=3, seed=11, minutes=20, rate=12.0,
        kill_after=(0.25, 0.5), late_share=0.1, late_by_s=180.0, batch_sizes=(25, 7, 40, 13),
    )  # fmt: skip
    assert res.kills == 3, f"the stream ended before 3 kills: {res}"
    assert 0 < res.final_run_messages < res.total_messages, res  # the last run resumed
    assert res.baseline_late_rows > res.baseline_rows // 10, res  # late rows really flowed
    # Every row, on time and late, equal (totals per grain, dimensions and window included),
    # in files of the same names: nothing counted twice, nothing moved between the two.
    assert res.identical, res.differences
    assert res.same_files, res.differences
    assert res.drilled_late_rows == res.baseline_late_rows
    assert res.same_alert_ids, res.differences

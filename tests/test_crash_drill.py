"""kill -9 the job several times mid-stream; the rollups must equal an uninterrupted run's."""

from __future__ import annotations

import pytest

from drills.crash_drill import drill

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_kill_9_and_restart_gives_identical_rollups(broker, tmp_path):
    res = drill(broker.bootstrap, tmp_path, kills=3, seed=7, minutes=30, rate=12.0)
    assert res.kills == 3, f"the stream ended before 3 kills: {res}"
    assert res.baseline_rows > 0
    # The last run must have resumed from the recovery store, not re-read everything.
    assert 0 < res.final_run_messages < res.total_messages, res
    # The same alerts (by id) as the uninterrupted run: none missing, none extra.
    assert res.baseline_alert_ids > 0, res
    assert res.same_alert_ids, res.differences
    assert res.identical, res.differences

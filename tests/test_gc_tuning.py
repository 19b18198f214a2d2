"""The job's collector thresholds (flows/gc_tuning.py)."""

from __future__ import annotations

import gc

from spanpulse.flows.gc_tuning import JOB_GC_THRESHOLDS, tune_gc


def test_tune_gc_sets_the_job_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc()
        assert gc.get_threshold() == JOB_GC_THRESHOLDS
        assert JOB_GC_THRESHOLDS[0] > 700  # young collections less often than the default
    finally:
        gc.set_threshold(*before)

"""Garbage-collector thresholds for the stream job's process.

Why: the job keeps hundreds of thousands of small, long-lived Python objects (one detector per
series, each with its baselines and contributor children) and allocates millions of short-lived
ones per window (rollup rows turned into dicts, signals, assessments).  CPython's default
thresholds (700, 10, 10) run a young collection every 700 net allocations, and the survivors --
the detector state -- are traversed again and again on their way to the oldest generation.
Measured on the detection step alone (150 windows of 500 tenants, session 10): 11-25 % of its
CPU was the collector.  The job creates few reference cycles (data lives in Arrow buffers and
acyclic dicts and tuples), so collecting young objects every 50,000 allocations instead costs
little memory.  Applied by the job's entry points (``spanpulse run``/``demo``/``evaluate`` and
``flows.job.get_flow``), never on import.
"""

from __future__ import annotations

import gc
from typing import Final

#: (generation 0, 1, 2) thresholds: see the module docstring.
JOB_GC_THRESHOLDS: Final = (50_000, 20, 100)


def tune_gc() -> None:
    """Set the job's collector thresholds (idempotent)."""
    gc.set_threshold(*JOB_GC_THRESHOLDS)

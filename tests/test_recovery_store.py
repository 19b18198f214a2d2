"""Pruning snapshots a killed execution wrote past its recorded progress (sinks/recovery_store).

The flow-level test replays the crash drill's failure deterministically: an execution writes
snapshots of epochs its progress never records (a kill between the two writes, forged here by
lowering the progress row), the next execution cuts its input into other epochs, and the one
after it resumes.  Without pruning the last one loads a dead execution's state.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import AbortExecution, FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main

from spanpulse.sinks.recovery_store import prune_uncommitted, resume_epoch

ITEMS = [1, 2, 4, 8, 16, 32, 64, 128]  # powers of two: a sum shows exactly what was counted


class _Part(StatefulSourcePartition[int, int]):
    def __init__(self, batch_size: int, abort_at: int | None, start: int) -> None:
        self.batch_size, self.abort_at, self.idx = batch_size, abort_at, start
        self.idle = 0

    def next_batch(self) -> list[int]:
        if self.abort_at is not None and self.idx >= self.abort_at:
            self.idle += 1  # one empty epoch first, so the execution records its progress
            if self.idle > 2:
                raise AbortExecution
            return []
        if self.idx >= len(ITEMS):
            raise StopIteration
        stop = len(ITEMS) if self.abort_at is None else self.abort_at
        batch = ITEMS[self.idx : min(self.idx + self.batch_size, stop)]
        self.idx += len(batch)
        return batch

    def snapshot(self) -> int:
        return self.idx


@dataclass
class _Source(FixedPartitionedSource[int, int]):
    """Reads ITEMS in batches of ``batch_size``; aborts the execution on reaching ``abort_at``."""

    batch_size: int
    abort_at: int | None = None

    def list_parts(self) -> list[str]:
        return ["only"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        return _Part(self.batch_size, self.abort_at, resume_state or 0)


def _run(db: Path, source: _Source) -> list[int]:
    flow = Dataflow("prune")
    keyed = op.key_on("key", op.input("in", flow, source), lambda _x: "k")
    sums = op.stateful_map("sum", keyed, lambda s, x: ((s or 0) + x, (s or 0) + x))
    out: list[tuple[str, int]] = []
    op.output("out", sums, TestingSink(out))
    # A day of backup interval: Bytewax keeps every snapshot, so only pruning removes any.
    run_main(
        flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(db, timedelta(days=1))
    )
    return [v for _k, v in out]


def _three_executions(db: Path, *, prune: bool) -> list[int]:
    """Run, forge a kill before the progress write, re-run with other cuts, resume once more."""
    init_db_dir(db, 1)
    assert _run(db, _Source(1, abort_at=3)) == [1, 3, 7]  # epochs 1, 2, 3 hold one item each
    with closing(sqlite3.connect(db / "part-0.sqlite3")) as con, con:
        con.execute("UPDATE fronts SET worker_frontier = 2")  # only epoch 1 was recorded
    if prune:
        prune_uncommitted(db)
    _run(db, _Source(3, abort_at=4))  # resumes after item 1; epoch 2 now holds 2, 4 and 8
    if prune:
        prune_uncommitted(db)
    return _run(db, _Source(1))


def test_a_resume_after_pruning_loads_only_the_live_execution_state(tmp_path):
    out = _three_executions(tmp_path, prune=True)
    assert out[-1] == sum(ITEMS)
    assert out[0] == 1 + 2 + 4 + 8 + 16  # resumed after 8, from the sum 15 of its own epoch 2


def test_without_pruning_bytewax_loads_a_dead_execution_state(tmp_path):
    """Why the pruning exists (pinned Bytewax 0.21.1): if this starts failing, Bytewax fixed it."""
    out = _three_executions(tmp_path, prune=False)
    # The first execution's sum after epoch 3 (1 + 2 + 4) with the second's offsets (after 8):
    # item 8 is lost here; with other cuts the same mechanism counts input twice.
    assert out[0] == 7 + 16
    assert out[-1] == sum(ITEMS) - 8


def _store(path: Path, exs: list[tuple[int, int, int]], fronts: list[tuple[int, int, int]],
           snaps: list[int]) -> Path:  # fmt: skip
    path.mkdir(exist_ok=True)
    init_db_dir(path, 1)
    db = path / "part-0.sqlite3"
    with closing(sqlite3.connect(db)) as con, con:
        con.executemany(
            "INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (?, ?, ?)", exs
        )
        con.executemany(
            "INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (?, ?, ?)", fronts
        )
        con.executemany(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES ('s', 'k', ?, NULL)",
            [(e,) for e in snaps],
        )
    return db


def _epochs(db: Path) -> list[int]:
    with closing(sqlite3.connect(db)) as con:
        return [e for (e,) in con.execute("SELECT snap_epoch FROM snaps ORDER BY snap_epoch")]


def test_resume_epoch_is_the_slowest_worker_of_the_last_execution(tmp_path):
    db = _store(tmp_path, [(0, 2, 1), (1, 2, 5)], [(0, 0, 9), (1, 0, 8), (1, 1, 6)], [])
    assert resume_epoch([db]) == 6
    db2 = _store(tmp_path / "b", [(0, 2, 1), (1, 2, 5)], [(1, 0, 8)], [])
    assert resume_epoch([db2]) == 5  # worker 1 recorded nothing: its resume epoch counts


def test_prune_deletes_exactly_the_snapshots_at_or_after_the_resume_epoch(tmp_path):
    db = _store(tmp_path, [(0, 1, 1)], [(0, 0, 4)], [1, 2, 3, 4, 5, 9])
    assert prune_uncommitted(tmp_path) == 3
    assert _epochs(db) == [1, 2, 3]
    assert prune_uncommitted(tmp_path) == 0  # idempotent


def test_prune_reads_progress_from_every_partition(tmp_path):
    init_db_dir(tmp_path, 2)
    a, b = tmp_path / "part-0.sqlite3", tmp_path / "part-1.sqlite3"
    with closing(sqlite3.connect(a)) as con, con:
        con.execute("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (0, 2, 1)")
        con.execute("INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (0, 0, 7)")
        con.execute("INSERT INTO snaps (step_id, state_key, snap_epoch) VALUES ('s', 'k', 6)")
    with closing(sqlite3.connect(b)) as con, con:
        con.execute("INSERT INTO fronts (ex_num, worker_index, worker_frontier) VALUES (0, 1, 4)")
        con.execute("INSERT INTO snaps (step_id, state_key, snap_epoch) VALUES ('s', 'j', 3)")
        con.execute("INSERT INTO snaps (step_id, state_key, snap_epoch) VALUES ('s', 'j', 4)")
    assert prune_uncommitted(tmp_path) == 2  # resume at 4: worker 1's progress, in the other file
    assert _epochs(a) == [] and _epochs(b) == [3]


def test_a_fresh_or_foreign_directory_is_left_alone(tmp_path):
    assert prune_uncommitted(tmp_path) == 0  # no partitions
    init_db_dir(tmp_path, 1)
    assert prune_uncommitted(tmp_path) == 0  # never executed
    other = tmp_path / "other"
    other.mkdir()
    with closing(sqlite3.connect(other / "x.sqlite3")) as con, con:
        con.execute("CREATE TABLE t (a)")
    assert prune_uncommitted(other) == 0


def test_an_unreadable_store_is_a_one_line_error_at_start(tmp_path):
    from spanpulse.cli import UserError, _init_recovery

    (tmp_path / "part-0.sqlite3").write_bytes(b"not a database, " * 64)
    with pytest.raises(UserError, match="cannot read the recovery store"):
        _init_recovery(tmp_path)

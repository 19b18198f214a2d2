"""LateRollupSink and RewindJournal: an epoch's late rows written once, taken back on resume."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from spanpulse.sinks.outputs import JOURNAL_DIR, LateRollupSink, RollupSink
from spanpulse.sinks.parquet import RewindJournal, RollupWriter, rollup_path
from tests.test_parquet_sink import START, make_rows

STEP = "late_rollups_out"
PART = "late-spans-p0"
TAG = PART + "-wm1790000000000"


def _rows(minute: int, grain: str = "tenant") -> pl.DataFrame:
    return make_rows(grain, [("acme",), ("globex",)], start=START + timedelta(minutes=minute))


def _path(root: Path, minute: int, tag: str = TAG, grain: str = "tenant") -> Path:
    return rollup_path(root, grain, START + timedelta(minutes=minute), tag)


def _sink(root: Path, rewind: bool = True) -> LateRollupSink:
    return RollupSink(RollupWriter(root)).late_sink({"spans#0", "spans#1"}, rewind=rewind)


def test_rows_are_written_at_the_end_of_the_epoch_and_the_state_counts_epochs(tmp_path):
    part = _sink(tmp_path).build_part(STEP, PART, None)
    part.write_batch([(TAG, _rows(0))])
    assert not _path(tmp_path, 0).exists()  # buffered until the epoch ends
    assert part.snapshot() == 1
    assert pl.read_parquet(_path(tmp_path, 0))["calls"].to_list() == [1, 2]
    assert part.snapshot() == 1  # an epoch without late rows writes nothing, uses no number
    part.write_batch([(TAG, _rows(1))])
    part.close()  # the end of a bounded run flushes what the last epoch buffered
    assert _path(tmp_path, 1).exists()


def test_resume_deletes_what_epochs_after_the_restored_one_wrote(tmp_path):
    sink = _sink(tmp_path)
    part = sink.build_part(STEP, PART, None)
    part.write_batch([(TAG, _rows(0))])
    committed = part.snapshot()  # the recovery store keeps this state ...
    part.write_batch([(TAG, _rows(1)), (TAG, _rows(2, grain="model"))])
    part.snapshot()  # ... but the process dies before it commits this epoch
    assert _path(tmp_path, 1).exists() and _path(tmp_path, 2, grain="model").exists()

    resumed = sink.build_part(STEP, PART, committed)
    assert _path(tmp_path, 0).exists()
    assert not _path(tmp_path, 1).exists()
    assert not _path(tmp_path, 2, grain="model").exists()
    resumed.write_batch([(TAG, _rows(1))])  # the replay writes the same group again
    assert resumed.snapshot() == committed + 1
    assert _path(tmp_path, 1).exists()
    # Journals of committed epochs are forgotten; only the replayed epoch's remains.
    journals = sorted(p.name for p in (tmp_path / JOURNAL_DIR / PART).glob("*.json"))
    assert journals == [f"{committed:012d}.json"]


def test_resume_without_state_or_without_rewind_deletes_nothing(tmp_path):
    part = _sink(tmp_path).build_part(STEP, PART, None)
    part.write_batch([(TAG, _rows(0))])
    part.snapshot()
    # No restored state: a new recovery store (or none at all); its files are not ours to take.
    _sink(tmp_path).build_part(STEP, PART, None)
    assert _path(tmp_path, 0).exists()
    assert not list((tmp_path / JOURNAL_DIR / PART).glob("*.json"))
    plain = _sink(tmp_path, rewind=False).build_part(STEP, PART, 0)
    plain.write_batch([(TAG, _rows(1))])
    plain.snapshot()
    assert _path(tmp_path, 0).exists() and _path(tmp_path, 1).exists()
    assert not list((tmp_path / JOURNAL_DIR / PART).glob("*.json"))  # nothing to take back


def test_items_for_one_file_in_one_epoch_are_combined(tmp_path):
    part = _sink(tmp_path).build_part(STEP, PART, None)
    part.write_batch([(TAG, _rows(0)), (TAG, _rows(0))])
    part.snapshot()
    assert pl.read_parquet(_path(tmp_path, 0))["calls"].sum() == 6


def test_an_item_spanning_several_windows_is_written_one_file_per_window(tmp_path):
    part = _sink(tmp_path).build_part(STEP, PART, None)
    part.write_batch([(TAG, pl.concat([_rows(0), _rows(1), _rows(3)]))])
    part.snapshot()
    assert [_path(tmp_path, m).exists() for m in range(4)] == [True, True, False, True]
    assert pl.read_parquet(_path(tmp_path, 3))["window_start"].n_unique() == 1


def test_each_input_partition_has_its_own_sink_partition():
    sink = _sink(Path("unused"))
    assert sink.list_parts() == ["late-spans-p0", "late-spans-p1"]
    assert [sink.part_fn(k) for k in sink.list_parts()] == [0, 1]
    assert sink.part_fn("late-other-p9") == sink.part_fn("late-other-p9")  # stable, no hash()


def test_the_journal_keeps_a_bounded_number_of_epochs(tmp_path):
    journal = RewindJournal(tmp_path / "j", tmp_path, keep=3)
    for seq in range(10):
        journal.record(seq, [tmp_path / f"f{seq}.parquet"])
    assert sorted(p.stem for p in (tmp_path / "j").glob("*.json")) == [
        f"{s:012d}" for s in (7, 8, 9)
    ]
    for seq in (8, 9):
        (tmp_path / f"f{seq}.parquet").write_bytes(b"x")
    assert journal.rewind(8) == [tmp_path / "f8.parquet", tmp_path / "f9.parquet"]
    assert not list((tmp_path / "j").glob("*.json"))


@pytest.mark.parametrize("bad", ["../late", "late/x", ""])
def test_unsafe_tags_are_refused_before_anything_is_recorded(tmp_path, bad):
    part = _sink(tmp_path).build_part(STEP, PART, None)
    part.write_batch([(bad, _rows(0))])
    with pytest.raises(ValueError, match="not path-safe"):
        part.snapshot()
    assert not list((tmp_path / JOURNAL_DIR).rglob("*.json"))

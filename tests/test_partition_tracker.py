"""PartitionTracker: per-record late decisions and late groups that ignore batch boundaries."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from spanpulse.schemas.progress import (
    END_OF_TIME_MS,
    ON_TIME,
    LateGroup,
    PartitionTracker,
    late_source,
    late_source_of_tag,
    late_tag,
)

W = 60_000
T0 = 1_790_000_000_000 - (1_790_000_000_000 % W)


def _tracker(lateness_ms: int = 10_000) -> PartitionTracker:
    return PartitionTracker("spans#3", W, lateness_ms, idle_timeout_ms=30_000)


def _feed(
    tracker: PartitionTracker, ends: list[int], cuts: list[int]
) -> tuple[list[int], list[LateGroup], list[int | None]]:
    """Feed ``ends`` in batches cut at ``cuts``, then EOF; return marks, groups, sealed points."""
    marks: list[int] = []
    groups: list[LateGroup] = []
    sealed: list[int | None] = []
    bounds = [0, *sorted(set(cuts)), len(ends)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        batch = np.array(ends[lo:hi], np.int64)
        m = tracker.late_marks(batch)
        marks += m.tolist()
        for g in np.unique(m[m != ON_TIME]):
            tracker.hold_late(int(g), pl.DataFrame({"end": batch[m == g]}))
        report, released = tracker.advance(wall_ms=0, had_data=hi > lo, eof=False)
        groups += released
        sealed.append(report.sealed_upto_ms)
    groups += tracker.advance(wall_ms=0, had_data=False, eof=True)[1]
    return marks, groups, sealed


def _content(groups: list[LateGroup]) -> list[tuple[int, list[int]]]:
    return [(g.sealed_at_ms, pl.concat(g.records)["end"].to_list()) for g in groups]


def test_a_record_behind_the_sealed_point_just_before_it_is_late():
    ends = [T0 + 5 * W, T0 + 2 * W + 1, T0 + 4 * W + 59_000, T0 + 9 * W, T0 + 5 * W]
    marks, groups, _ = _feed(_tracker(), ends, cuts=[])  # one batch: nothing is "before" it
    # 2nd: its window ended at T0+3W <= sealed T0+4W (T0+5W - 10 s, floored).  3rd: same
    # window as the sealed point's right side: on time.  5th: behind T0+8W after the 4th.
    assert marks == [ON_TIME, T0 + 4 * W, ON_TIME, ON_TIME, T0 + 8 * W]
    assert _content(groups) == [(T0 + 4 * W, [T0 + 2 * W + 1]), (T0 + 8 * W, [T0 + 5 * W])]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 20 * W), min_size=1, max_size=80),
    st.lists(st.integers(1, 79), max_size=10),
    st.lists(st.integers(1, 79), max_size=10),
    st.sampled_from([0, 10_000, 90_000]),
)
def test_batch_boundaries_change_neither_decisions_nor_late_groups(offsets, cuts_a, cuts_b, lat):
    ends = [T0 + o for o in offsets]
    cuts_a = [c for c in cuts_a if c < len(ends)]
    cuts_b = [c for c in cuts_b if c < len(ends)]
    marks_a, groups_a, _ = _feed(_tracker(lat), ends, cuts_a)
    marks_b, groups_b, _ = _feed(_tracker(lat), ends, cuts_b)
    assert marks_a == marks_b
    assert _content(groups_a) == _content(groups_b)
    assert sum(len(v) for _g, v in _content(groups_a)) == sum(m != ON_TIME for m in marks_a)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 20 * W), min_size=1, max_size=60),
    st.lists(st.integers(1, 59), max_size=8),
)
def test_an_on_time_record_never_lands_in_a_window_the_partition_has_sealed(offsets, cuts):
    # The closer closes a window once every partition reported a sealed point past its end;
    # an on-time record sent after that would be lost, so it must be late instead.
    ends = [T0 + o for o in offsets]
    cuts = sorted({c for c in cuts if c < len(ends)})
    marks, _, sealed = _feed(_tracker(), ends, cuts)
    bounds = [0, *cuts, len(ends)]
    reported: int | None = None
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        for end, mark in zip(ends[lo:hi], marks[lo:hi], strict=True):
            if mark == ON_TIME and reported is not None:
                assert (end // W) * W + W > reported
        reported = sealed[i]


def test_records_of_one_message_are_judged_together_against_earlier_messages():
    # An OTLP message groups spans by resource: a minute of disorder inside one, lateness 0.
    ends = np.array([T0 + 65_000, T0 + 5_000, T0 + 70_000, T0 + 1_000], np.int64)
    per_record = _tracker(0).late_marks(ends)
    assert per_record.tolist() == [ON_TIME, T0 + W, ON_TIME, T0 + W]
    by_message = _tracker(0)
    marks = by_message.late_marks(ends, np.array([7, 7, 8, 8], np.int64))
    assert marks.tolist() == [ON_TIME, ON_TIME, ON_TIME, T0 + W]  # only behind message 7
    assert by_message.max_event_ms == T0 + 70_000


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 10 * W), min_size=1, max_size=6), min_size=1, max_size=20))
def test_message_marks_are_per_record_marks_when_each_message_holds_one_record(msgs):
    ends = np.array([T0 + e for m in msgs for e in m], np.int64)
    singles = np.arange(ends.size, dtype=np.int64)
    assert _tracker().late_marks(ends, singles).tolist() == _tracker().late_marks(ends).tolist()
    offsets = np.repeat(np.arange(len(msgs)), [len(m) for m in msgs]).astype(np.int64)
    grouped, split = _tracker(), _tracker()
    whole = grouped.late_marks(ends, offsets)
    parts = [split.late_marks(ends[offsets == k], offsets[offsets == k]) for k in range(len(msgs))]
    assert whole.tolist() == np.concatenate(parts).tolist()  # batch cuts between messages


def test_a_group_is_released_once_the_sealed_point_has_moved_past_it():
    t = _tracker()
    t.late_marks(np.array([T0 + 5 * W], np.int64))
    t.advance(wall_ms=0, had_data=True, eof=False)
    assert t.sealed_upto_ms == T0 + 4 * W
    m = t.late_marks(np.array([T0 + W], np.int64))
    t.hold_late(int(m[0]), pl.DataFrame({"end": [T0 + W]}))
    # Still T0+4W: a later straggler may join the same group.
    assert t.advance(wall_ms=0, had_data=True, eof=False)[1] == []
    t.late_marks(np.array([T0 + 6 * W], np.int64))
    (group,) = t.advance(wall_ms=0, had_data=True, eof=False)[1]
    assert (group.partition, group.sealed_at_ms) == ("spans#3", T0 + 4 * W)
    assert t.late == {}


def test_an_idle_partition_releases_its_late_rows_too():
    t = _tracker()
    t.late_marks(np.array([T0 + 5 * W], np.int64))
    t.advance(wall_ms=T0 + 5 * W, had_data=True, eof=False)
    t.hold_late(T0 + 4 * W, pl.DataFrame({"end": [T0]}))
    # 30 s of wall time later without data, caught up: idle, the sealed point follows the clock.
    _, released = t.advance(wall_ms=T0 + 7 * W, had_data=False, eof=False)
    assert [g.sealed_at_ms for g in released] == [T0 + 4 * W]


def test_held_records_are_compacted_past_the_bound():
    def compact(records: list[pl.DataFrame], partials: list[pl.DataFrame]) -> pl.DataFrame:
        return pl.concat(records + partials).select(pl.col("end").sum())

    t = _tracker()
    for i in range(1, 6):
        t.hold_late(T0, pl.DataFrame({"end": [i, i]}), compact, max_rows=5)
    held = t.late[T0]
    # 3 frames (6 rows) > 5: pre-aggregated into one partial; frames 4 and 5 wait.
    assert [p["end"].to_list() for p in held.partials] == [[12]]
    assert (held.rows, [r["end"].to_list() for r in held.records]) == (4, [[4, 4], [5, 5]])
    t.sealed_upto_ms = T0 + W
    (group,) = t.advance(wall_ms=0, had_data=False, eof=False)[1]
    assert (len(group.records), len(group.partials)) == (2, 1)


def test_late_tags_name_the_partition_and_the_sealed_point():
    group = LateGroup("my.topic-a#12", T0, ())
    assert late_tag(group) == f"late-my.topic-a-p12-wm{T0}"
    assert late_source_of_tag(late_tag(group)) == late_source("my.topic-a#12")
    assert late_tag(LateGroup("t#0", END_OF_TIME_MS, ())) == f"late-t-p0-wm{END_OF_TIME_MS}"


def test_a_restart_restarts_the_idle_clock():
    """Downtime is not idleness: the idle mark is wall-clock state and is not snapshotted."""
    import copy
    import pickle

    t = _tracker()
    t.late_marks(np.array([T0 + 5 * W], np.int64))
    t.advance(wall_ms=T0 + 5 * W, had_data=True, eof=False)
    sealed = t.sealed_upto_ms
    for restored in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):  # the store; Bytewax's copy
        assert restored.last_data_wall_ms is None
        assert restored.max_event_ms == t.max_event_ms and restored.sealed_upto_ms == sealed
        # An hour later, caught up and silent: the first poll starts the idle clock, it does
        # not find the partition idle, so the backlog that follows stays on time.
        report, _ = restored.advance(wall_ms=T0 + 65 * W, had_data=False, eof=False)
        assert report.sealed_upto_ms == sealed
        report, _ = restored.advance(wall_ms=T0 + 65 * W + 30_000, had_data=False, eof=False)
        assert report.sealed_upto_ms is not None and report.sealed_upto_ms > sealed  # idle now
    assert t.last_data_wall_ms == T0 + 5 * W  # the live tracker keeps its mark

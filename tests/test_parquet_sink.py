"""RollupWriter: deterministic layout, atomic replace, idempotent replays, strict contract."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from spanpulse.schemas.histogram import HIST_DTYPE, bucket_of
from spanpulse.schemas.record import DIMENSIONS
from spanpulse.schemas.rollup_schema import ADDITIVE_COLUMNS, HIST_COLUMNS, ROLLUP_SCHEMA
from spanpulse.sinks.parquet import RollupWriter, rollup_path

START = datetime(2024, 5, 1, 3, 25, tzinfo=UTC)

CONTRACT_COLUMNS = [
    "window_start", "window_end", "grain",
    "tenant", "service", "environment", "feature", "provider", "model", "response_model",
    "operation", "prompt_version", "late",
    "calls", "errors", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens",
    "cost_nanos", "cost_usd", "unpriced_calls",
    "finish_stop", "finish_length", "finish_content_filter", "finish_tool_calls", "finish_error",
    "finish_other", "refusals", "parse_attempts", "parse_failures", "context_fill_over_threshold",
    "latency_ms_sum", "ttft_count",
    "input_tokens_hist", "output_tokens_hist", "latency_s_hist", "ttft_s_hist", "context_fill_hist",
    "exemplar_trace_ids", "overflow_calls",
]  # fmt: skip


def make_rows(
    grain: str, values: list[tuple[str, ...]], *, start: datetime = START, late: bool = False
) -> pl.DataFrame:
    """Rollup rows of one grain and window; counters derived from the position for checking."""
    dims = grain.split(".")
    n = len(values)
    data: dict[str, object] = {
        "window_start": [start] * n,
        "window_end": [start + timedelta(minutes=1)] * n,
        "grain": [grain] * n,
        "late": [late] * n,
    }
    for d in DIMENSIONS:
        data[d] = [v[dims.index(d)] for v in values] if d in dims else [None] * n
    for j, col in enumerate(ADDITIVE_COLUMNS):
        data[col] = [(i + 1) * (j + 1) for i in range(n)]
    data["cost_usd"] = [c / 1e9 for c in data["cost_nanos"]]  # type: ignore[attr-defined]
    for col in HIST_COLUMNS:
        data[col] = [[{"b": bucket_of(10.0 * (i + 1)), "n": i + 1}] for i in range(n)]
    data["exemplar_trace_ids"] = [[f"t{i}"] for i in range(n)]
    return pl.DataFrame(data).select(pl.col(c).cast(t) for c, t in ROLLUP_SCHEMA.items())


def test_schema_is_the_contract() -> None:
    assert list(ROLLUP_SCHEMA) == CONTRACT_COLUMNS
    assert ROLLUP_SCHEMA["window_start"] == pl.Datetime("us", "UTC")
    assert ROLLUP_SCHEMA["input_tokens_hist"] == HIST_DTYPE
    assert ROLLUP_SCHEMA["exemplar_trace_ids"] == pl.List(pl.String())
    assert ROLLUP_SCHEMA["cost_usd"] == pl.Float64()
    assert ROLLUP_SCHEMA["late"] == pl.Boolean()
    ints = [c for c, t in ROLLUP_SCHEMA.items() if t == pl.Int64()]
    assert sorted(ints) == sorted(ADDITIVE_COLUMNS)


def test_layout_one_file_per_grain(tmp_path: Path) -> None:
    rows = pl.concat(
        [make_rows("tenant", [("b",), ("a",)]), make_rows("tenant.model", [("a", "m1")])]
    )
    paths = RollupWriter(tmp_path).write_window(rows)
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert rel == [
        "grain=tenant/date=2024-05-01/hour=03/w20240501T032500Z-final.parquet",
        "grain=tenant.model/date=2024-05-01/hour=03/w20240501T032500Z-final.parquet",
    ]
    back = pl.read_parquet(paths[0])
    assert back.schema == pl.Schema(ROLLUP_SCHEMA)
    assert back["tenant"].to_list() == ["a", "b"]  # sorted by dims, deterministic
    assert pq.read_metadata(paths[0]).row_group(0).column(0).compression == "ZSTD"


def test_replay_overwrites_instead_of_duplicating(tmp_path: Path) -> None:
    writer = RollupWriter(tmp_path)
    first = writer.write_window(make_rows("tenant", [("a",), ("b",)]))
    second = writer.write_window(make_rows("tenant", [("a",), ("b",), ("c",)]))
    assert first == second
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["w20240501T032500Z-final.parquet"]  # no temp file left behind
    assert pl.read_parquet(second[0]).height == 3


def test_late_tag_writes_beside_final(tmp_path: Path) -> None:
    writer = RollupWriter(tmp_path)
    writer.write_window(make_rows("tenant", [("a",)]))
    late = writer.write_window(make_rows("tenant", [("a",)], late=True), tag="late-3-17")
    assert late[0].name == "w20240501T032500Z-late-3-17.parquet"
    assert len(list(tmp_path.rglob("*.parquet"))) == 2
    assert pl.read_parquet(late[0])["late"].to_list() == [True]


def test_bytes_are_deterministic(tmp_path: Path) -> None:
    rows = make_rows("tenant", [("z",), ("a",), ("m",)])
    a = RollupWriter(tmp_path / "a").write_window(rows)[0].read_bytes()
    b = RollupWriter(tmp_path / "b").write_window(rows.reverse())[0].read_bytes()
    assert a == b


def test_empty_frame_writes_nothing(tmp_path: Path) -> None:
    assert RollupWriter(tmp_path).write_window(pl.DataFrame(schema=ROLLUP_SCHEMA)) == []
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("grain", "tag"),
    [("tenant/../x", "final"), ("tenant", "late/1"), ("tenant", ""), ("ten ant", "final"),
     ("tenant", ".."), ("tenant", "late\x00")],
)  # fmt: skip
def test_unsafe_names_are_refused(tmp_path: Path, grain: str, tag: str) -> None:
    rows = make_rows("tenant", [("a",)]).with_columns(pl.lit(grain).alias("grain"))
    with pytest.raises(ValueError, match="path-safe"):
        RollupWriter(tmp_path).write_window(rows, tag=tag)
    assert not list(tmp_path.rglob("*.parquet"))


def test_unknown_and_missing_columns_are_refused(tmp_path: Path) -> None:
    rows = make_rows("tenant", [("a",)])
    with pytest.raises(ValueError, match=r"unknown \['prompt_text'\]"):
        RollupWriter(tmp_path).write_window(rows.with_columns(pl.lit("x").alias("prompt_text")))
    with pytest.raises(ValueError, match=r"missing \['calls'\]"):
        RollupWriter(tmp_path).write_window(rows.drop("calls"))


def test_columns_are_cast_to_the_contract(tmp_path: Path) -> None:
    rows = make_rows("tenant", [("a",)]).with_columns(pl.col("calls").cast(pl.Int32))
    path = RollupWriter(tmp_path).write_window(rows)[0]
    assert pl.read_parquet(path).schema["calls"] == pl.Int64()


def test_several_windows_in_one_call_are_refused(tmp_path: Path) -> None:
    rows = pl.concat(
        [make_rows("tenant", [("a",)]), make_rows("tenant", [("a",)], start=START + timedelta(1))]
    )
    with pytest.raises(ValueError, match="rows of one window"):
        RollupWriter(tmp_path).write_window(rows)


def test_non_utc_window_start_is_refused() -> None:
    local = datetime(2024, 5, 1, 3, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    with pytest.raises(ValueError, match="UTC"):
        rollup_path(Path("/r"), "tenant", local, "final")


def test_failed_write_leaves_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = RollupWriter(tmp_path)
    path = writer.write_window(make_rows("tenant", [("a",)]))[0]
    before = path.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        writer.write_window(make_rows("tenant", [("a",), ("b",)]))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_bad_compression_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compression"):
        RollupWriter(tmp_path, compression="zip")

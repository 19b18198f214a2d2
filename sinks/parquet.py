"""Idempotent, atomic Parquet files for rollup rows (one file per grain and window).

Why this shape: Bytewax may emit the same ``(key, window)`` again after a resume or when a
straggler re-opens a sealed window, and the Kafka source replays the last epoch after a crash.
A file name derived only from the grain, the window and a caller-chosen tag makes a replay
*overwrite* the earlier file instead of adding a duplicate, and writing to a temporary name,
``fsync`` and ``os.replace`` means a reader (DuckDB globbing the tree) sees either the old file
or the new one, never a torn one.  Temporary names do not end in ``.parquet`` so the query
glob never picks them up.

Layout (hive partitioning, see ``docs/query.md``)::

    <root>/grain=<grain>/date=YYYY-MM-DD/hour=HH/w<YYYYmmddTHHMMSSZ>-<tag>.parquet
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, cast, get_args

import polars as pl

from spanpulse.schemas.record import DIMENSIONS
from spanpulse.schemas.rollup_schema import ROLLUP_SCHEMA, conform_rollups

__all__ = ["COMPRESSIONS", "ROLLUP_SCHEMA", "RollupWriter", "rollup_path"]

Compression = Literal["uncompressed", "snappy", "gzip", "brotli", "lz4", "zstd"]
#: Compression codecs accepted by Polars' Parquet writer.
COMPRESSIONS: Final = frozenset(get_args(Compression))

_SAFE: Final = re.compile(r"[A-Za-z0-9._-]+")
_SORT_KEYS: Final = ("grain", *DIMENSIONS, "late")


def _check_name(kind: str, value: str) -> str:
    """Refuse path components outside ``[A-Za-z0-9._-]`` (no separators, no traversal)."""
    if not _SAFE.fullmatch(value) or value in {".", ".."}:
        msg = f"rollup {kind} {value!r} is not path-safe: use only letters, digits, '.', '_', '-'"
        raise ValueError(msg)
    return value


def rollup_path(root: Path, grain: str, window_start: datetime, tag: str) -> Path:
    """Return the deterministic file path of one grain's rows of one window."""
    ws = _as_utc(window_start)
    return (
        root
        / f"grain={_check_name('grain', grain)}"
        / f"date={ws:%Y-%m-%d}"
        / f"hour={ws:%H}"
        / f"w{ws:%Y%m%dT%H%M%SZ}-{_check_name('tag', tag)}.parquet"
    )


def _as_utc(ts: datetime) -> datetime:
    offset = ts.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        msg = f"window_start must be a UTC-aware datetime, got {ts!r}"
        raise ValueError(msg)
    return ts


def _window_start(rows: pl.DataFrame) -> datetime:
    """Return the single window start of ``rows``; several windows in one call are a caller bug."""
    starts = rows.get_column("window_start").unique()
    if starts.len() != 1 or starts.null_count():
        msg = f"write_window expects rows of one window, got window_start values {starts.to_list()}"
        raise ValueError(msg)
    value = starts.item()
    assert isinstance(value, datetime)
    return value


class RollupWriter:
    """Writes the rollup rows of one window, one Parquet file per grain, atomically.

    Args:
        root: the rollup directory (created on first write).
        compression: Parquet codec, one of :data:`COMPRESSIONS`.
    """

    def __init__(self, root: Path, compression: str = "zstd") -> None:
        if compression not in COMPRESSIONS:
            msg = f"compression {compression!r} is not supported; use one of {sorted(COMPRESSIONS)}"
            raise ValueError(msg)
        self.root = Path(root)
        self.compression = cast(Compression, compression)

    def write_window(self, rows: pl.DataFrame, *, tag: str = "final") -> list[Path]:
        """Write ``rows`` (one window, any grains) and return the files written, by grain.

        A second call with the same window, grain and ``tag`` replaces the earlier file, so a
        replayed window never duplicates rows.  Late rows use their own tag (for example
        ``late-<partition>-<seq>``) so they sit next to the final file instead of replacing it.
        An empty frame writes nothing.
        """
        _check_name("tag", tag)
        if rows.is_empty():
            return []
        conformed = conform_rollups(rows)
        window_start = _as_utc(_window_start(conformed))
        paths = []
        for grain in sorted(conformed.get_column("grain").unique().to_list()):
            if grain is None:
                msg = "rollup rows need a grain; got a null grain"
                raise ValueError(msg)
            path = rollup_path(self.root, grain, window_start, tag)
            part = conformed.filter(pl.col("grain") == grain).sort(_SORT_KEYS, nulls_last=True)
            self._write_atomic(part, path)
            paths.append(path)
        return paths

    def _write_atomic(self, frame: pl.DataFrame, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            with tmp.open("wb") as fh:
                frame.write_parquet(fh, compression=self.compression)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (a directory entry) so a power loss cannot undo it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

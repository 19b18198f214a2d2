"""Idempotent, atomic Parquet files for rollup rows (one file per grain and window).

Why this shape: Bytewax may emit the same ``(key, window)`` again after a resume or when a
straggler re-opens a sealed window, and the Kafka source replays the last epoch after a crash.
A file name derived only from the grain, the window and a caller-chosen tag makes a replay
*overwrite* the earlier file instead of adding a duplicate, and writing to a temporary name,
``fsync`` and ``os.replace`` means a reader (DuckDB globbing the tree) sees either the old file
or the new one, never a torn one.  Temporary names do not end in ``.parquet`` so the query
glob never picks them up.  A :class:`RewindJournal` records which files an epoch wrote, so a
sink that writes per epoch can delete the files of epochs the recovery store never committed.

Layout (hive partitioning, see ``docs/query.md``)::

    <root>/grain=<grain>/date=YYYY-MM-DD/hour=HH/w<YYYYmmddTHHMMSSZ>-<tag>.parquet
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, cast, get_args

import polars as pl

from spanpulse.schemas.record import DIMENSIONS
from spanpulse.schemas.rollup_schema import ROLLUP_SCHEMA, conform_rollups

__all__ = ["COMPRESSIONS", "ROLLUP_SCHEMA", "RewindJournal", "RollupWriter", "rollup_path"]

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
        ``late-<topic>-p<partition>-wm<sealed point>``) so they sit next to the final file
        instead of replacing it.  An empty frame writes nothing.
        """
        paths = []
        for path, part in self._files(rows, tag):
            self._write_atomic(part.sort(_SORT_KEYS, nulls_last=True), path)
            paths.append(path)
        return paths

    def paths(self, rows: pl.DataFrame, *, tag: str = "final") -> list[Path]:
        """Return the files :meth:`write_window` would write for ``rows`` (nothing is written)."""
        return [path for path, _part in self._files(rows, tag)]

    def _files(self, rows: pl.DataFrame, tag: str) -> list[tuple[Path, pl.DataFrame]]:
        _check_name("tag", tag)
        if rows.is_empty():
            return []
        conformed = conform_rollups(rows)
        window_start = _as_utc(_window_start(conformed))
        files = []
        grains = sorted(
            conformed.get_column("grain").unique().to_list(), key=lambda g: (g is None, g)
        )
        for grain in grains:
            if grain is None:
                msg = "rollup rows need a grain; got a null grain"
                raise ValueError(msg)
            path = rollup_path(self.root, grain, window_start, tag)
            part = conformed if len(grains) == 1 else conformed.filter(pl.col("grain") == grain)
            files.append((path, part))
        return files

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


class RewindJournal:
    """Which files each epoch of one sink partition wrote, so a resumed sink can take them back.

    Why: a sink that writes in its ``snapshot()`` may have written an epoch's files when the
    process dies before the recovery store committed that epoch; the resumed dataflow replays the
    epoch, and the files must not stay as well.  Before writing, the sink records the epoch's
    sequence number and paths here (one small JSON file per epoch, written atomically); on
    resume it calls :meth:`rewind` with the restored sequence number, which deletes the files of
    every later epoch (the replay writes them again).  Only the last ``keep`` epochs are kept:
    the recovery store never resumes that far back (it commits every epoch or two).

    Args:
        directory: this partition's journal directory (created on first use).
        root: the directory the recorded paths are relative to.
        keep: how many recorded epochs to keep.
    """

    def __init__(self, directory: Path, root: Path, keep: int = 100) -> None:
        self.directory = Path(directory)
        self.root = Path(root)
        self.keep = keep

    def record(self, seq: int, paths: list[Path]) -> None:
        """Record that epoch ``seq`` is about to write ``paths`` (call before writing them)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"seq": seq, "paths": [str(p.relative_to(self.root)) for p in paths]})
        entry = self._entry(seq)
        tmp = entry.with_name(f".{entry.name}.tmp")
        with tmp.open("w") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, entry)
        _fsync_dir(self.directory)
        for old in self._recorded():
            if old <= seq - self.keep:
                self._entry(old).unlink(missing_ok=True)

    def rewind(self, seq: int | None) -> list[Path]:
        """Resume at ``seq``: delete the files of epochs ``>= seq``; return the deleted files.

        ``None`` (no restored state: a new recovery store, or this partition's first epoch was
        never committed) deletes no data file -- an older journal then belongs to another store
        -- and only forgets the journal.
        """
        deleted: list[Path] = []
        for old in self._recorded():
            entry = self._entry(old)
            if seq is not None and old >= seq:
                deleted += self._delete_files(entry)
            entry.unlink(missing_ok=True)
        return deleted

    def _delete_files(self, entry: Path) -> list[Path]:
        paths = [self.root / p for p in json.loads(entry.read_text())["paths"]]
        gone = []
        for path in paths:
            if path.exists():
                path.unlink()
                _fsync_dir(path.parent)
                gone.append(path)
        return gone

    def _recorded(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem) for p in self.directory.glob("*.json"))

    def _entry(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}.json"

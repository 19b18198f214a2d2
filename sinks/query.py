"""DuckDB over the Parquet rollups: the views, macros and REPL behind ``spanpulse query``.

Why views and macros instead of a query API: users' questions ("cost per tenant per hour",
"p95 input tokens per prompt version yesterday") are SQL-shaped, and the one thing they must
not get wrong -- percentiles over many windows -- is packaged as macros that merge histograms
before taking a quantile.  ``docs/query.md`` is the contract for everything created here.

Rows are fetched through Arrow, so ``TIMESTAMPTZ`` values arrive as UTC-aware datetimes without
DuckDB's optional ``pytz`` dependency.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import duckdb
import polars as pl

from spanpulse.schemas.histogram import DUCKDB_MACROS, HIST_DTYPE, RELATIVE_ERROR
from spanpulse.schemas.record import DIMENSIONS
from spanpulse.schemas.rollup_schema import ADDITIVE_COLUMNS, HIST_COLUMNS, ROLLUP_SCHEMA

__all__ = ["HELP", "VIEWS", "connect", "create_views", "format_table", "interactive", "run_query"]

_HIST_SQL: Final = "STRUCT(b INTEGER, n BIGINT)[]"
_DIR_VARIABLE: Final = "spanpulse_rollup_dir"
_LATE_VARIABLE: Final = "spanpulse_late_included"


def _duck_type(dtype: pl.DataType) -> str:
    """Map a contract Polars dtype to the DuckDB type the view exposes."""
    if dtype == HIST_DTYPE:
        return _HIST_SQL
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMPTZ"
    if dtype == pl.List(pl.String()):
        return "VARCHAR[]"
    simple = {pl.String(): "VARCHAR", pl.Boolean(): "BOOLEAN", pl.Int64(): "BIGINT"}
    simple[pl.Float64()] = "DOUBLE"
    return simple[dtype]


_CONTRACT_TYPES: Final = {name: _duck_type(dtype) for name, dtype in ROLLUP_SCHEMA.items()}
_PARTITION_TYPES: Final = {"date": "DATE", "hour": "INTEGER"}
_SUMMED: Final = tuple(c for c in ADDITIVE_COLUMNS if c != "cost_nanos")

#: Histogram macros written with list lambdas instead of correlated subqueries.
#:
#: Why: the subquery form of ``hist_quantile`` in ``schemas.histogram.DUCKDB_MACROS`` is
#: decorrelated by DuckDB into a window partitioned by the (huge) list value itself, which is
#: quadratic: 7,200 rows in 50 groups took 13.6 s, 72,000 did not finish in 10 minutes.  These
#: bodies cost O(distinct buckets x cells) per group (72,000 rows: about 2 s) and return exactly
#: the same values (``tests/test_query.py`` checks both against :func:`quantile`).  The
#: shared ``hist_quantile`` (schemas.histogram) now uses the same list form.
_LIST_MACROS: Final = f"""
CREATE OR REPLACE MACRO hist_compact(h) AS CAST(coalesce(list_transform(
    list_sort(list_distinct(list_transform(h, lambda c: c.b))),
    lambda x: {{'b': x, 'n': list_sum(list_transform(list_filter(h, lambda c: c.b = x),
                                                     lambda c: c.n))}}
), []) AS {_HIST_SQL});
"""

#: Every view and macro ``connect`` creates, with the one-line description ``.views`` prints.
VIEWS: Final = {
    "rollups": "view: every rollup row (contract columns + hive partitions date, hour)",
    "rollups_hourly": "view: per hour_start, grain and dimensions: sums and merged histograms",
    "hist_merge(list(h))": "macro: concatenate the histograms of many rows",
    "hist_compact(h)": "macro: one cell per bucket (counts of equal buckets added)",
    "hist_count(h)": "macro: number of values in a histogram",
    "hist_quantile(h, q)": (
        f"macro: nearest-rank quantile estimate (relative error <= {RELATIVE_ERROR:.2%})"
    ),
    "cost_by_tenant(start_ts, end_ts)": "table macro: calls and cost per tenant",
    "cost_by_tenant_hourly(start_ts, end_ts)": "table macro: calls and cost per tenant per hour",
    "length_share_by_model(start_ts, end_ts)": "table macro: share of calls stopped by length",
    "token_quantiles_by_prompt_version(q, start_ts, end_ts)": (
        "table macro: merged-histogram token quantiles per feature and prompt version"
    ),
}

HELP: Final = """\
Statements end with ';' and may span lines.  Commands:
  .help      this text
  .views     the views and macros (see docs/query.md)
  .refresh   re-create the views (picks up a rollup directory that was empty at start)
  .quit      leave (also .exit, or end of input)
Times are UTC.  Example:
  SELECT * FROM cost_by_tenant_hourly('2024-05-01', '2024-05-02');"""


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _contract_select(source: str) -> str:
    cols = [f"CAST({name} AS {t}) AS {name}" for name, t in _CONTRACT_TYPES.items()]
    cols += [f"CAST({name} AS {t}) AS {name}" for name, t in _PARTITION_TYPES.items()]
    return "SELECT " + ",\n       ".join(cols) + f"\nFROM {source}"


def _rollups_view_sql(rollup_dir: Path, late_included: bool) -> str:
    """Build the ``rollups`` view over the Parquet tree, or an empty typed one without files."""
    where = "" if late_included else "\nWHERE NOT late"
    if not _has_rollup_files(rollup_dir):
        nulls = {name: "NULL" for name in (*_CONTRACT_TYPES, *_PARTITION_TYPES)}
        empty = "(SELECT " + ", ".join(f"{v} AS {k}" for k, v in nulls.items()) + ") WHERE false"
        return f"CREATE OR REPLACE VIEW rollups AS\n{_contract_select(empty)}"
    pattern = _sql_string(f"{rollup_dir}/**/*.parquet")
    hive = ", ".join(f"{_sql_string(k)}: {v}" for k, v in _PARTITION_TYPES.items())
    source = (
        f"read_parquet({pattern}, hive_partitioning = true, union_by_name = true, "
        f"hive_types = {{{hive}}})"
    )
    return f"CREATE OR REPLACE VIEW rollups AS\n{_contract_select(source)}{where}"


def _has_rollup_files(rollup_dir: Path) -> bool:
    return rollup_dir.is_dir() and any(rollup_dir.glob("**/*.parquet"))


def _hourly_view_sql() -> str:
    dims = ", ".join(DIMENSIONS)
    sums = [f"CAST(sum({c}) AS BIGINT) AS {c}" for c in _SUMMED]
    hists = [f"hist_compact(hist_merge(list({h}))) AS {h}" for h in HIST_COLUMNS]
    return f"""CREATE OR REPLACE VIEW rollups_hourly AS
SELECT time_bucket(INTERVAL '1 hour', window_start) AS hour_start, grain, {dims},
       count(DISTINCT window_start) AS windows,
       CAST(sum(cost_nanos) AS BIGINT) AS cost_nanos,
       CAST(sum(cost_nanos) AS DOUBLE) / 1e9 AS cost_usd,
       {", ".join(sums)},
       {", ".join(hists)}
FROM rollups
GROUP BY hour_start, grain, {dims}"""  # noqa: S608 -- names come from the schema


_RANGE: Final = (
    "window_start >= CAST(start_ts AS TIMESTAMPTZ) AND window_start < CAST(end_ts AS TIMESTAMPTZ)"
)

_TABLE_MACROS: Final = f"""
CREATE OR REPLACE MACRO cost_by_tenant(start_ts, end_ts) AS TABLE
SELECT tenant, CAST(sum(calls) AS BIGINT) AS calls,
       CAST(sum(cost_nanos) AS BIGINT) AS cost_nanos,
       CAST(sum(cost_nanos) AS DOUBLE) / 1e9 AS cost_usd,
       CAST(sum(unpriced_calls) AS BIGINT) AS unpriced_calls
FROM rollups WHERE grain = 'tenant' AND {_RANGE}
GROUP BY tenant ORDER BY cost_nanos DESC, tenant;

CREATE OR REPLACE MACRO cost_by_tenant_hourly(start_ts, end_ts) AS TABLE
SELECT time_bucket(INTERVAL '1 hour', window_start) AS hour_start, tenant,
       CAST(sum(calls) AS BIGINT) AS calls,
       CAST(sum(cost_nanos) AS BIGINT) AS cost_nanos,
       CAST(sum(cost_nanos) AS DOUBLE) / 1e9 AS cost_usd,
       CAST(sum(unpriced_calls) AS BIGINT) AS unpriced_calls
FROM rollups WHERE grain = 'tenant' AND {_RANGE}
GROUP BY hour_start, tenant ORDER BY hour_start, tenant;

CREATE OR REPLACE MACRO length_share_by_model(start_ts, end_ts) AS TABLE
SELECT model, CAST(sum(calls) AS BIGINT) AS calls,
       CAST(sum(finish_length) AS BIGINT) AS finish_length,
       CAST(sum(finish_length) AS DOUBLE) / nullif(sum(calls), 0) AS length_share
FROM rollups WHERE grain = 'model' AND {_RANGE}
GROUP BY model ORDER BY model;

CREATE OR REPLACE MACRO token_quantiles_by_prompt_version(q, start_ts, end_ts) AS TABLE
WITH sel AS (
    SELECT feature, prompt_version, calls, input_tokens_hist, output_tokens_hist
    FROM rollups WHERE grain = 'feature.prompt_version' AND {_RANGE}
), cells AS (
    SELECT feature, prompt_version, kind, c.b AS b, sum(c.n) AS n
    FROM (SELECT feature, prompt_version, 'in' AS kind, unnest(input_tokens_hist) AS c FROM sel
          UNION ALL
          SELECT feature, prompt_version, 'out', unnest(output_tokens_hist) FROM sel)
    GROUP BY feature, prompt_version, kind, c.b
), ranked AS (
    SELECT feature, prompt_version, kind, b,
           sum(n) OVER (PARTITION BY feature, prompt_version, kind ORDER BY b) AS seen,
           sum(n) OVER (PARTITION BY feature, prompt_version, kind) AS total
    FROM cells
), quantiles AS (
    SELECT feature, prompt_version,
           hist_bucket_value(min(b) FILTER (WHERE kind = 'in')) AS input_tokens_q,
           hist_bucket_value(min(b) FILTER (WHERE kind = 'out')) AS output_tokens_q
    FROM ranked WHERE seen >= greatest(1, ceil(q * total))
    GROUP BY feature, prompt_version
)
SELECT s.feature, s.prompt_version, CAST(sum(s.calls) AS BIGINT) AS calls,
       any_value(x.input_tokens_q) AS input_tokens_q,
       any_value(x.output_tokens_q) AS output_tokens_q
FROM sel AS s LEFT JOIN quantiles AS x
  ON s.feature IS NOT DISTINCT FROM x.feature
 AND s.prompt_version IS NOT DISTINCT FROM x.prompt_version
GROUP BY s.feature, s.prompt_version ORDER BY s.feature, s.prompt_version;
"""  # noqa: S608 -- constant SQL, no user input


def create_views(
    con: duckdb.DuckDBPyConnection, rollup_dir: Path, *, late_included: bool = True
) -> None:
    """(Re-)create the views over ``rollup_dir``; call again once files exist after an empty one."""
    con.execute(f"SET VARIABLE {_DIR_VARIABLE} = {_sql_string(str(rollup_dir))}")
    con.execute(f"SET VARIABLE {_LATE_VARIABLE} = {'true' if late_included else 'false'}")
    con.execute(_rollups_view_sql(Path(rollup_dir), late_included))
    con.execute(_hourly_view_sql())


def connect(rollup_dir: Path, *, late_included: bool = True) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB with the ``rollups`` views and the histogram macros.

    Args:
        rollup_dir: the directory the :class:`~spanpulse.sinks.parquet.RollupWriter` writes to.
            It may be empty or missing: the views are then empty with the contract types.
        late_included: include the ``late = true`` rows (records that arrived after their
            window was sealed).  ``False`` gives the numbers as they were when windows closed.
    """
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(DUCKDB_MACROS)
    con.execute(_LIST_MACROS)
    create_views(con, Path(rollup_dir), late_included=late_included)
    con.execute(_TABLE_MACROS)
    return con


def _to_python(value: Any) -> Any:
    """DuckDB ``sum(BIGINT)`` is a ``HUGEINT``, which Arrow carries as a scale-0 decimal."""
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    return value


def run_query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` (the last statement's result is returned) as column names and row tuples."""
    rel = con.sql(sql)
    if rel is None:
        return [], []
    table = rel.to_arrow_table()
    columns = [[_to_python(v) for v in col.to_pylist()] for col in table.columns]
    return list(rel.columns), list(zip(*columns, strict=True)) if columns else []


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _clip(text: str, max_width: int) -> str:
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= max_width else text[: max(max_width - 1, 0)] + "…"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 40) -> str:
    """Render rows as a plain-text table (numbers right-aligned, long cells cut with ``…``)."""
    if not columns:
        return "OK"
    cells = [[_clip(_cell(v), max_width) for v in row] for row in rows]
    header = [_clip(c, max_width) for c in columns]
    widths = [max([len(header[i])] + [len(r[i]) for r in cells]) for i in range(len(columns))]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return " | ".join(parts).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _one_line(err: Exception) -> str:
    return "Error: " + " ".join(str(err).split())


def _run_statements(con: duckdb.DuckDBPyConnection, text: str, stdout: TextIO) -> bool:
    """Run every statement of ``text``, print each result; return False if one failed."""
    try:
        statements = con.extract_statements(text)
        for statement in statements:
            columns, rows = run_query(con, statement.query)
            stdout.write(format_table(columns, rows) + "\n")
    except duckdb.Error as err:
        stdout.write(_one_line(err) + "\n")
        return False
    return True


def _refresh(con: duckdb.DuckDBPyConnection) -> None:
    row = con.execute(
        f"SELECT getvariable('{_DIR_VARIABLE}'), getvariable('{_LATE_VARIABLE}')"
    ).fetchone()
    if row is None or row[0] is None:
        msg = "this connection was not opened by spanpulse.sinks.query.connect"
        raise RuntimeError(msg)
    create_views(con, Path(row[0]), late_included=bool(row[1]))


def _command(con: duckdb.DuckDBPyConnection, command: str, stdout: TextIO) -> bool:
    """Handle a dot command; return False when the REPL should stop."""
    if command in {".quit", ".exit"}:
        return False
    if command == ".help":
        stdout.write(HELP + "\n")
    elif command == ".views":
        width = max(len(k) for k in VIEWS)
        stdout.write("\n".join(f"{k.ljust(width)}  {v}" for k, v in VIEWS.items()) + "\n")
    elif command == ".refresh":
        _refresh(con)
        stdout.write("views re-created\n")
    else:
        stdout.write(f"Error: unknown command {command!r}; try .help\n")
    return True


def interactive(con: duckdb.DuckDBPyConnection, stdin: TextIO, stdout: TextIO) -> int:
    """Run a minimal SQL REPL: statements end with ``;``; return 1 if any statement failed, else 0.

    Errors are printed as one line and the loop continues, so a script piped in runs to the end.
    """
    buffer: list[str] = []
    failed = False
    stdout.write("spanpulse> ")
    stdout.flush()
    for line in stdin:
        stripped = line.strip()
        if not buffer and stripped.startswith("."):
            if not _command(con, stripped.split()[0], stdout):
                return int(failed)
        elif stripped or buffer:
            buffer.append(line)
            if stripped.endswith(";"):
                failed = not _run_statements(con, "".join(buffer), stdout) or failed
                buffer.clear()
        stdout.write("     ...> " if buffer else "spanpulse> ")
        stdout.flush()
    if "".join(buffer).strip():
        failed = not _run_statements(con, "".join(buffer), stdout) or failed
    stdout.write("\n")
    return int(failed)

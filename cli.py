"""The ``spanpulse`` command line: run, demo, generate, query, evaluate, alerts.

Every user error (bad flag, bad config, unreachable broker, missing topic) ends with one line
on stderr naming what is wrong and how to fix it, and a non-zero exit code -- no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2
EXIT_RUNTIME = 1


class UserError(Exception):
    """An error to show as one line, without a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USAGE)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        msg = f"expected a number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from err
    if value <= 0:
        msg = f"expected a number > 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _duration_s(text: str) -> float:
    from spanpulse.config import ConfigError, parse_duration_ms

    try:
        return parse_duration_ms("duration", text) / 1000.0
    except ConfigError as err:
        msg = f"expected a duration like '10m', '90s' or '2h', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from err


def _timestamp(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        msg = f"expected an ISO 8601 time like 2026-11-24T10:00:00Z, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from err
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (exposed for tests and docs)."""
    p = _Parser(
        prog="spanpulse", description="Streaming analytics and anomaly detection for LLM telemetry."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run the stream job")
    r.add_argument(
        "--config", type=Path, help="TOML config file (default: built-in defaults + env overrides)"
    )
    r.add_argument(
        "--until-caught-up",
        action="store_true",
        help="read every input topic up to its end offset at start, close all windows, flush, exit 0",
    )
    r.add_argument(
        "--workers", type=int, default=1, help="worker threads in this process (default 1)"
    )
    r.add_argument(
        "--status-interval", type=_positive_float, default=10.0, help="seconds between status lines"
    )
    r.add_argument(
        "--process-id",
        type=int,
        help="this process's index in --addresses (several processes; Bytewax -i)",
    )
    r.add_argument(
        "--addresses",
        help='every process\'s host:port, ";"-separated, the same on each (Bytewax -a)',
    )

    d = sub.add_parser(
        "demo", help="embedded broker + generated traffic + job + DuckDB summary, in under a minute"
    )
    d.add_argument("--output", type=Path, default=Path("spanpulse-demo"), help="where rollups go")
    d.add_argument(
        "--duration",
        type=_duration_s,
        default=30 * 60.0,
        help="simulated traffic span (default 30m)",
    )
    d.add_argument(
        "--rate", type=_positive_float, default=40.0, help="simulated calls per second (default 40)"
    )
    d.add_argument("--seed", type=int, default=7)

    g = sub.add_parser(
        "generate", help="produce realistic LLM-call spans (optionally with incidents) to Kafka"
    )
    g.add_argument(
        "--bootstrap",
        default=os.environ.get("SPANPULSE_KAFKA__BOOTSTRAP_SERVERS", "localhost:9092"),
    )
    g.add_argument("--topic", default="otlp_spans")
    g.add_argument(
        "--encoding", choices=("otlp_proto", "otlp_json", "span_json"), default="otlp_proto"
    )
    g.add_argument(
        "--convention",
        default="otel",
        choices=(
            "otel",
            "otel_deprecated",
            "traceloop_legacy",
            "traceloop",
            "openinference",
            "anthropic_native",
            "mixed",
        ),
    )
    g.add_argument(
        "--scenario", type=Path, help="scenario TOML with labelled incidents (see scenarios/)"
    )
    g.add_argument(
        "--duration", type=_duration_s, default=600.0, help="simulated time span (default 10m)"
    )
    g.add_argument(
        "--rate", type=_positive_float, default=50.0, help="mean simulated calls per second"
    )
    g.add_argument("--tenants", type=int, default=500)
    g.add_argument(
        "--start", type=_timestamp, help="simulated start time (default: now minus duration)"
    )
    g.add_argument("--seed", type=int, default=1)
    g.add_argument(
        "--realtime",
        action="store_true",
        help="pace output at the simulated rate instead of as fast as possible",
    )
    g.add_argument(
        "--labels-out", type=Path, help="write the scenario's incident labels as JSON here"
    )

    q = sub.add_parser("query", help="ad-hoc DuckDB SQL over the rollups (interactive without SQL)")
    q.add_argument("sql", nargs="?", help="one SQL statement; omit for an interactive shell")
    q.add_argument(
        "--rollups", type=Path, help="rollup directory (default: rollups.output_dir from --config)"
    )
    q.add_argument("--config", type=Path)
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    a = sub.add_parser("alerts", help="work with the alert topic")
    asub = a.add_subparsers(dest="alerts_command", required=True, parser_class=_Parser)
    t = asub.add_parser("tail", help="print alerts as JSON lines (deduplicated by id)")
    t.add_argument(
        "--config", type=Path, help="read kafka settings and alert_topic from this config"
    )
    t.add_argument("--bootstrap", help="override kafka.bootstrap_servers")
    t.add_argument("--topic", help="override kafka.alert_topic")
    t.add_argument("--from-beginning", action="store_true", help="start at the oldest alert")
    t.add_argument(
        "--idle-exit", type=_positive_float, help="exit after this many seconds without a new alert"
    )
    t.add_argument(
        "--keep-duplicates", action="store_true", help="print re-deliveries of the same alert id"
    )
    _add_evaluate_parser(sub)
    return p


def _add_evaluate_parser(sub: Any) -> None:
    """``spanpulse evaluate``: the built-in evaluation of the detectors (see docs/evaluation.md)."""
    e = sub.add_parser(
        "evaluate",
        help="run the job over labelled scenarios; report recall, precision, time to detect",
    )
    e.add_argument(
        "scenarios",
        nargs="*",
        type=Path,
        help="scenario TOML files (default: all_incidents, baseline and baseline_day in scenarios/)",
    )
    e.add_argument(
        "--output",
        type=Path,
        default=Path("docs/evaluation-results.md"),
        help="Markdown results file (default docs/evaluation-results.md)",
    )
    e.add_argument(
        "--json", type=Path, dest="json_out", help="also write every detail as JSON here"
    )
    e.add_argument(
        "--config", type=Path, help="job config TOML to evaluate (default: built-in defaults)"
    )
    e.add_argument("--tenants", type=int, help="override the scenarios' tenants (quick runs)")
    e.add_argument(
        "--rate", type=_positive_float, help="override the scenarios' calls/s (quick runs)"
    )
    e.add_argument(
        "--duration",
        type=_duration_s,
        help="override the scenarios' duration; drops incidents that no longer fit (quick runs)",
    )
    e.add_argument(
        "--encoding",
        choices=("span_json", "otlp_proto"),
        default="span_json",
        help="wire format the traffic is produced in (default span_json)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spanpulse`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from spanpulse.broker import BrokerError
    from spanpulse.config import ConfigError

    handlers = {
        "run": cmd_run,
        "demo": cmd_demo,
        "generate": cmd_generate,
        "query": cmd_query,
        "alerts": cmd_alerts,
        "evaluate": cmd_evaluate,
    }
    try:
        return handlers[args.command](args)
    except (UserError, ConfigError, BrokerError) as err:
        sys.stderr.write(f"spanpulse {args.command}: error: {err}\n")
        return EXIT_USAGE if isinstance(err, ConfigError) else EXIT_RUNTIME
    except KeyboardInterrupt:
        sys.stderr.write("spanpulse: interrupted\n")
        return 130


# ---------------------------------------------------------------------------------------- run


def _source_errors() -> tuple[type[Exception], ...]:
    from spanpulse.sinks.kafka_source import SourceError

    return (SourceError,)


def run_job(
    settings: Any,
    *,
    bounded: bool,
    workers: int = 1,
    status_interval: float = 10.0,
    quiet: bool = False,
    process_id: int | None = None,
    addresses: list[str] | None = None,
) -> dict[str, Any]:
    """Run the job in this process until stopped (or caught up); return the final totals."""
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from spanpulse.flows.gc_tuning import tune_gc
    from spanpulse.flows.job import build_job
    from spanpulse.sinks.metrics import start_http_server

    tune_gc()
    try:
        job = build_job(settings, bounded=bounded)
    except _source_errors() as err:
        raise UserError(str(err)) from err
    if settings.metrics.port:
        try:
            start_http_server(settings.metrics.port, job.registry, addr=settings.metrics.addr)
        except OSError as err:
            msg = f"metrics.port {settings.metrics.port} is not available ({err.strerror}); pick another port or set 0"
            raise UserError(msg) from err
    recovery = None
    if settings.recovery.dir is not None:
        recovery = RecoveryConfig(
            _init_recovery(settings.recovery.dir),
            timedelta(milliseconds=settings.recovery.backup_interval_ms),
        )
    stop = threading.Event()
    if not quiet:
        threading.Thread(
            target=_status_loop, args=(job.observer.stats, stop, status_interval), daemon=True
        ).start()
    from spanpulse.sinks.kafka_source import STOP_REQUESTED

    STOP_REQUESTED.clear()
    _install_stop_handlers(STOP_REQUESTED)
    t0 = time.monotonic()
    try:
        cli_main(
            job.flow,
            workers_per_process=workers,
            process_id=process_id,
            addresses=addresses,
            epoch_interval=timedelta(milliseconds=settings.recovery.snapshot_interval_ms),
            recovery_config=recovery,
        )
    finally:
        stop.set()
    totals = job.observer.stats.as_dict()
    totals["seconds"] = round(time.monotonic() - t0, 3)
    return totals


def _init_recovery(path: Path) -> Path:
    """Create a one-partition recovery store on first use (see README: Recovery).

    An existing store first loses the snapshots a killed execution wrote past its recorded
    progress (``sinks/recovery_store.py`` says why they would corrupt a later resume).
    """
    path.mkdir(parents=True, exist_ok=True)
    if not any(path.glob("*.sqlite3")):
        from bytewax.recovery import init_db_dir

        init_db_dir(path, 1)
        return path
    from spanpulse.sinks.recovery_store import RecoveryStoreError, prune_uncommitted

    try:
        prune_uncommitted(path)
    except RecoveryStoreError as err:
        raise UserError(str(err)) from err
    return path


def _install_stop_handlers(stopping: threading.Event) -> None:
    """SIGTERM/SIGINT: stop reading, drain in-flight batches, exit 0; a second signal exits now.

    Raising KeyboardInterrupt from a handler could land inside a sink's write and abort the
    dataflow mid-batch; a flag the source checks between batches cannot.
    """

    def _stop(sig: int, _frame: object) -> None:
        if stopping.is_set():
            os._exit(128 + sig)
        sys.stderr.write(
            f"spanpulse: {signal.Signals(sig).name} received; stopping after in-flight batches\n"
        )
        stopping.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)


def _status_loop(stats: Any, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        s = stats.as_dict()
        closed = stats.closed_upto_ms
        upto = (
            datetime.fromtimestamp(closed / 1000, UTC).isoformat()
            if closed and closed < 2**61
            else "-"
        )
        sys.stderr.write(
            f"spanpulse: {s['messages']} messages, {s['records']} LLM calls, {s['windows']} windows closed "
            f"(up to {upto}), {sum(s['dead_letters'].values())} dead letters, {s['late_calls']} late\n"
        )


def cmd_run(args: argparse.Namespace) -> int:
    """``spanpulse run``."""
    from spanpulse.config import load

    if args.workers < 1:
        msg = f"--workers must be at least 1, got {args.workers}"
        raise UserError(msg)
    addresses = _cluster(args.process_id, args.addresses)
    settings = load(args.config)
    totals = run_job(
        settings,
        bounded=args.until_caught_up,
        workers=args.workers,
        status_interval=args.status_interval,
        process_id=args.process_id,
        addresses=addresses,
    )
    sys.stdout.write(
        json.dumps({"status": "caught_up" if args.until_caught_up else "stopped", **totals}) + "\n"
    )
    return 0


def _cluster(process_id: int | None, addresses: str | None) -> list[str] | None:
    """Check ``--process-id``/``--addresses`` (both or neither) and split the addresses."""
    if process_id is None and addresses is None:
        return None
    if process_id is None or addresses is None:
        msg = "--process-id and --addresses go together: give both to run several processes, or neither"
        raise UserError(msg)
    hosts = [a.strip() for a in addresses.split(";") if a.strip()]
    if not all(a.rpartition(":")[2].isdigit() for a in hosts):
        msg = f'--addresses must be host:port entries separated by ";", got {addresses!r}'
        raise UserError(msg)
    if not 0 <= process_id < len(hosts):
        msg = f"--process-id must be between 0 and {len(hosts) - 1} (one per --addresses entry), got {process_id}"
        raise UserError(msg)
    return hosts


# ------------------------------------------------------------------------------------ generate


def cmd_generate(args: argparse.Namespace) -> int:
    """``spanpulse generate``."""
    from spanpulse.broker import create_topics
    from spanpulse.sinks.kafka_source import SourceError, list_partitions

    client = {"bootstrap.servers": args.bootstrap}
    try:
        list_partitions(client, [args.topic])
    except SourceError as err:
        if "does not exist" not in str(err):
            raise UserError(str(err)) from err
        create_topics(args.bootstrap, [args.topic], partitions=4)
    n = generate_to_kafka(args, client)
    sys.stdout.write(json.dumps({"topic": args.topic, **n}) + "\n")
    return 0


def generate_to_kafka(args: argparse.Namespace, client: dict[str, str]) -> dict[str, int]:
    """Produce generated traffic; returns counts of calls, spans and messages."""
    from spanpulse.schemas.encode import encode_calls
    from spanpulse.schemas.scenario import Scenario, ScenarioError
    from spanpulse.sinks.kafka_producer import BulkProducer

    try:
        scenario = Scenario.load(args.scenario) if args.scenario else None
    except ScenarioError as err:
        raise UserError(str(err)) from err
    producer = BulkProducer(client)
    if scenario is None:
        from spanpulse.schemas.traffic import TrafficModel

        start = args.start or (datetime.now(UTC) - timedelta(seconds=args.duration))
        model = TrafficModel(seed=args.seed, tenants=args.tenants, rate_per_s=args.rate)
        chunks = model.iter_calls(int(start.timestamp() * 1000), args.duration, chunk_s=60.0)
    else:
        chunks = scenario.calls_chunks(60.0)
        if args.labels_out:
            labels = [lab.to_dict() for lab in scenario.labels()]
            args.labels_out.write_text(json.dumps(labels, indent=2))
    from spanpulse.schemas.traffic import in_end_time_order

    calls = messages = 0
    t0 = time.monotonic()
    for chunk in in_end_time_order(iter(chunks)):
        values = encode_calls(chunk, args.encoding, convention=args.convention)
        messages += producer.send(args.topic, values)
        calls += chunk.height
        if args.realtime:
            _pace(t0, calls, args.rate)
    producer.flush()
    return {"calls": calls, "messages": messages}


def _pace(t0: float, calls: int, rate: float) -> None:
    ahead = calls / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)


# --------------------------------------------------------------------------------------- query


def cmd_query(args: argparse.Namespace) -> int:
    """``spanpulse query``."""
    from spanpulse.config import load
    from spanpulse.sinks.query import connect, format_table, interactive, run_query

    root = args.rollups or Path(load(args.config).rollups.output_dir)
    if not root.exists():
        msg = f"rollup directory {str(root)!r} does not exist; run the job first or pass --rollups DIR"
        raise UserError(msg)
    con = connect(root)
    if args.sql is None:
        return interactive(con, sys.stdin, sys.stdout)
    try:
        cols, rows = run_query(con, args.sql)
    except Exception as err:  # duckdb raises many error types; all are user SQL problems here
        msg = f"query failed: {str(err).splitlines()[0]}"
        raise UserError(msg) from err
    sys.stdout.write(_render(cols, rows, args.format, format_table) + "\n")
    return 0


def _render(cols: list[str], rows: list[tuple[Any, ...]], fmt: str, table: Any) -> str:
    if fmt == "json":
        return "\n".join(json.dumps(dict(zip(cols, r, strict=True)), default=str) for r in rows)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    return str(table(cols, rows))


# -------------------------------------------------------------------------------------- alerts


def cmd_alerts(args: argparse.Namespace) -> int:
    """``spanpulse alerts tail``: follow the alert topic, deduplicating re-deliveries by id."""
    from spanpulse.config import load
    from spanpulse.sinks.alerts import tail

    settings = load(args.config)
    client = settings.kafka.client_config()
    if args.bootstrap:
        client["bootstrap.servers"] = args.bootstrap
    topic = args.topic or settings.kafka.alert_topic
    seen: set[str] = set()
    for alert in tail(
        client, topic, from_beginning=args.from_beginning, idle_timeout_s=args.idle_exit
    ):
        if not args.keep_duplicates:
            if alert.get("id") in seen:
                continue
            seen.add(str(alert.get("id")))
            if len(seen) > 100_000:
                seen.clear()
        sys.stdout.write(json.dumps(alert) + "\n")
        sys.stdout.flush()
    return 0


# ------------------------------------------------------------------------------------ evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``spanpulse evaluate``: thin shim over :mod:`spanpulse.evaluate`."""
    from spanpulse.evaluate import EvaluateError, run_from_args
    from spanpulse.schemas.scenario import ScenarioError

    try:
        return run_from_args(args)
    except (EvaluateError, ScenarioError) as err:
        raise UserError(str(err)) from err


# ---------------------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """``spanpulse demo``: everything on an embedded broker, then a DuckDB summary."""
    from spanpulse.demo import run_demo

    return run_demo(args)


if __name__ == "__main__":
    raise SystemExit(main())

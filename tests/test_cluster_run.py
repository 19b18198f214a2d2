"""``spanpulse run --process-id/--addresses``: several processes, one job, every call once."""

from __future__ import annotations

import json

import pytest

from drills.crash_drill import produce, read_rollups, write_config
from spanpulse.broker import create_topics, free_port
from spanpulse.cli import UserError, _cluster
from tests.cli_process import assert_one_line_error, run_cli, start_cli


def test_cluster_flags_go_together_and_are_checked():
    assert _cluster(None, None) is None
    assert _cluster(1, "a:1; b:2") == ["a:1", "b:2"]
    for pid, addrs, problem in [
        (0, None, "go together"),
        (None, "a:1;b:2", "go together"),
        (2, "a:1;b:2", "between 0 and 1"),
        (0, "a:1;b", "host:port"),
    ]:
        with pytest.raises(UserError, match=problem):
            _cluster(pid, addrs)


def test_a_bad_cluster_flag_is_one_line_without_traceback():
    # Exit 1, like every other check of a flag's value (EXIT_RUNTIME).
    assert_one_line_error(run_cli("run", "--process-id", "0"), 1, "--addresses")


@pytest.mark.integration
def test_two_processes_count_every_call_once(broker, tmp_path):
    topic = f"cluster-{free_port()}"
    create_topics(broker.bootstrap, [topic], partitions=2)
    create_topics(broker.bootstrap, [f"{topic}-dlq", f"{topic}-alerts"], partitions=1)
    calls = produce(broker.bootstrap, topic, minutes=16, rate=3.0, seed=3)
    out = tmp_path / "rollups"
    cfg = write_config(tmp_path / "job.toml", broker.bootstrap, topic, out, None)
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    run = ("run", "--config", str(cfg), "--until-caught-up", "--addresses", addrs)
    procs = [start_cli(*run, "--process-id", str(i), text=True) for i in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _out, err in results]
    totals = [json.loads(o.strip().splitlines()[-1]) for o, _err in results]
    # Bytewax places partitions on workers by hash, so one process may read both; together the
    # processes read every call once, and windows merged on either process are all written.
    assert sum(t["records"] for t in totals) == calls, totals
    rows = read_rollups(out)
    tenant = rows.filter((rows["grain"] == "tenant") & ~rows["late"])
    assert int(tenant["calls"].sum()) == calls
    assert rows.filter(rows["late"]).height == 0

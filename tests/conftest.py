"""Shared fixtures: real brokers on free loopback ports (never the system broker on 1883).

mosquitto is a system package; scripts/install-system-deps.sh installs it and
`make test` runs that script first. When it is missing the broker fixtures fail
(they do not skip), so a test run can never pass without its MQTT tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.core.testing.brokers import AmqttBroker, MosquittoBroker, find_mosquitto
from edgefleet.core.testing.postgres import PostgresServer, find_pg_bin

pytest_plugins = ["pytester", "tests.support.marker_guard"]

MOSQUITTO_MISSING = (
    "mosquitto is not installed: run `bash scripts/install-system-deps.sh` "
    "(`make test` runs it for you)"
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo the logging set-up code under test did for its process.

    The daemon's ``setup_logging`` and ``hub serve``'s ``basicConfig``, run in-process,
    would leave a handler on pytest's captured stderr, closed after the test: later tests'
    background threads would print "Logging error" tracebacks, and ``propagate = False``
    would hide their log lines from pytest. pytest's own capture handlers on the root
    logger come and go per test phase, so only plain ``StreamHandler``s are taken off it.
    """
    edgefleet = logging.getLogger("edgefleet")
    handlers, level, propagate = list(edgefleet.handlers), edgefleet.level, edgefleet.propagate
    root = logging.getLogger()
    root_before = set(root.handlers)
    root_level = root.level
    yield
    edgefleet.handlers[:] = handlers
    edgefleet.setLevel(level)
    edgefleet.propagate = propagate
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in root_before:
            root.removeHandler(handler)
    root.setLevel(root_level)


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.fail(MOSQUITTO_MISSING, pytrace=False)


@pytest.fixture
def mosquitto_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MosquittoBroker]]:
    """Start mosquitto brokers with MosquittoBroker's keyword arguments; all stopped afterwards.

    Pass ``start=False`` to get a configured broker that is not running yet.
    """
    _require_mosquitto()
    brokers: list[MosquittoBroker] = []

    def make(*, start: bool = True, **kwargs: Any) -> MosquittoBroker:
        workdir = kwargs.pop("workdir", None) or tmp_path_factory.mktemp("mosquitto")
        broker = MosquittoBroker(Path(workdir), **kwargs)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A started anonymous mosquitto on a free loopback port, for one test."""
    return mosquitto_factory()


@pytest.fixture
def amqtt_broker() -> Iterator[AmqttBroker]:
    """amqtt's embedded broker, started on a free loopback port, for one test."""
    broker = AmqttBroker().start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (initdb in a temp dir, a free loopback port,
    run as an unprivileged user); removed at the end. Tests take a fresh database each
    with ``postgres_server.create_database()``; tests using it carry the ``postgres`` marker.
    """
    if find_pg_bin() is None:
        pytest.fail(
            "PostgreSQL binaries not found: run `bash scripts/install-system-deps.sh`",
            pytrace=False,
        )
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()

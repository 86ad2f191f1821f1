"""AmqttRunner: a real amqtt broker on its own loop and thread, and each way its start fails."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from amqtt.plugins.base import BasePlugin
from tests.core.test_brokers import round_trip
from tests.support.waiting import wait_until

from edgefleet.core.errors import TransportError
from edgefleet.core.mqtt.amqtt_runner import AmqttRunner
from edgefleet.core.testing.brokers import LOOPBACK, free_port

ANONYMOUS = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}


class HangingStartPlugin(BasePlugin):  # type: ignore[type-arg,misc]
    """Never lets the broker finish starting (amqtt awaits pre-start handlers)."""

    async def on_broker_pre_start(self) -> None:
        await asyncio.Event().wait()


def config(bind: str, plugins: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": bind}},
        "plugins": ANONYMOUS if plugins is None else plugins,
    }


def thread_names() -> set[str]:
    return {t.name for t in threading.enumerate()}


def wait_gone(name: str) -> None:
    wait_until(f"thread {name} to end", lambda: name not in thread_names(), 20)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    return f"amqtt-runner-test-{request.node.name}-{time.monotonic_ns()}"


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen()
    yield sock
    sock.close()


def test_runs_stops_releases_the_port_and_starts_again(unique_name: str) -> None:
    port = free_port()
    runner = AmqttRunner(config(f"{LOOPBACK}:{port}"), thread_name=unique_name)
    assert not runner.running
    runner.stop()  # never started: nothing to do
    runner.start()
    try:
        assert runner.running and unique_name in thread_names()
        assert runner.binds == (f"{LOOPBACK}:{port}",)
        runner.start()  # already running: nothing to do
        assert round_trip(LOOPBACK, port) == ("edgefleet/test/ping", b"hello", False)
    finally:
        runner.stop()
    assert not runner.running
    assert unique_name not in thread_names()
    with socket.socket() as probe:
        assert probe.connect_ex((LOOPBACK, port)) != 0
    runner.start()  # a new loop and thread on the same port
    try:
        assert round_trip(LOOPBACK, port) == ("edgefleet/test/ping", b"hello", False)
    finally:
        runner.stop()
    runner.stop()  # stopping twice is harmless


def test_port_in_use_is_named(listening_socket: socket.socket, unique_name: str) -> None:
    bind = f"{LOOPBACK}:{listening_socket.getsockname()[1]}"
    runner = AmqttRunner(config(bind), thread_name=unique_name)
    with pytest.raises(TransportError, match=f"{bind} is already in use"):
        runner.start()
    assert not runner.running
    wait_gone(unique_name)


def test_config_amqtt_refuses_is_reported(unique_name: str) -> None:
    runner = AmqttRunner(config(f"{LOOPBACK}:not-a-port"), thread_name=unique_name)
    with pytest.raises(TransportError, match="did not start on 127.0.0.1:not-a-port: .*port"):
        runner.start()
    assert not runner.running
    wait_gone(unique_name)


def test_start_that_does_not_finish_in_time_is_abandoned(unique_name: str) -> None:
    port = free_port()
    plugins = {**ANONYMOUS, f"{__name__}.HangingStartPlugin": {}}
    runner = AmqttRunner(config(f"{LOOPBACK}:{port}", plugins), thread_name=unique_name)
    with pytest.raises(TransportError, match=r"did not start on .* within 0\.5 s"):
        runner.start(timeout_s=0.5)
    assert not runner.running
    wait_gone(unique_name)  # the hanging boot was cancelled, the loop closed
    with socket.socket() as probe:
        assert probe.connect_ex((LOOPBACK, port)) != 0


def test_missing_amqtt_names_the_extra(monkeypatch: pytest.MonkeyPatch, unique_name: str) -> None:
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)  # what an install without it sees
    runner = AmqttRunner(config(f"{LOOPBACK}:{free_port()}"), thread_name=unique_name)
    with pytest.raises(TransportError, match=r"pip install 'edgefleet\[hub\]'"):
        runner.start()
    assert unique_name not in thread_names()


@pytest.mark.parametrize(
    ("module", "loads_amqtt"),
    [
        pytest.param("edgefleet.core.mqtt.amqtt_runner", False, id="runner"),
        pytest.param("edgefleet.core.testing.brokers", False, id="test-brokers"),
        # The probe itself can see amqtt when it is loaded:
        pytest.param("amqtt.broker", True, id="amqtt-itself"),
    ],
)
@pytest.mark.subprocess
def test_importing_does_not_load_amqtt(module: str, loads_amqtt: bool) -> None:
    snippet = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(any(m.split('.')[0] == 'amqtt' for m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == str(loads_amqtt)

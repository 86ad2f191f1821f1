"""``hub serve`` loads amqtt only when it runs the embedded broker.

Each case runs ``edgefleet hub serve`` in a fresh interpreter, waits until a
device's status reaches the hub store, stops it with SIGTERM and reads which
amqtt modules the process had loaded (reported at exit). The
``--embedded-broker`` case is the control: the same probe does see amqtt there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.hub.servicekit import Hub, T, make_service_hub
from tests.support.waiting import wait_until

from edgefleet.core.protocol import Status, encode_json
from edgefleet.core.testing.brokers import LOOPBACK, MosquittoBroker, free_port

# Runs the real console entry point; reports at exit, after serve returned.
SERVE_AND_REPORT = """
import atexit, sys
atexit.register(lambda: print(
    "amqtt modules loaded:", sum(m.split(".")[0] == "amqtt" for m in sys.modules),
    file=sys.stderr, flush=True,
))
from edgefleet.core.cli.main import main
main(sys.argv[1:])
"""

LOADED_PROBE = "print(sum(m.split('.')[0] == 'amqtt' for m in sys.modules))"


@pytest.fixture
def hub(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> Iterator[Hub]:
    h = make_service_hub(tmp_path, mosquitto_factory)
    yield h
    h.close()


def amqtt_modules_after_import(module: str) -> int:
    snippet = f"import importlib, sys\nimportlib.import_module({module!r})\n{LOADED_PROBE}\n"
    done = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, check=True, timeout=60
    )
    return int(done.stdout.strip())


@pytest.mark.subprocess
def test_importing_the_serve_command_does_not_load_amqtt() -> None:
    assert amqtt_modules_after_import("edgefleet.hub.commands.serve_cmd") == 0
    assert amqtt_modules_after_import("edgefleet.hub.embedded_broker") > 0  # the probe works


def port_listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) == 0


@pytest.mark.parametrize(
    ("embedded", "loads_amqtt"),
    [
        pytest.param(False, False, id="mosquitto"),
        pytest.param(True, True, id="embedded-broker"),
    ],
)
@pytest.mark.mqtt
def test_hub_serve_loads_amqtt_only_with_embedded_broker(
    hub: Hub, embedded: bool, loads_amqtt: bool
) -> None:
    if embedded:
        hub.broker.stop()  # devices must reach the hub's own broker, not mosquitto
        hub.port = free_port()
    text = hub.fx.config_path.read_text().replace("[broker]\n", f"[broker]\nport = {hub.port}\n", 1)
    hub.fx.config_path.write_text(text)
    argv = ["hub", "serve", "--config", str(hub.fx.config_path)]
    if embedded:
        argv.append("--embedded-broker")
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_AND_REPORT, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until("the broker", lambda: port_listens(hub.port) or proc.poll() is not None)
        assert proc.poll() is None, "hub serve exited early"
        device = hub.device("pi-a")
        device.publish(T.status("pi-a"), encode_json(Status(online=True)), retain=True)
        wait_until("status via hub serve", lambda: hub.store.get_device("pi-a").online)  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    assert "serving edgefleet/v1" in stderr
    [report] = [line for line in stderr.splitlines() if line.startswith("amqtt modules loaded:")]
    loaded = int(report.rsplit(":", 1)[1])
    assert (loaded > 0) is loads_amqtt, report

"""A download interrupted by a broker crash or an agent crash resumes, refetching at most one window.

The agent pauses itself (SIGSTOP, test hook) right after the 11th new chunk of the
bundle reached its part file — mid-window, with one chunk not yet persisted — and the
test crashes the broker or the agent there. The hub counts every chunk frame it sends;
a download that resumes instead of starting over sends the bundle's chunks plus at most
one window more.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.fleet import WAIT_S, Fleet
from tests.support.agents import infer
from tests.support.waiting import wait_until

from edgefleet.core.testing.brokers import MosquittoBroker

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

CHUNK = 16 * 1024
WINDOW = 64 * 1024
PAUSE = {"EDGEFLEET_TEST_SYNC_PAUSE_AT": "chunks:11"}


@pytest.fixture
def broker(mosquitto_factory) -> MosquittoBroker:  # type: ignore[no-untyped-def]
    return mosquitto_factory()


@pytest.fixture
def fleet(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Fleet]:
    f = Fleet(tmp_path, broker.host, broker.port, chunk_size=CHUNK, window_bytes=WINDOW)
    f.start_hub()
    yield f
    f.close()


def start_paused_download(fleet: Fleet):  # type: ignore[no-untyped-def]
    (device,) = fleet.enroll(1)
    device.start(PAUSE)
    device.url()
    bundle = fleet.bundle(1, pad_bytes=480 * 1024)
    total = -(-bundle.size // CHUNK)
    assert total > 24  # several windows: the pause lands in the middle
    fleet.rollout(1)
    device.wait_paused()
    return device, bundle, total


def finished_download(fleet: Fleet, device, bundle) -> dict:  # type: ignore[no-untyped-def]
    wait_until(
        f"{device.id} to run the bundle", lambda: fleet.runs(device, bundle), timeout_s=WAIT_S
    )

    def serves_v1() -> bool:
        code, body = infer(device.url())
        return code == 200 and body["model_version"] == "1"

    wait_until(f"{device.id} to serve it", serves_v1, timeout_s=WAIT_S)

    def downloaded() -> dict | None:
        for event in fleet.events(device):
            if event.get("state") == "downloaded" and event.get("bundle_sha256") == bundle.sha256:
                return dict(event["transfer"])
        return None

    return wait_until("the downloaded event at the hub", downloaded, timeout_s=WAIT_S)


def test_broker_crash_mid_download(fleet: Fleet, broker: MosquittoBroker) -> None:
    device, bundle, total = start_paused_download(fleet)
    broker.kill()  # no persistence: every session and retained message is gone
    broker.start()
    device.resume()
    transfer = finished_download(fleet, device, bundle)
    window_chunks = WINDOW // CHUNK
    assert fleet.counter("chunks.sent") <= total + window_chunks
    # The agent counted every byte it received (it never died): duplicates stay within a window.
    assert transfer["duplicate_bytes"] <= WINDOW
    assert transfer["received_bytes"] - bundle.size <= WINDOW


def test_agent_crash_mid_download(fleet: Fleet) -> None:
    device, bundle, total = start_paused_download(fleet)
    device.kill()  # SIGKILL while stopped: nothing runs after the pause point
    held = (device.state_dir / "sync" / "downloads" / f"{bundle.sha256}.json").is_file()
    assert held, "the held-chunk record must be on disk"
    device.start()
    transfer = finished_download(fleet, device, bundle)
    assert transfer["resumed_chunks"] >= 10  # persisted every 2 chunks, paused after the 11th
    assert fleet.counter("chunks.sent") <= total + WINDOW // CHUNK

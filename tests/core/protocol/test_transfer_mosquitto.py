"""The chunk protocol end to end over a real Mosquitto, with a broker restart mid-download.

A minimal hub chunk server and device downloader built only from the protocol module and
the MQTT wrapper: what the agent and hub do, without their stores.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Iterator

import pytest

from edgefleet.core.mqtt import BackoffPolicy, InboundMessage, MqttSettings
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import (
    ChunkPlan,
    DownloadProgress,
    Status,
    Topics,
    decode_chunk,
    decode_fetch,
    decode_status,
    encode_json,
)
from edgefleet.core.testing.brokers import MosquittoBroker

pytestmark = pytest.mark.mqtt

CHUNK = 16 * 1024
WINDOW = 64 * 1024
FAST = BackoffPolicy(initial_s=0.05, max_s=0.5, stable_after_s=0.0)


class ChunkServer:
    """Answers fetch requests; while ``paused`` it drops them (as if the hub were slow)."""

    def __init__(self, client: MqttClient, topics: Topics, bundle: bytes) -> None:
        self.client, self.topics, self.bundle = client, topics, bundle
        self.sha = hashlib.sha256(bundle).hexdigest()
        self.served = 0
        self.paused = threading.Event()
        self.rejected: list[str] = []

    def on_fetch(self, message: InboundMessage) -> None:
        device, _ = self.topics.parse(message.topic, side="device")
        request = decode_fetch(message.payload)
        if request.bundle_sha256 != self.sha or self.paused.is_set():
            return
        plan = ChunkPlan(len(self.bundle), request.chunk_size)
        for index in plan.check_request(request):
            offset = plan.offset(index)
            frame = plan.frame(self.sha, index, self.bundle[offset : offset + plan.length(index)])
            self.client.publish(self.topics.chunk(device), frame.encode())
            self.served += 1


class Downloader:
    def __init__(
        self, client: MqttClient, topics: Topics, device: str, sha: str, size: int
    ) -> None:
        self.client, self.topics, self.device = client, topics, device
        self.progress = DownloadProgress(
            # Long enough that a chunk delayed on a loaded machine is not asked for twice
            # (that would count as a duplicate); a request lost with the broker still
            # comes again within the test's deadline.
            sha,
            size,
            chunk_size=CHUNK,
            window_bytes=WINDOW,
            request_timeout_s=5.0,
        )
        self.file = bytearray(size)
        self.lock = threading.Lock()
        self.done = threading.Event()

    def tick(self) -> None:
        with self.lock:
            request = self.progress.next_request(time.monotonic())
        if request is not None:
            self.client.publish(self.topics.fetch(self.device), encode_json(request))

    def on_connect(self, _session_present: bool) -> None:
        with self.lock:
            # Requests sent before the outage may be lost with the broker's memory.
            self.progress.forget_outstanding()
        self.tick()

    def on_chunk(self, message: InboundMessage) -> None:
        frame = decode_chunk(message.payload)
        with self.lock:
            if self.progress.accept(frame):
                self.file[frame.offset : frame.offset + len(frame.payload)] = frame.payload
            if self.progress.complete:
                self.done.set()
        self.tick()


@pytest.fixture
def clients() -> Iterator[list[MqttClient]]:
    made: list[MqttClient] = []
    yield made
    for client in made:
        client.stop()


def test_download_survives_a_broker_restart_refetching_at_most_one_window(
    mosquitto: MosquittoBroker, clients: list[MqttClient]
) -> None:
    topics = Topics()
    bundle = random.Random(1).randbytes(40 * CHUNK + 123)
    hub = MqttClient(
        MqttSettings(
            host=mosquitto.host,
            port=mosquitto.port,
            client_id="hub",
            clean_session=True,
            backoff=FAST,
        )
    )
    device = MqttClient(
        MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="pi-1", backoff=FAST)
    )
    clients += [hub, device]
    server = ChunkServer(hub, topics, bundle)
    downloader = Downloader(device, topics, "pi-1", server.sha, len(bundle))
    statuses: list[Status] = []
    for topic_filter in topics.hub_subscriptions(shared=False):
        hub.subscribe(
            topic_filter,
            lambda m: (
                server.on_fetch(m)
                if m.topic.endswith("/fetch")
                else statuses.append(decode_status(m.payload))
            ),
        )
    device.subscribe(topics.chunk("pi-1"), downloader.on_chunk)
    device.on_connect(downloader.on_connect)
    hub.start()
    assert hub.wait_subscribed(15)
    # Serve about half the bundle, then stop answering and restart the broker.
    halfway = threading.Event()
    original = server.on_fetch

    def gated(message: InboundMessage) -> None:
        original(message)
        if server.served >= 20 and not halfway.is_set():
            server.paused.set()
            halfway.set()

    server.on_fetch = gated  # type: ignore[method-assign]
    device.start()
    device.publish(topics.status("pi-1"), encode_json(Status(online=True, at=1.0)), retain=True)
    assert halfway.wait(15)
    held_before = downloader.progress.held
    mosquitto.restart()
    server.paused.clear()
    deadline = time.monotonic() + 30
    while not downloader.done.is_set() and time.monotonic() < deadline:
        downloader.tick()  # re-asks for requests that timed out
        time.sleep(0.05)
    assert downloader.done.is_set(), f"download stuck at {downloader.progress.fraction:.0%}"
    assert hashlib.sha256(bytes(downloader.file)).hexdigest() == server.sha
    assert held_before  # the restart really happened mid-download
    duplicates = downloader.progress.duplicates
    assert duplicates * CHUNK <= WINDOW, f"{duplicates} chunks arrived twice"
    assert device.stats.connects >= 2 and hub.stats.handler_errors == 0
    assert statuses and statuses[0].online

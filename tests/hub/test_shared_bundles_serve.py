"""A hub service on PostgreSQL whose bundle folder lacks what another hub published: it
serves the chunks from the store (real mosquitto, a device client with its own
credentials), and drops a fetch of a bundle whose stored bytes are damaged, counted as
``bundle_corrupt``, without writing that bundle to its folder. At start a hub stores the
bytes of bundles recorded before the store held any, from its files."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.hub.servicekit import Hub, T, make_service_hub
from tests.support.waiting import wait_until

from edgefleet.core.protocol import FetchRequest, decode_chunk, encode_json
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.store import DesiredAssignment

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]
CHUNK = 65536


@pytest.fixture
def hub(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    postgres_server: PostgresServer,
) -> Iterator[Hub]:
    url = postgres_server.dsn(postgres_server.create_database())
    h = make_service_hub(tmp_path, mosquitto_factory, store_url=url)
    yield h
    h.close()


def test_a_hub_without_the_files_serves_from_the_store_and_drops_damaged_bytes(
    hub: Hub,
) -> None:
    good = hub.publish_bundle(1, size=200_000)
    bad = hub.publish_bundle(2)
    folder = hub.config.store.bundles_dir
    shutil.rmtree(folder)  # as on a host where hub publish never ran
    with hub.store.transaction():
        hub.store._run(  # type: ignore[attr-defined]
            "UPDATE bundle_blobs SET data=? WHERE sha256=? AND part=0", (b"\0" * 64, bad)
        )
    at = time.time()
    for model, sha in (("digits", good), ("other", bad)):
        size = hub.store.get_bundle(sha).size  # type: ignore[union-attr]
        hub.store.set_assignment("pi-a", model, DesiredAssignment(model, sha, 1, size, "r1"), at)
    service = hub.start()
    device = hub.device("pi-a")
    size = hub.store.get_bundle(good).size  # type: ignore[union-attr]
    total = -(-size // CHUNK)

    device.publish(T.fetch("pi-a"), encode_json(FetchRequest.for_indexes(bad, CHUNK, [0])))
    device.publish(
        T.fetch("pi-a"), encode_json(FetchRequest.for_indexes(good, CHUNK, range(total)))
    )
    frames = {}
    for topic, payload in device.wait_for(
        lambda t, p: t == T.chunk("pi-a") and decode_chunk(p).index == total - 1
    ):
        if topic == T.chunk("pi-a"):
            frame = decode_chunk(payload)
            assert frame.bundle_sha256 == good  # nothing of the damaged bundle
            frames[frame.index] = frame.payload
    data = b"".join(frames[i] for i in range(total))
    assert len(data) == size and hashlib.sha256(data).hexdigest() == good
    wait_until("bundle_corrupt counted", lambda: service.counters.get("bundle_corrupt") == 1)
    cached = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert cached == [f"{good}.efb"]  # the good bundle, now cached; no damaged or half file


def test_hub_serve_stores_the_bytes_of_bundles_published_before_schema_5(hub: Hub) -> None:
    sha = hub.publish_bundle(1)
    with hub.store.transaction():
        hub.store._run("DELETE FROM bundle_blobs", ())  # type: ignore[attr-defined]
    assert hub.store.bundles_without_bytes() == [sha]
    hub.start()
    wait_until("the bytes stored", lambda: hub.store.bundles_without_bytes() == [])
    assert hub.store.has_bundle_bytes(sha, hub.store.get_bundle(sha).size)  # type: ignore[union-attr]

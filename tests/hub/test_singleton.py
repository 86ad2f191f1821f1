"""SingletonWork on a shared PostgreSQL store: one holder of the once-per-fleet work,
release after two ticks without the broker, one hub process per broker client id."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from edgefleet.core.testing.clock import FakeClock
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.errors import HubConfigError
from edgefleet.hub.singleton import LEASE, SingletonWork, lease_ttl
from edgefleet.hub.store import HubStore, open_store

pytestmark = pytest.mark.postgres


@pytest.fixture
def shared(postgres_server: PostgresServer) -> Iterator[HubStore]:
    store = open_store(postgres_server.dsn(postgres_server.create_database()))
    yield store
    store.close()


def test_one_holder_and_a_hub_cut_from_the_broker_lets_go(shared: HubStore) -> None:
    clock = FakeClock(100.0)
    a = SingletonWork(shared, 1.0, shared=True, holder="a", clock=clock)
    b = SingletonWork(shared, 1.0, shared=True, holder="b", clock=clock)
    assert a.claim(True) == (True, 1)
    assert b.claim(True) == (False, None)
    clock.advance(1.5)
    assert a.claim(False) == (True, 1)  # the broker just went: keeps working
    clock.advance(1.5)
    assert a.claim(False) == (True, 1)  # cut for 1.5 s, under two ticks
    clock.advance(1.0)
    assert a.claim(False) == (False, None)  # cut for 2.5 s: released
    assert b.claim(True) == (True, 2)
    assert a.claim(True) == (False, None)  # reconnected: the lease is b's now
    assert lease_ttl(1.0) == 10.0 and lease_ttl(60.0) == 180.0


def test_a_second_hub_with_the_same_client_id_is_refused(shared: HubStore) -> None:
    first = SingletonWork(shared, 1.0, shared=True)
    second = SingletonWork(shared, 1.0, shared=True)
    first.claim_client_id("edgefleet-hub")
    with pytest.raises(HubConfigError, match=f"in use by hub {first.holder}") as refused:
        second.claim_client_id("edgefleet-hub")
    assert "\n" not in str(refused.value)
    second.claim_client_id("edgefleet-hub-2")  # its own id: fine
    first.release_client_id()
    SingletonWork(shared, 1.0, shared=True).claim_client_id("edgefleet-hub")


def test_a_client_id_left_by_a_dead_process_of_this_host_is_taken_over(
    shared: HubStore,
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = SingletonWork(shared, 1.0, shared=True, holder=f"{socket.gethostname()}:{gone.pid}:x")
    dead.claim_client_id("edgefleet-hub")  # then kill -9: never released
    SingletonWork(shared, 1.0, shared=True).claim_client_id("edgefleet-hub")
    elsewhere = SingletonWork(shared, 1.0, shared=True, holder="other-host:1:y")
    elsewhere.claim_client_id("hub-x")  # another host's process: cannot be checked, kept
    with pytest.raises(HubConfigError, match="other-host"):
        SingletonWork(shared, 1.0, shared=True).claim_client_id("hub-x")


def test_on_sqlite_the_one_hub_always_holds_the_work(tmp_path: object) -> None:
    from pathlib import Path

    store = open_store(Path(str(tmp_path)) / "hub.db")
    try:
        work = SingletonWork(store, 1.0, shared=False)
        assert work.claim(False) == (True, None)
        work.claim_client_id("anything")
        assert store.lease_holder(LEASE) is None
    finally:
        store.close()

"""Bundle bytes in the hub store (schema 5), on both engines: a bundle published through
one store handle is served by a hub whose bundle folder is empty (a second store object,
a second folder), materialised whole or not at all; damaged stored bytes are refused;
republishing writes nothing twice; two hubs storing the same bytes at once both succeed;
schema 4 stores are migrated; a deleted bundle row takes its bytes with it; temporary
files a dead process left are removed.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.hub.hubkit import HubFixture, make_hub
from tests.support.bundles import placeholder_bundle

from edgefleet.core.bundle_writer import BundleInfo
from edgefleet.core.trust import TrustStore
from edgefleet.hub.bundles import STALE_TEMP_S, PublishedBundleStore
from edgefleet.hub.enrollment import publisher_trust
from edgefleet.hub.errors import CorruptBundleError, HubStoreError
from edgefleet.hub.store import BundleRecord, HubStore, open_store
from edgefleet.hub.store.schema import SCHEMA_VERSION
from edgefleet.hub.store.sql_blobs import BLOB_PART_BYTES

# Two full parts and a short one.
PAYLOAD = 2 * BLOB_PART_BYTES + 12345


@pytest.fixture
def hub(tmp_path: Path) -> HubFixture:
    return make_hub(tmp_path / "hub")


@pytest.fixture
def trust(hub: HubFixture) -> TrustStore:
    return publisher_trust(hub.config())


@pytest.fixture
def bundle(hub: HubFixture, tmp_path: Path) -> BundleInfo:
    return placeholder_bundle(tmp_path / "d1.efb", hub.publisher_key, payload_bytes=PAYLOAD)


@pytest.fixture
def second(store_location: Path | str) -> Iterator[HubStore]:
    """Another hub's handle on the same store."""
    store = open_store(store_location)
    yield store
    store.close()


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def blob_rows(store: HubStore, sha256: str) -> int:
    row = store._one("SELECT COUNT(*) AS n FROM bundle_blobs WHERE sha256=?", (sha256,))  # type: ignore[attr-defined]
    return int(row["n"])


def test_a_hub_with_an_empty_folder_serves_a_bundle_published_elsewhere(
    any_store: HubStore,
    second: HubStore,
    trust: TrustStore,
    bundle: BundleInfo,
    tmp_path: Path,
) -> None:
    published = PublishedBundleStore(tmp_path / "host-a", any_store).publish(
        bundle.path, trust, 10.0
    )
    assert published.created and blob_rows(any_store, bundle.sha256) == 3
    data = bundle.path.read_bytes()
    other = PublishedBundleStore(tmp_path / "host-b", second)
    try:
        assert (
            other.read_range(bundle.sha256, BLOB_PART_BYTES - 10, 20)
            == data[BLOB_PART_BYTES - 10 : BLOB_PART_BYTES + 10]
        )
        assert other.read_range(bundle.sha256, len(data) - 5, 100) == data[-5:]
    finally:
        other.close()
    # The folder is now a cache holding exactly the bundle's bytes, and no temporary file.
    assert files_in(tmp_path / "host-b") == [other.path_for(bundle.sha256)]
    assert other.path_for(bundle.sha256).read_bytes() == data


def test_republishing_writes_no_bytes_twice_and_fills_an_older_record(
    any_store: HubStore, trust: TrustStore, bundle: BundleInfo, tmp_path: Path
) -> None:
    bundles = PublishedBundleStore(tmp_path / "bundles", any_store)
    assert bundles.publish(bundle.path, trust, 10.0).created
    again = bundles.publish(bundle.path, trust, 20.0)
    assert not again.created and again.bundle.published_at == 10.0
    assert blob_rows(any_store, bundle.sha256) == 3
    # A record written before the store held bytes: publishing again stores them.
    with any_store.transaction():
        any_store._run("DELETE FROM bundle_blobs", ())  # type: ignore[attr-defined]
    assert any_store.bundles_without_bytes() == [bundle.sha256]
    assert not bundles.publish(bundle.path, trust, 30.0).created
    assert any_store.bundles_without_bytes() == []
    assert any_store.has_bundle_bytes(bundle.sha256, bundle.path.stat().st_size)


def test_bytes_that_are_not_the_record_are_refused_and_nothing_is_stored(
    any_store: HubStore, bundle: BundleInfo, tmp_path: Path
) -> None:
    size = bundle.path.stat().st_size
    record = BundleRecord(bundle.sha256, "digits", 1, None, size, "x", {}, (), 1.0)
    wrong = tmp_path / "wrong.efb"
    data = bytearray(bundle.path.read_bytes())
    data[BLOB_PART_BYTES + 7] ^= 0x01  # same size, second part differs
    wrong.write_bytes(bytes(data))
    with open(wrong, "rb") as source, pytest.raises(HubStoreError, match="are not it"):
        any_store.add_bundle_with_bytes(record, source)
    assert any_store.get_bundle(bundle.sha256) is None
    assert blob_rows(any_store, bundle.sha256) == 0


def test_damaged_bytes_in_the_store_are_refused_never_written_to_the_folder(
    any_store: HubStore,
    second: HubStore,
    trust: TrustStore,
    bundle: BundleInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    PublishedBundleStore(tmp_path / "host-a", any_store).publish(bundle.path, trust, 10.0)
    with any_store.transaction():
        any_store._run(  # type: ignore[attr-defined]
            "UPDATE bundle_blobs SET data=? WHERE sha256=? AND part=1",
            (b"\0" * BLOB_PART_BYTES, bundle.sha256),
        )
    other = PublishedBundleStore(tmp_path / "host-b", second)
    with pytest.raises(CorruptBundleError, match="do not match"):
        other.read_range(bundle.sha256, 0, 10)
    assert files_in(tmp_path / "host-b") == []
    # Refused again at once, without reading tens of MB from the store for every retry.
    reads: list[str] = []
    monkeypatch.setattr(second, "bundle_parts", lambda sha: reads.append(sha) or iter(()))
    with pytest.raises(CorruptBundleError, match="refused recently"):
        other.read_range(bundle.sha256, 0, 10)
    assert reads == []


def test_an_interrupted_materialisation_leaves_no_file_and_the_next_one_completes(
    any_store: HubStore,
    second: HubStore,
    trust: TrustStore,
    bundle: BundleInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    PublishedBundleStore(tmp_path / "host-a", any_store).publish(bundle.path, trust, 10.0)
    real_parts = second.bundle_parts

    def cut_after_one_part(sha256: str) -> Iterator[bytes]:
        parts = real_parts(sha256)
        yield next(parts)
        raise HubStoreError("connection lost")

    monkeypatch.setattr(second, "bundle_parts", cut_after_one_part)
    other = PublishedBundleStore(tmp_path / "host-b", second)
    with pytest.raises(HubStoreError, match="connection lost"):
        other.read_range(bundle.sha256, 0, 10)
    assert files_in(tmp_path / "host-b") == []  # no half file, no temporary file
    monkeypatch.setattr(second, "bundle_parts", real_parts)
    assert other.read_range(bundle.sha256, 0, 10) == bundle.path.read_bytes()[:10]
    other.close()


def test_concurrent_first_reads_materialise_once(
    any_store: HubStore,
    second: HubStore,
    trust: TrustStore,
    bundle: BundleInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    PublishedBundleStore(tmp_path / "host-a", any_store).publish(bundle.path, trust, 10.0)
    real_parts = second.bundle_parts
    calls: list[str] = []

    def counted(sha256: str) -> Iterator[bytes]:
        calls.append(sha256)
        return real_parts(sha256)

    monkeypatch.setattr(second, "bundle_parts", counted)
    other = PublishedBundleStore(tmp_path / "host-b", second)
    got: list[Path] = []
    threads = [
        threading.Thread(target=lambda: got.append(other.local_path(bundle.sha256)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 4 and len(set(got)) == 1 and calls == [bundle.sha256]


def test_a_deleted_bundle_row_takes_its_bytes(
    any_store: HubStore, trust: TrustStore, bundle: BundleInfo, tmp_path: Path
) -> None:
    PublishedBundleStore(tmp_path / "bundles", any_store).publish(bundle.path, trust, 10.0)
    with any_store.transaction():
        any_store._run("DELETE FROM bundles WHERE sha256=?", (bundle.sha256,))  # type: ignore[attr-defined]
    assert blob_rows(any_store, bundle.sha256) == 0


def to_schema_4(location: Path | str) -> None:
    """Put a store back to the layout of schema 4 (no bundle_blobs), as an older hub left it."""
    if isinstance(location, Path):
        import sqlite3

        db = sqlite3.connect(location)
        db.execute("DROP TABLE bundle_blobs")
        db.execute("UPDATE meta SET value='4' WHERE key='schema'")
        db.commit()
        db.close()
    else:
        import psycopg

        with psycopg.connect(location) as conn:
            conn.execute("DROP TABLE bundle_blobs")
            conn.execute("UPDATE meta SET value='4' WHERE key='schema'")


def test_a_schema_4_store_gains_bundle_bytes_from_the_hub_holding_the_files(
    store_location: Path | str, trust: TrustStore, bundle: BundleInfo, tmp_path: Path
) -> None:
    store = open_store(store_location)
    PublishedBundleStore(tmp_path / "host-a", store).publish(bundle.path, trust, 10.0)
    store.close()
    to_schema_4(store_location)
    store = open_store(store_location)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 6
        assert store.get_bundle(bundle.sha256) is not None  # rows kept
        assert store.bundles_without_bytes() == [bundle.sha256]
        # A hub without the file cannot fill it; the hub that has it does.
        assert PublishedBundleStore(tmp_path / "host-b", store).store_missing_bytes() == (
            [],
            [bundle.sha256],
        )
        assert PublishedBundleStore(tmp_path / "host-a", store).store_missing_bytes() == (
            [bundle.sha256],
            [],
        )
        assert blob_rows(store, bundle.sha256) == 3
    finally:
        store.close()


def test_temporary_files_a_dead_process_left_are_removed_once_old(
    any_store: HubStore, tmp_path: Path
) -> None:
    bundles = PublishedBundleStore(tmp_path / "bundles", any_store)
    (tmp_path / "bundles" / "ab").mkdir(parents=True)
    old = tmp_path / "bundles" / "ab" / ".fetching-x.efb"
    fresh = tmp_path / "bundles" / ".incoming-y.efb"
    other = tmp_path / "bundles" / ".keep"
    for path in (old, fresh, other):
        path.write_bytes(b"half")
    os.utime(old, (1000.0, 1000.0))
    os.utime(other, (1000.0, 1000.0))
    assert bundles.remove_stale_temporaries(1000.0 + STALE_TEMP_S + 1) == 1
    assert not old.exists() and fresh.exists() and other.exists()


class SlowSource(io.BytesIO):
    """A file that takes its time, so two writers overlap."""

    def read(self, n: int | None = -1) -> bytes:
        time.sleep(0.05)
        return super().read(n)


def test_two_hubs_storing_the_same_missing_bytes_at_once_both_succeed(
    any_store: HubStore, second: HubStore
) -> None:
    data = os.urandom(2 * BLOB_PART_BYTES + 1)
    sha = hashlib.sha256(data).hexdigest()
    record = BundleRecord(sha, "digits", 1, None, len(data), "x", {}, (), 1.0)
    any_store.add_bundle(record)  # recorded before the store held bytes
    errors: list[BaseException] = []

    def store_from(handle: HubStore) -> None:
        try:
            handle.add_bundle_with_bytes(record, SlowSource(data))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=store_from, args=(h,)) for h in (any_store, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert b"".join(second.bundle_parts(sha)) == data and blob_rows(any_store, sha) == 3


def test_a_hub_that_never_saw_a_bundle_finds_its_drift_reference(
    hub: HubFixture, any_store: HubStore, second: HubStore, trust: TrustStore, tmp_path: Path
) -> None:
    """The lease holder scores drift against the reference of a bundle another hub
    published: the loader writes the file into its own folder from the store."""
    import numpy as np

    from edgefleet.core.drift import ReferenceProfile
    from edgefleet.hub.fleet.references import bundle_loaders

    rows = np.random.default_rng(3).normal(0, 1, (40, 2))
    profile = ReferenceProfile.build(rows, ["a", "b"])
    bundle = placeholder_bundle(
        tmp_path / "ref.efb", hub.publisher_key, reference=profile.to_json().encode()
    )
    PublishedBundleStore(tmp_path / "host-a", any_store).publish(bundle.path, trust, 10.0)
    other = PublishedBundleStore(tmp_path / "host-b", second)
    try:
        reference, _ = bundle_loaders(second, other.local_path)
        loaded = reference("digits", 1)
    finally:
        other.close()
    assert loaded is not None and loaded.profile_id == profile.profile_id
    assert files_in(tmp_path / "host-b") == [other.path_for(bundle.sha256)]

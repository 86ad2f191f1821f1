"""Bundle bytes in the hub store (table ``bundle_blobs``), shared by both engines.

A bundle's bytes are stored as rows of :data:`BLOB_PART_BYTES` each, numbered from 0, so
every hub on a shared store can serve any bundle and none holds a whole bundle in memory
to write or read it. Invariants:

- a bundle record and its bytes are written in one transaction
  (:meth:`SqlBlobMixin.add_bundle_with_bytes`): a record never names bytes the store
  lacks, except for records written before schema 5 (see :meth:`bundles_without_bytes`);
- what is written is checked on the way in: the parts' sha256 and length must be the
  record's, else nothing of the transaction stays;
- bytes already stored are never written again (publishing twice costs one query);
- :meth:`bundle_parts` yields the parts in order and fails on a gap; checking the digest
  of what it yields is the reader's job (the bytes may have been damaged since);
- a deleted ``bundles`` row takes its parts with it (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, BinaryIO

from edgefleet.hub.errors import HubNotFoundError, HubStoreError
from edgefleet.hub.store.records import BundleRecord
from edgefleet.hub.store.rows import Row

# 1 MiB: a bundle of tens of MB is tens of rows, each far below both engines' limits.
BLOB_PART_BYTES = 1 << 20


class SqlBlobMixin:
    """The ``bundle_blobs`` queries; needs the engine's query helpers and ``add_bundle``."""

    if TYPE_CHECKING:
        where: str

        def transaction(self) -> AbstractContextManager[None]: ...

        def _run(self, sql: str, params: Sequence[Any] = ()) -> int: ...

        def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

        def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

        def add_bundle(self, bundle: BundleRecord) -> bool: ...

    def add_bundle_with_bytes(self, bundle: BundleRecord, source: BinaryIO) -> bool:
        """Record ``bundle`` and store its bytes, read from ``source``, in one transaction.

        True when the record is new. When the store holds the bytes already, ``source``
        is not read. Raises ``HubStoreError`` (nothing written) when what ``source`` holds
        is not the record's size and sha256.
        """
        with self.transaction():
            created = self.add_bundle(bundle)
            if not self._holds_bytes(bundle.sha256, bundle.size):
                # Parts that do not add up (a row damaged by hand) are replaced whole.
                self._run("DELETE FROM bundle_blobs WHERE sha256=?", (bundle.sha256,))
                self._write_parts(bundle, source)
            return created

    def has_bundle_bytes(self, sha256: str, size: int) -> bool:
        """Whether the store holds ``size`` bytes for ``sha256`` in parts without a gap."""
        return self._holds_bytes(sha256, size)

    def bundle_parts(self, sha256: str) -> Iterator[bytes]:
        """The stored bytes of a bundle, part by part (one part in memory at a time)."""
        head = self._one(
            "SELECT COUNT(*) AS parts, MAX(part) AS last FROM bundle_blobs WHERE sha256=?",
            (sha256,),
        )
        parts = int(head["parts"]) if head is not None else 0
        if parts == 0:
            raise HubNotFoundError(f"{self.where}: bundle {sha256} has no bytes in the store")
        if head is None or int(head["last"]) != parts - 1:
            raise HubStoreError(f"{self.where}: bundle {sha256} has parts missing in the store")
        for part in range(parts):
            row = self._one(
                "SELECT data FROM bundle_blobs WHERE sha256=? AND part=?", (sha256, part)
            )
            if row is None:  # deleted while being read
                raise HubStoreError(f"{self.where}: bundle {sha256} lost part {part}")
            yield bytes(row["data"])

    def bundles_without_bytes(self) -> list[str]:
        """The bundles recorded without bytes in the store (published before schema 5)."""
        rows = self._all(
            "SELECT sha256 FROM bundles b WHERE NOT EXISTS"
            " (SELECT 1 FROM bundle_blobs p WHERE p.sha256 = b.sha256) ORDER BY sha256"
        )
        return [r["sha256"] for r in rows]

    def _holds_bytes(self, sha256: str, size: int) -> bool:
        row = self._one(
            "SELECT COUNT(*) AS parts, MAX(part) AS last,"
            " COALESCE(SUM(LENGTH(data)), 0) AS bytes FROM bundle_blobs WHERE sha256=?",
            (sha256,),
        )
        if row is None or int(row["parts"]) == 0:
            return size == 0
        return int(row["bytes"]) == size and int(row["last"]) == int(row["parts"]) - 1

    def _write_parts(self, bundle: BundleRecord, source: BinaryIO) -> None:
        digest = hashlib.sha256()
        size = 0
        part = 0
        while block := source.read(BLOB_PART_BYTES):
            digest.update(block)
            size += len(block)
            if size > bundle.size:
                break
            self._run(
                # Another hub storing the same bundle at once (PostgreSQL) commits
                # first; its parts are these bytes (same name, same part size).
                "INSERT INTO bundle_blobs (sha256, part, data) VALUES (?,?,?)"
                " ON CONFLICT (sha256, part) DO NOTHING",
                (bundle.sha256, part, block),
            )
            part += 1
        if size != bundle.size or digest.hexdigest() != bundle.sha256:
            raise HubStoreError(
                f"{self.where}: the bytes given for bundle {bundle.sha256[:16]} are not it"
                f" ({size} bytes, sha256 {digest.hexdigest()[:16]}); nothing stored"
            )

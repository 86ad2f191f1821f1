"""The hub's content-addressed bundle store: bytes in the hub store, files as its cache.

``hub publish FILE`` records the bundle in the hub store together with its bytes (in
parts, :mod:`edgefleet.hub.store.sql_blobs`) and copies it into
``bundles_dir/<sha[:2]>/<sha>.efb``, the local cache chunks are read from. A hub whose
cache lacks a bundle (another host published it) materialises the file from the store
on the first read. Invariants:

- a bundle is verified (publisher signatures to the configured threshold,
  every member's size and sha256) on the *copy* inside the store, not on the
  caller's file, so what was verified is exactly what is served; the verifier
  applies the trust rules through ``edgefleet.core.signed_manifest``, their one
  home, and this module takes its answer as it is;
- the record and its bytes are written in one store transaction, after the copy
  verified, and the store checks the bytes' sha256 again on the way in; a rejected
  bundle leaves nothing behind, in the store or the folder;
- a file lands under its final name only when its bytes are known good (temporary
  name + fsync + rename): after it verified at publish, or after a materialisation from
  the store hashed to its name. A digest that does not match (bytes damaged in the
  store) is :class:`CorruptBundleError`, never a file, and that bundle is not read
  from the store again for :data:`REFUSE_S`;
- materialisations in one process run one at a time (a second fetch of the same
  bundle waits and then finds the file); processes sharing a folder each write their
  own temporary file and rename the same bytes into place; a temporary file left by a
  process that died is removed by the next ``hub serve`` once it is an hour old;
- publishing the same bytes twice is a no-op that reports the existing record (it
  stores the bytes if the record predates them);
- a chunk read never goes past the end of the file and never opens a path
  derived from anything but a stored sha256;
- a bundle file is immutable once stored (its name is its sha256), so an open
  file handle stays valid for as long as it is kept: the chunk server keeps a
  few open (:meth:`PublishedBundleStore.read_range`) instead of opening the file for
  every chunk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from edgefleet.core.bundle_verifier import BundleVerifier
from edgefleet.core.durable import fsync_dir
from edgefleet.core.errors import BundleError, SignatureError
from edgefleet.core.trust import TrustStore
from edgefleet.hub.errors import (
    CorruptBundleError,
    HubNotFoundError,
    HubStoreError,
    PublishRejectedError,
)
from edgefleet.hub.store import BundleRecord, HubStore

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COPY_BLOCK = 1 << 20
# Bundle files kept open for chunk reads (least recently used closed first).
OPEN_FILES = 16
# A bundle whose stored bytes did not hash to its name is not read again for this long
# (every device's retry would otherwise read tens of MB from the store).
REFUSE_S = 60.0
# Temporary files older than this were left by a process that died mid-write (kill -9,
# power cut): no publish or materialisation takes that long.
STALE_TEMP_S = 3600.0
_TEMP_PREFIXES = (".incoming-", ".fetching-")

log = logging.getLogger("edgefleet.hub")


@dataclass(frozen=True)
class PublishResult:
    bundle: BundleRecord
    created: bool  # False when the same bytes were already published


class PublishedBundleStore:
    """Bundles in the hub store, cached as files under ``root`` (chunks are read from those)."""

    def __init__(self, root: Path, store: HubStore) -> None:
        self.root = Path(root)
        self.store = store
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._fd_lock = threading.Lock()
        self._materialise_lock = threading.Lock()
        self._refused: dict[str, float] = {}  # sha256 -> monotonic time it may be retried

    def path_for(self, sha256: str) -> Path:
        if not _SHA256_RE.fullmatch(sha256):
            raise HubNotFoundError(f"not a bundle sha256: {sha256[:80]!r}")
        return self.root / sha256[:2] / f"{sha256}.efb"

    def publish(self, source: Path, trust: TrustStore, now: float) -> PublishResult:
        """Verify ``source`` against ``trust``'s publisher keys and store it."""
        if not trust.publisher_keys:
            raise PublishRejectedError("no trusted publisher keys configured (keys.publisher_keys)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-", suffix=".efb")
        except OSError as e:
            raise HubStoreError(f"cannot write to bundle store {self.root}: {e.strerror}") from e
        tmp = Path(tmp_name)
        try:
            digest = _copy_and_hash(source, fd)
            try:
                verified = BundleVerifier(trust).verify(tmp, expected_sha256=digest)
            except (BundleError, SignatureError) as e:
                raise PublishRejectedError(f"{source}: {e}") from e
            final = self.path_for(verified.sha256)
            manifest = verified.manifest
            record = BundleRecord(
                sha256=verified.sha256,
                model=manifest.name,
                version=manifest.version,
                profile=_profile_of(manifest.target),
                size=verified.size,
                path=str(final.relative_to(self.root)),
                manifest=manifest.to_dict(),
                signer_keyids=tuple(verified.signer_keyids),
                published_at=now,
            )
            with open(tmp, "rb") as verified_copy:
                created = self.store.add_bundle_with_bytes(record, verified_copy)
            if not final.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                fsync_dir(final.parent, best_effort=True)
            return PublishResult(record if created else self._require(record.sha256), created)
        except OSError as e:
            raise HubStoreError(f"cannot store bundle {source}: {e.strerror or e}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def _require(self, sha256: str) -> BundleRecord:
        record = self.store.get_bundle(sha256)
        if record is None:
            raise HubNotFoundError(f"no published bundle {sha256}")
        return record

    def get(self, sha256: str) -> BundleRecord:
        return self._require(sha256)

    def read_range(self, sha256: str, offset: int, length: int) -> bytes:
        """Bytes ``offset .. offset + length`` of a stored bundle (shorter at the end).

        The file stays open for later reads. The read happens under the lock that
        closes files, so an fd is never closed (and its number reused) mid-read.
        """
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        if sha256 not in self._fds:  # unlocked peek: at worst one extra stat
            self.local_path(sha256)
        with self._fd_lock:
            fd = self._open(sha256)
            try:
                return os.pread(fd, length, offset)
            except OSError as e:
                raise HubStoreError(f"cannot read bundle {sha256}: {e.strerror}") from e

    def local_path(self, sha256: str) -> Path:
        """The bundle's file in this hub's folder, materialised from the store if missing."""
        final = self.path_for(sha256)
        if final.exists():
            return final
        with self._materialise_lock:
            if final.exists():  # another thread materialised it while we waited
                return final
            retry_at = self._refused.get(sha256)
            if retry_at is not None and time.monotonic() < retry_at:
                raise CorruptBundleError(
                    f"bundle {sha256}: its bytes in the store do not match its sha256"
                    " (refused recently; republish the bundle)"
                )
            record = self._require(sha256)
            try:
                self._materialise(record, final)
            except CorruptBundleError:
                self._refused[sha256] = time.monotonic() + REFUSE_S
                raise
            self._refused.pop(sha256, None)
        log.info("hub: bundle %s fetched from the store into %s", sha256[:16], self.root)
        return final

    def _materialise(self, record: BundleRecord, final: Path) -> None:
        """Write the stored bytes of ``record`` to ``final``: all of them, or nothing."""
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".fetching-", suffix=".efb")
        except OSError as e:
            raise HubStoreError(f"cannot write to bundle store {self.root}: {e.strerror}") from e
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for part in self.store.bundle_parts(record.sha256):
                    size += len(part)
                    if size > record.size:
                        break
                    digest.update(part)
                    out.write(part)
                out.flush()
                os.fsync(out.fileno())
            if size != record.size or digest.hexdigest() != record.sha256:
                raise CorruptBundleError(
                    f"bundle {record.sha256}: its bytes in the store ({size} bytes, sha256"
                    f" {digest.hexdigest()[:16]}) do not match it; republish the bundle"
                )
            os.replace(tmp, final)
            fsync_dir(final.parent, best_effort=True)
        except OSError as e:
            raise HubStoreError(f"cannot write bundle {record.sha256}: {e.strerror or e}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def store_missing_bytes(self) -> tuple[list[str], list[str]]:
        """Store the bytes of bundles recorded without them (published before schema 5)
        from this hub's files; (stored, still missing: no good file here)."""
        stored: list[str] = []
        missing: list[str] = []
        for sha256 in self.store.bundles_without_bytes():
            record = self.store.get_bundle(sha256)
            if record is None:
                continue
            try:
                with open(self.path_for(sha256), "rb") as source:
                    self.store.add_bundle_with_bytes(record, source)
            except (OSError, HubStoreError):
                if not self.store.has_bundle_bytes(sha256, record.size):
                    missing.append(sha256)  # no file here, or not these bytes
                continue
            stored.append(sha256)
        return stored, missing

    def remove_stale_temporaries(self, now: float) -> int:
        """Delete temporary files a dead process left (older than :data:`STALE_TEMP_S`);
        how many. They never carry a bundle's name, so nothing ever served them."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for path in (*self.root.glob(".*"), *self.root.glob("??/.*")):
            if not path.name.startswith(_TEMP_PREFIXES):
                continue
            try:
                if now - path.stat().st_mtime > STALE_TEMP_S:
                    path.unlink()
                    removed += 1
            except OSError:
                continue  # gone meanwhile, or not ours to remove
        return removed

    def close(self) -> None:
        """Close the bundle files kept open for chunk reads."""
        with self._fd_lock:
            fds, self._fds = list(self._fds.values()), OrderedDict()
        for fd in fds:
            os.close(fd)

    def _open(self, sha256: str) -> int:
        """The open fd of a bundle; the caller holds ``_fd_lock``."""
        fd = self._fds.get(sha256)
        if fd is not None:
            self._fds.move_to_end(sha256)
            return fd
        path = self.path_for(sha256)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as e:
            raise HubNotFoundError(f"no published bundle {sha256}") from e
        except OSError as e:
            raise HubStoreError(f"cannot read bundle {sha256}: {e.strerror}") from e
        self._fds[sha256] = fd
        while len(self._fds) > OPEN_FILES:
            _, oldest = self._fds.popitem(last=False)
            os.close(oldest)
        return fd


def _profile_of(target: object) -> str | None:
    if isinstance(target, dict) or hasattr(target, "get"):
        value = target.get("profile")  # type: ignore[union-attr]
        return str(value) if value else None
    return None


def _copy_and_hash(source: Path, fd: int) -> str:
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            while block := src.read(_COPY_BLOCK):
                digest.update(block)
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
    except FileNotFoundError as e:
        raise HubNotFoundError(f"{source}: no such bundle file") from e
    except IsADirectoryError as e:
        raise HubNotFoundError(f"{source}: is a directory, not a bundle file") from e
    return digest.hexdigest()

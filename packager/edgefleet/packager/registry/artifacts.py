"""Content-addressed artifact folder: ``artifacts/ab/abcdef...`` named by SHA-256.

Invariants:

- a file under ``artifacts/`` is complete and its name is the SHA-256 of its
  bytes: writes go to ``tmp/`` first, are fsynced, then renamed into place;
- identical content is stored once; :meth:`ArtifactStore.put_bytes` says
  whether it created the file, so a failed registration removes only what it
  added and never an artifact another version shares.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgefleet.packager.errors import RegistryStorageError

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class StoredArtifact:
    """Result of a put: the content hash and whether this call created the file."""

    sha256: str
    size: int
    created: bool


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore:
    """Artifacts of one registry, under ``root/artifacts``."""

    def __init__(self, root: Path) -> None:
        self.root = root / "artifacts"
        self._tmp = root / "tmp"

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or not set(sha256) <= _HEX:
            raise RegistryStorageError(f"not a SHA-256 artifact name: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put_bytes(self, data: bytes) -> StoredArtifact:
        sha = sha256_bytes(data)
        final = self.path_for(sha)
        if final.is_file():
            return StoredArtifact(sha, len(data), created=False)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=sha[:8] + ".")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp_name, final)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise RegistryStorageError(f"cannot write artifact {sha[:12]}: {e}") from e
        return StoredArtifact(sha, len(data), created=True)

    def read_bytes(self, sha256: str) -> bytes:
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise RegistryStorageError(f"artifact {sha256[:12]} is missing: {e}") from e
        if sha256_bytes(data) != sha256:
            # Someone edited the folder by hand; never hand out bytes under a false name.
            raise RegistryStorageError(f"artifact {sha256[:12]} is corrupt (hash mismatch)")
        return data

    def remove(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)

"""Resumable chunked download of one bundle into the state directory.

Files, per bundle (``DIR`` is ``STATE_DIR/sync/downloads``)::

    DIR/SHA.part    the bundle being assembled; chunk i lives at i * chunk_size
    DIR/SHA.json    {"progress": DownloadProgress.to_dict(), "received_bytes", "duplicate_bytes"}
    DIR/SHA.efb     the finished file, size and sha256 checked against the directive

Invariants:

- A chunk counts as held on disk only once its bytes are durable: the part file is
  fdatasync'ed BEFORE the progress record naming it is atomically replaced. A crash
  (kill -9, power loss) can lose chunks received since the last persist, never mark
  a chunk held whose bytes are missing.
- The progress is persisted at least every ``persist_every`` new chunks (half a window
  by default) and when the last chunk arrives, so after a restart at most half a
  window of chunks is fetched again; nothing held is ever asked for again
  (:class:`~edgefleet.core.protocol.DownloadProgress` never requests a held chunk).
- The sha256 is computed as the chunks arrive while they arrive in order (the usual
  case); ``finish`` reads back from the part file only what was not hashed that way
  (everything after the first chunk that came out of order, or everything after a
  restart). Both hash the bytes written to the part file.
- ``SHA.efb`` appears only by rename after its size and sha256 matched; a mismatch
  deletes the part and progress files (the next attempt starts from zero) and raises
  :class:`DownloadMismatchError`. The bundle's signatures are checked later, by the
  deployment driver's verifier: the hash only proves it is the bundle the signed
  directive names.
- Frames of another bundle are ignored; a frame that claims this bundle with the
  wrong geometry raises ProtocolError(side="hub") and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from edgefleet.agent.deploy.atomic_files import atomic_write_json, durable_rename, remove_path
from edgefleet.agent.errors import BundleRejectedError
from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol import ChunkFrame, DownloadProgress, FetchRequest

log = logging.getLogger("edgefleet.agent.sync")

_HASH_BLOCK = 1 << 20


class DownloadMismatchError(BundleRejectedError):
    """The assembled file is not the bundle the directive names (size or sha256)."""


class BundleDownload:
    """One bundle on its way from the hub; the caller serialises every call."""

    def __init__(
        self,
        directory: Path,
        bundle_sha256: str,
        size: int,
        *,
        chunk_size: int,
        window_bytes: int,
        request_timeout_s: float,
        persist_every: int,
    ) -> None:
        self.directory = Path(directory)
        self.sha = bundle_sha256
        self.size = size
        self.persist_every = max(1, persist_every)
        self.received_bytes = 0  # every payload byte that arrived for this bundle
        self.duplicate_bytes = 0  # of those, bytes of chunks already held
        self.resumed_chunks = 0  # held chunks found on disk when opened
        self._unpersisted = 0
        self._fd: int | None = None
        # sha256 of the part file's bytes [0, _hashed_to), fed by in-order chunks.
        self._digest = hashlib.sha256()
        self._hashed_to = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._finished = self.final_path.is_file()
        self.progress = self._restore(chunk_size, window_bytes, request_timeout_s)

    # --- paths ------------------------------------------------------------------
    @property
    def part_path(self) -> Path:
        return self.directory / f"{self.sha}.part"

    @property
    def record_path(self) -> Path:
        return self.directory / f"{self.sha}.json"

    @property
    def final_path(self) -> Path:
        return self.directory / f"{self.sha}.efb"

    # --- restore / persist --------------------------------------------------------
    def _fresh(self, chunk_size: int, window_bytes: int, timeout_s: float) -> DownloadProgress:
        remove_path(self.part_path)
        remove_path(self.record_path)
        return DownloadProgress(
            self.sha,
            self.size,
            chunk_size=chunk_size,
            window_bytes=window_bytes,
            request_timeout_s=timeout_s,
        )

    def _restore(self, chunk_size: int, window_bytes: int, timeout_s: float) -> DownloadProgress:
        if self._finished:
            remove_path(self.part_path)
            remove_path(self.record_path)
            total = (self.size + chunk_size - 1) // chunk_size
            return DownloadProgress(  # the finished file holds every chunk
                self.sha,
                self.size,
                chunk_size=chunk_size,
                window_bytes=window_bytes,
                held=range(total),
                request_timeout_s=timeout_s,
            )
        try:
            data = json.loads(self.record_path.read_text(encoding="utf-8"))
            progress = DownloadProgress.from_dict(data["progress"], request_timeout_s=timeout_s)
            if (
                progress.bundle_sha256 != self.sha
                or progress.plan.size != self.size
                or progress.plan.chunk_size != chunk_size
                or not self.part_path.is_file()
            ):
                raise ValueError("geometry changed or part file missing")
            # The window may change between runs (settings); the held chunks stay valid.
            progress = DownloadProgress(
                self.sha,
                self.size,
                chunk_size=chunk_size,
                window_bytes=window_bytes,
                held=progress.held,
                request_timeout_s=timeout_s,
            )
            self.received_bytes = int(data.get("received_bytes", 0))
            self.duplicate_bytes = int(data.get("duplicate_bytes", 0))
        except FileNotFoundError:
            return self._fresh(chunk_size, window_bytes, timeout_s)
        except (OSError, ValueError, KeyError, TypeError, ProtocolError) as e:
            log.warning("download of %s starts over: %s", self.sha[:12], e)
            return self._fresh(chunk_size, window_bytes, timeout_s)
        self.resumed_chunks = len(progress.held)
        if self.resumed_chunks:
            log.info(
                "download of %s resumes with %d of %d chunks held",
                self.sha[:12],
                self.resumed_chunks,
                progress.plan.total_chunks,
            )
        return progress

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o640)
        return self._fd

    def persist(self) -> None:
        """Make every chunk accepted so far durable and record it as held."""
        if self._fd is not None:
            os.fdatasync(self._fd)
        atomic_write_json(
            self.record_path,
            {
                "progress": self.progress.to_dict(),
                "received_bytes": self.received_bytes,
                "duplicate_bytes": self.duplicate_bytes,
            },
        )
        self._unpersisted = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- transfer -------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.progress.complete

    @property
    def fraction(self) -> float:
        return self.progress.fraction

    @property
    def finished(self) -> bool:
        """The checked file ``SHA.efb`` is there (known without touching the disk)."""
        return self._finished

    def next_request(self, now: float) -> FetchRequest | None:
        if self.complete:
            return None
        return self.progress.next_request(now)

    def forget_outstanding(self) -> None:
        self.progress.forget_outstanding()

    def accept(self, frame: ChunkFrame) -> bool:
        """Store ``frame`` if it is a new chunk of this bundle; True when it was."""
        if frame.bundle_sha256 != self.sha:
            return False
        self.received_bytes += len(frame.payload)
        if not self.progress.accept(frame):
            self.duplicate_bytes += len(frame.payload)
            return False
        fd = self._open()
        view = memoryview(frame.payload)
        offset = frame.offset
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        if frame.offset == self._hashed_to:  # hash only what reached the part file
            self._digest.update(frame.payload)
            self._hashed_to += len(frame.payload)
        self._unpersisted += 1
        if self._unpersisted >= self.persist_every or self.complete:
            self.persist()
        return True

    def finish(self) -> Path:
        """Check the assembled file against the directive and return ``SHA.efb``."""
        if self.finished:
            return self.final_path
        if not self.complete:
            raise ValueError("download is not complete")
        if self._unpersisted:
            self.persist()  # the bytes must be durable before the rename publishes them
        self.close()
        actual_size = self.part_path.stat().st_size
        actual_sha = self._finish_digest() if actual_size == self.size else None
        if actual_sha != self.sha:
            self.discard()
            got = f"sha256 {actual_sha}" if actual_sha else f"{actual_size} bytes"
            raise DownloadMismatchError(
                f"bundle hash mismatch: the directive names {self.sha} ({self.size} bytes), "
                f"the hub delivered {got}"
            )
        durable_rename(self.part_path, self.final_path)
        remove_path(self.record_path)
        self._finished = True
        return self.final_path

    def _finish_digest(self) -> str:
        """The part file's sha256: the in-order prefix already hashed, the rest read back."""
        digest, done = self._digest, self._hashed_to
        if done < self.size:
            with open(self.part_path, "rb") as f:
                f.seek(done)
                while block := f.read(_HASH_BLOCK):
                    digest.update(block)
        return digest.hexdigest()

    def discard(self) -> None:
        """Forget this download entirely (files included)."""
        self.close()
        self._finished = False
        for path in (self.part_path, self.record_path, self.final_path):
            remove_path(path)

    def summary(self) -> dict[str, Any]:
        return {
            "bundle_sha256": self.sha,
            "size": self.size,
            "held_chunks": len(self.progress.held),
            "total_chunks": self.progress.plan.total_chunks,
            "received_bytes": self.received_bytes,
            "duplicate_bytes": self.duplicate_bytes,
            "resumed_chunks": self.resumed_chunks,
        }

"""Chunked bundle transfer: the binary chunk frame, chunk geometry and window planning.

Frame layout (network byte order, 60-byte header, then the payload)::

    offset size field
         0    4 magic          b"EFCK"
         4    1 version        1
         5    1 flags          0 (reserved; receivers ignore bits they do not know)
         6    2 header_len     60 (receivers skip header bytes they do not know)
         8   32 bundle_sha256  raw digest of the whole bundle file
        40    4 index          0-based chunk index
        44    4 total          number of chunks of the bundle
        48    4 chunk_size     bytes per chunk (the last one may be shorter)
        52    4 payload_len    bytes of payload that follow the header
        56    4 crc32          zlib.crc32 of the payload
        60    . payload

Invariants:

- ``decode`` accepts only frames where index < total, 0 < payload_len <= chunk_size, every
  chunk but the last is exactly chunk_size long, and the crc matches; anything else raises
  ProtocolError(side="hub"). The crc catches corruption; tampering is caught by the
  bundle's sha256 and signatures once the file is complete.
- :class:`ChunkPlan` is pure: given the held chunks it never asks for a held chunk, and the
  chunks it has outstanding never exceed ``window_bytes`` (counted at ``chunk_size`` each).
- :class:`DownloadProgress` does no I/O. The caller writes each accepted payload at
  ``plan.offset(index)``, then persists ``to_dict()``; after a restart ``from_dict`` resumes
  without asking for any held chunk again.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol.fields import FieldReader, b64encode
from edgefleet.core.protocol.limits import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_WINDOW_BYTES,
    MAX_CHUNK_SIZE,
    MAX_FETCH_SPAN,
    MAX_TOTAL_CHUNKS,
    MAX_WINDOW_BYTES,
    MIN_CHUNK_SIZE,
)
from edgefleet.core.protocol.messages import (
    HUB,
    FetchRequest,
    bitmap_to_indexes,
    build,
    check_sha256,
    indexes_to_bitmap,
)

MAGIC = b"EFCK"
FRAME_VERSION = 1
_HEADER = struct.Struct(">4sBBH32sIIIII")
HEADER_SIZE = _HEADER.size  # 60
MAX_FRAME_BYTES = HEADER_SIZE + 256 + MAX_CHUNK_SIZE  # room for a longer future header


def total_chunks(size: int, chunk_size: int) -> int:
    """Chunks needed for ``size`` bytes (a bundle is never empty)."""
    if size <= 0:
        raise ValueError("size must be positive")
    return (size + chunk_size - 1) // chunk_size


def chunk_span(size: int, chunk_size: int, index: int) -> tuple[int, int]:
    """``(offset, length)`` of chunk ``index`` of a ``size``-byte file."""
    if not 0 <= index < total_chunks(size, chunk_size):
        raise ValueError(f"chunk {index} out of range")
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


@dataclass(frozen=True)
class ChunkFrame:
    """One chunk of a bundle (hub -> device), sent as the binary frame above."""

    bundle_sha256: str
    index: int
    total: int
    chunk_size: int
    payload: bytes

    def __post_init__(self) -> None:
        check_sha256("bundle_sha256", self.bundle_sha256)
        if not 1 <= self.total <= MAX_TOTAL_CHUNKS:
            raise ValueError(f"total {self.total} out of range")
        if not 0 <= self.index < self.total:
            raise ValueError(f"index {self.index} not below total {self.total}")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size {self.chunk_size} out of range")
        n = len(self.payload)
        if not 0 < n <= self.chunk_size:
            raise ValueError(f"payload of {n} bytes not within 1..{self.chunk_size}")
        if self.index < self.total - 1 and n != self.chunk_size:
            raise ValueError(f"chunk {self.index} of {self.total} must be {self.chunk_size} bytes")

    @property
    def offset(self) -> int:
        return self.index * self.chunk_size

    def encode(self) -> bytes:
        header = _HEADER.pack(
            MAGIC,
            FRAME_VERSION,
            0,
            HEADER_SIZE,
            bytes.fromhex(self.bundle_sha256),
            self.index,
            self.total,
            self.chunk_size,
            len(self.payload),
            zlib.crc32(self.payload),
        )
        return header + bytes(self.payload)

    @classmethod
    def decode(cls, data: bytes, *, side: str = HUB) -> ChunkFrame:
        def fail(message: str) -> ProtocolError:
            return ProtocolError(f"chunk frame: {message}", side=side)

        if not isinstance(data, bytes | bytearray | memoryview):
            raise fail("payload must be bytes")
        data = bytes(data)
        if len(data) > MAX_FRAME_BYTES:
            raise fail(f"{len(data)} bytes exceed {MAX_FRAME_BYTES}")
        if len(data) < HEADER_SIZE:
            raise fail(f"{len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
        magic, version, _flags, header_len, digest, index, total, chunk_size, n, crc = (
            _HEADER.unpack_from(data)
        )
        if magic != MAGIC:
            raise fail(f"bad magic {magic!r}")
        if version != FRAME_VERSION:
            raise fail(f"unsupported frame version {version}")
        if not HEADER_SIZE <= header_len <= HEADER_SIZE + 256:
            raise fail(f"bad header length {header_len}")
        payload = data[header_len:]
        if len(payload) != n:
            raise fail(f"payload_len says {n} bytes, frame holds {len(payload)}")
        if zlib.crc32(payload) != crc:
            raise fail(f"crc32 mismatch on chunk {index} (corrupted in transit)")
        return build(
            "chunk frame", side, lambda: cls(digest.hex(), index, total, chunk_size, payload)
        )


@dataclass(frozen=True)
class ChunkPlan:
    """Geometry of one bundle download and which chunks to ask for next (pure)."""

    size: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    window_bytes: int = DEFAULT_WINDOW_BYTES

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError("size must be positive")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be within {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        if not self.chunk_size <= self.window_bytes <= MAX_WINDOW_BYTES:
            raise ValueError(f"window_bytes must be within chunk_size..{MAX_WINDOW_BYTES}")
        if self.total_chunks > MAX_TOTAL_CHUNKS:
            raise ValueError("bundle too large for the chunk protocol")

    @property
    def total_chunks(self) -> int:
        return total_chunks(self.size, self.chunk_size)

    @property
    def window_chunks(self) -> int:
        """Chunks that fit the window (at least one)."""
        return self.window_bytes // self.chunk_size

    def offset(self, index: int) -> int:
        return chunk_span(self.size, self.chunk_size, index)[0]

    def length(self, index: int) -> int:
        return chunk_span(self.size, self.chunk_size, index)[1]

    def missing(self, held: Collection[int]) -> list[int]:
        return [i for i in range(self.total_chunks) if i not in held]

    def next_window(self, held: Collection[int], outstanding: Collection[int] = ()) -> list[int]:
        """Lowest chunks neither held nor outstanding, as many as the window has room for."""
        room = self.window_chunks - len([i for i in outstanding if i not in held])
        chosen: list[int] = []
        if room <= 0:
            return chosen
        for i in range(self.total_chunks):
            if i in held or i in outstanding:
                continue
            if chosen and i - chosen[0] >= MAX_FETCH_SPAN:
                break
            chosen.append(i)
            if len(chosen) == room:
                break
        return chosen

    def request(
        self, bundle_sha256: str, held: Collection[int], outstanding: Collection[int] = ()
    ) -> FetchRequest | None:
        """The next FetchRequest, or None when nothing may be asked for now."""
        window = self.next_window(held, outstanding)
        if not window:
            return None
        return FetchRequest.for_indexes(bundle_sha256, self.chunk_size, window)

    def check_request(self, request: FetchRequest, *, side: str = "device") -> tuple[int, ...]:
        """Hub side: the request's indexes, or ProtocolError(side) if one is out of range."""
        wanted = request.indexes()
        if request.chunk_size != self.chunk_size:
            raise ProtocolError("fetch: chunk_size does not match the plan", side=side)
        if wanted[-1] >= self.total_chunks:
            raise ProtocolError(
                f"fetch: chunk {wanted[-1]} beyond the last chunk {self.total_chunks - 1}",
                side=side,
            )
        return wanted

    def frame(self, bundle_sha256: str, index: int, payload: bytes) -> ChunkFrame:
        """Hub side: the frame carrying chunk ``index``."""
        if len(payload) != self.length(index):
            raise ValueError(f"chunk {index} must be {self.length(index)} bytes")
        return ChunkFrame(bundle_sha256, index, self.total_chunks, self.chunk_size, payload)


class DownloadProgress:
    """Device side: which chunks of one bundle are held, requested and still missing.

    Requests are topped up when at least half the window is free (or all that is left fits),
    so a steady download keeps the window busy without a fetch message per chunk. A chunk
    requested more than ``request_timeout_s`` ago without arriving is asked for again.
    """

    def __init__(
        self,
        bundle_sha256: str,
        size: int,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        held: Iterable[int] = (),
        request_timeout_s: float = 15.0,
    ) -> None:
        check_sha256("bundle_sha256", bundle_sha256)
        if request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be positive")
        self.bundle_sha256 = bundle_sha256
        self.plan = ChunkPlan(size, chunk_size, window_bytes)
        self.request_timeout_s = request_timeout_s
        self._held: set[int] = set()
        for index in held:
            if not 0 <= index < self.plan.total_chunks:
                raise ValueError(f"held chunk {index} out of range")
            self._held.add(index)
        self._outstanding: dict[int, float] = {}  # index -> when requested
        self.duplicates = 0  # chunks received that were already held

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    @property
    def outstanding(self) -> frozenset[int]:
        return frozenset(self._outstanding)

    @property
    def complete(self) -> bool:
        return len(self._held) == self.plan.total_chunks

    @property
    def fraction(self) -> float:
        return len(self._held) / self.plan.total_chunks

    def next_request(self, now: float) -> FetchRequest | None:
        """What to ask the hub for at ``now``, or None (complete, or window busy enough)."""
        for index, at in list(self._outstanding.items()):
            if now - at >= self.request_timeout_s:
                del self._outstanding[index]
        room = self.plan.window_chunks - len(self._outstanding)
        requestable = self.plan.total_chunks - len(self._held) - len(self._outstanding)
        # Wait until half the window is free (or everything left fits) so a steady download
        # sends one fetch per half window instead of one per chunk.
        if room <= 0 or room < min(max(1, self.plan.window_chunks // 2), requestable):
            return None
        window = self.plan.next_window(self._held, self._outstanding)
        if not window:
            return None
        for index in window:
            self._outstanding[index] = now
        return FetchRequest.for_indexes(self.bundle_sha256, self.plan.chunk_size, window)

    def forget_outstanding(self) -> None:
        """Treat every request as lost (e.g. after reconnecting without a session)."""
        self._outstanding.clear()

    def accept(self, frame: ChunkFrame) -> bool:
        """True if ``frame`` is a chunk of this bundle not yet held (now marked held).

        False for another bundle or a duplicate. ProtocolError(side="hub") when the frame
        claims this bundle but disagrees with its geometry.
        """
        if frame.bundle_sha256 != self.bundle_sha256:
            return False
        plan = self.plan
        if frame.total != plan.total_chunks or frame.chunk_size != plan.chunk_size:
            raise ProtocolError(
                f"chunk {frame.index}: geometry {frame.total}x{frame.chunk_size} does not match "
                f"{plan.total_chunks}x{plan.chunk_size} of bundle {self.bundle_sha256[:12]}",
                side=HUB,
            )
        if len(frame.payload) != plan.length(frame.index):
            raise ProtocolError(
                f"chunk {frame.index}: {len(frame.payload)} bytes, expected "
                f"{plan.length(frame.index)}",
                side=HUB,
            )
        self._outstanding.pop(frame.index, None)
        if frame.index in self._held:
            self.duplicates += 1
            return False
        self._held.add(frame.index)
        return True

    def to_dict(self) -> dict[str, Any]:
        """What to persist: geometry and held chunks (a bitmap), not the requests in flight."""
        total = self.plan.total_chunks
        return {
            "bundle_sha256": self.bundle_sha256,
            "size": self.plan.size,
            "chunk_size": self.plan.chunk_size,
            "window_bytes": self.plan.window_bytes,
            "held": b64encode(indexes_to_bitmap(0, total, self._held)),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, request_timeout_s: float = 15.0
    ) -> DownloadProgress:
        """Restore persisted progress; ProtocolError(side="device") if the record is damaged."""
        r = FieldReader(data, what="download progress", side="device")
        sha = r.sha256("bundle_sha256")
        size = r.integer("size", minimum=1)
        chunk_size = r.integer("chunk_size", minimum=MIN_CHUNK_SIZE, maximum=MAX_CHUNK_SIZE)
        window = r.integer("window_bytes", minimum=chunk_size, maximum=MAX_WINDOW_BYTES)
        total = (size + chunk_size - 1) // chunk_size
        if total > MAX_TOTAL_CHUNKS:
            raise r.fail("size too large")
        bitmap = r.opt_base64("held", max_bytes=(total + 7) // 8) or b""
        if len(bitmap) != (total + 7) // 8:
            raise r.fail("held bitmap has the wrong length")
        held = bitmap_to_indexes(0, total, bitmap)
        return build(
            r.what,
            r.side,
            lambda: cls(
                sha,
                size,
                chunk_size=chunk_size,
                window_bytes=window,
                held=held,
                request_timeout_s=request_timeout_s,
            ),
        )

"""JSON control messages: status, device state, fetch request and ack.

Every message is a frozen dataclass with a ``v`` field, ``to_dict()`` and
``from_dict(data, side=...)``. Invariants:

- ``from_dict`` ignores unknown fields and raises ProtocolError(side) for anything else
  wrong; ``side`` defaults to the party that sends that message on the wire
  (``"device"`` for status/state/fetch, ``"hub"`` for ack).
- Constructors validate cross-field rules in ``__post_init__`` (ValueError); decoders turn
  those into ProtocolError, so a value that exists is always a valid message.
- ``from_dict(m.to_dict()) == m`` for every valid ``m`` (tested with hypothesis).

Telemetry messages live in :mod:`edgefleet.core.protocol.telemetry`; the binary chunk frame
and chunk planning in :mod:`edgefleet.core.protocol.chunks`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol.fields import PROTOCOL_VERSION, SHA256_HEX, FieldReader, b64encode
from edgefleet.core.protocol.limits import (
    MAX_CHUNK_SIZE,
    MAX_FETCH_SPAN,
    MAX_TOTAL_CHUNKS,
    MAX_WINDOW_BYTES,
    MIN_CHUNK_SIZE,
)

DEVICE = "device"
HUB = "hub"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_MAX_MODELS = 64

T = TypeVar("T")


def build(what: str, side: str, factory: Callable[[], T]) -> T:
    """Run a constructor, turning its ValueError into ProtocolError(side)."""
    try:
        return factory()
    except ValueError as e:
        raise ProtocolError(f"{what}: {e}", side=side) from e


def check_sha256(name: str, value: str) -> None:
    if not isinstance(value, str) or not SHA256_HEX.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex characters")


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Status:
    """Online/offline on ``{root}/dev/{id}/status`` (retained; the LWT says offline)."""

    online: bool
    at: float | None = None  # epoch seconds when sent; None in the LWT (set at connect time)
    agent_version: str | None = None
    v: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "online": self.online}
        if self.at is not None:
            out["at"] = self.at
        if self.agent_version is not None:
            out["agent_version"] = self.agent_version
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, side: str = DEVICE) -> Status:
        r = FieldReader(data, what="status", side=side)
        return cls(
            v=r.version(),
            online=r.flag("online"),
            at=r.opt_number("at", minimum=0.0),
            agent_version=r.opt_text("agent_version", max_len=64),
        )


# --------------------------------------------------------------------------- device state


@dataclass(frozen=True)
class SlotInfo:
    """What one slot of a model holds."""

    version: int
    bundle_sha256: str
    slot: str | None = None  # "a" / "b" when the agent uses A/B slots

    def __post_init__(self) -> None:
        check_sha256("bundle_sha256", self.bundle_sha256)
        if self.version < 0:
            raise ValueError("version must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "bundle_sha256": self.bundle_sha256}
        if self.slot is not None:
            out["slot"] = self.slot
        return out

    @classmethod
    def read(cls, r: FieldReader) -> SlotInfo:
        return cls(
            version=r.integer("version", minimum=0),
            bundle_sha256=r.sha256("bundle_sha256"),
            slot=r.opt_text("slot", max_len=16),
        )


@dataclass(frozen=True)
class DeploymentInfo:
    """Where the current deployment of one model stands (state names belong to the agent)."""

    state: str
    version: int
    bundle_sha256: str
    rollout_id: str | None = None
    reason: str | None = None
    at: float | None = None
    progress: float | None = None  # 0..1 of the download, when downloading

    def __post_init__(self) -> None:
        check_sha256("bundle_sha256", self.bundle_sha256)
        if self.progress is not None and not 0.0 <= self.progress <= 1.0:
            raise ValueError("progress must be within 0..1")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "version": self.version,
            "bundle_sha256": self.bundle_sha256,
        }
        for key in ("rollout_id", "reason", "at", "progress"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def read(cls, r: FieldReader) -> DeploymentInfo:
        return cls(
            state=r.text("state", max_len=64),
            version=r.integer("version", minimum=0),
            bundle_sha256=r.sha256("bundle_sha256"),
            rollout_id=r.opt_text("rollout_id", max_len=128),
            reason=r.opt_text("reason", max_len=1024),
            at=r.opt_number("at", minimum=0.0),
            progress=r.opt_number("progress", minimum=0.0),
        )


@dataclass(frozen=True)
class ModelState:
    """One model on the device: what serves, what it can roll back to, what is in flight."""

    name: str
    active: SlotInfo | None = None
    previous: SlotInfo | None = None
    deployment: DeploymentInfo | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or len(self.name) > 128:
            raise ValueError(f"invalid model name {self.name[:80]!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key in ("active", "previous", "deployment"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.to_dict()
        return out

    @classmethod
    def read(cls, r: FieldReader) -> ModelState:
        def slot(key: str) -> SlotInfo | None:
            raw = r.opt_obj(key)
            return None if raw is None else SlotInfo.read(r.nested(key, raw))

        deployment = r.opt_obj("deployment")
        name = r.text("name", max_len=128)
        return build(
            r.what,
            r.side,
            lambda: cls(
                name=name,
                active=slot("active"),
                previous=slot("previous"),
                deployment=None
                if deployment is None
                else DeploymentInfo.read(r.nested("deployment", deployment)),
            ),
        )


@dataclass(frozen=True)
class DeviceState:
    """The agent's report on ``{root}/dev/{id}/state`` (retained)."""

    device: str
    agent_version: str
    profile: str
    at: float
    models: tuple[ModelState, ...] = ()
    directive_seq: int | None = None  # seq of the last accepted directive
    directive_error: str | None = None  # why the last directive was refused, if it was
    v: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        if len(self.models) > _MAX_MODELS:
            raise ValueError(f"more than {_MAX_MODELS} models")

    def model(self, name: str) -> ModelState | None:
        return next((m for m in self.models if m.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "device": self.device,
            "agent_version": self.agent_version,
            "profile": self.profile,
            "at": self.at,
            "models": [m.to_dict() for m in self.models],
        }
        if self.directive_seq is not None:
            out["directive_seq"] = self.directive_seq
        if self.directive_error is not None:
            out["directive_error"] = self.directive_error
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, side: str = DEVICE) -> DeviceState:
        r = FieldReader(data, what="state", side=side)
        models = tuple(
            ModelState.read(r.nested(f"models[{i}]", raw))
            for i, raw in enumerate(r.opt_items("models", max_items=_MAX_MODELS))
        )
        return build(
            "state",
            side,
            lambda: cls(
                v=r.version(),
                device=r.text("device", max_len=64),
                agent_version=r.text("agent_version", max_len=64),
                profile=r.text("profile", max_len=128),
                at=r.number("at", minimum=0.0),
                models=models,
                directive_seq=r.opt_integer("directive_seq", minimum=0),
                directive_error=r.opt_text("directive_error", max_len=1024),
            ),
        )


# --------------------------------------------------------------------------- fetch


def indexes_to_bitmap(first: int, count: int, indexes: Iterable[int]) -> bytes:
    """Bit ``i`` (MSB first within each byte) set when chunk ``first + i`` is wanted."""
    bitmap = bytearray((count + 7) // 8)
    for index in indexes:
        offset = index - first
        if not 0 <= offset < count:
            raise ValueError(f"chunk {index} outside {first}..{first + count - 1}")
        bitmap[offset // 8] |= 0x80 >> (offset % 8)
    return bytes(bitmap)


def bitmap_to_indexes(first: int, count: int, bitmap: bytes) -> tuple[int, ...]:
    return tuple(
        first + offset for offset in range(count) if bitmap[offset // 8] & (0x80 >> (offset % 8))
    )


@dataclass(frozen=True)
class FetchRequest:
    """A request for a window of chunks of one bundle (device -> hub).

    The window is ``first .. first + count - 1``; ``bitmap`` (``ceil(count / 8)`` bytes,
    MSB first, padding bits zero) selects the wanted chunks when the window has holes, and
    is absent when every chunk in it is wanted. The wanted chunks times ``chunk_size`` never
    exceed MAX_WINDOW_BYTES. Build one with :meth:`for_indexes`.
    """

    bundle_sha256: str
    chunk_size: int
    first: int
    count: int
    bitmap: bytes | None = None
    v: int = PROTOCOL_VERSION
    _wanted: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_sha256("bundle_sha256", self.bundle_sha256)
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be within {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        if not 0 <= self.first < MAX_TOTAL_CHUNKS:
            raise ValueError("first chunk index out of range")
        if not 1 <= self.count <= MAX_FETCH_SPAN:
            raise ValueError(f"count must be within 1..{MAX_FETCH_SPAN}")
        if self.bitmap is None:
            wanted = tuple(range(self.first, self.first + self.count))
        else:
            if len(self.bitmap) != (self.count + 7) // 8:
                raise ValueError(f"bitmap must be {(self.count + 7) // 8} bytes for {self.count}")
            pad_bits = len(self.bitmap) * 8 - self.count
            if pad_bits and self.bitmap[-1] & ((1 << pad_bits) - 1):
                raise ValueError("bitmap padding bits must be zero")
            wanted = bitmap_to_indexes(self.first, self.count, self.bitmap)
            if not wanted:
                raise ValueError("bitmap selects no chunk")
        if len(wanted) * self.chunk_size > MAX_WINDOW_BYTES:
            raise ValueError(
                f"{len(wanted)} chunks of {self.chunk_size} bytes exceed the "
                f"{MAX_WINDOW_BYTES}-byte window"
            )
        object.__setattr__(self, "_wanted", wanted)

    @classmethod
    def for_indexes(
        cls, bundle_sha256: str, chunk_size: int, indexes: Iterable[int]
    ) -> FetchRequest:
        """The most compact request for exactly ``indexes`` (bitmap only if there are holes)."""
        wanted = sorted(set(indexes))
        if not wanted:
            raise ValueError("no chunk index given")
        first, count = wanted[0], wanted[-1] - wanted[0] + 1
        bitmap = None if count == len(wanted) else indexes_to_bitmap(first, count, wanted)
        return cls(bundle_sha256, chunk_size, first, count, bitmap)

    def indexes(self) -> tuple[int, ...]:
        """The wanted chunk indexes, ascending."""
        return self._wanted

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "bundle_sha256": self.bundle_sha256,
            "chunk_size": self.chunk_size,
            "first": self.first,
            "count": self.count,
        }
        if self.bitmap is not None:
            out["bitmap"] = b64encode(self.bitmap)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, side: str = DEVICE) -> FetchRequest:
        r = FieldReader(data, what="fetch", side=side)
        v = r.version()
        sha = r.sha256("bundle_sha256")
        chunk_size = r.integer("chunk_size")
        first = r.integer("first")
        count = r.integer("count")
        bitmap = r.opt_base64("bitmap", max_bytes=(MAX_FETCH_SPAN + 7) // 8)
        return build("fetch", side, lambda: cls(sha, chunk_size, first, count, bitmap, v))


# --------------------------------------------------------------------------- ack


@dataclass(frozen=True)
class Ack:
    """The hub stored every telemetry record of this device with seq <= highest_seq."""

    highest_seq: int
    v: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.highest_seq < 0:
            raise ValueError("highest_seq must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "highest_seq": self.highest_seq}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, side: str = HUB) -> Ack:
        r = FieldReader(data, what="ack", side=side)
        return cls(v=r.version(), highest_seq=r.integer("highest_seq", minimum=0))


# --------------------------------------------------------------------------- resync


@dataclass(frozen=True)
class ResyncRequest:
    """A device asks for its current directive (device -> hub, on ``resync``).

    ``known_seq`` is the seq of the directive the device holds (None: none at all); the
    hub answers by publishing its latest directive for the device, retained on the
    device's ``desired`` topic, when that one is newer.
    """

    known_seq: int | None = None
    v: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.known_seq is not None and self.known_seq < 0:
            raise ValueError("known_seq must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "known_seq": self.known_seq}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, side: str = DEVICE) -> ResyncRequest:
        r = FieldReader(data, what="resync", side=side)
        return cls(v=r.version(), known_seq=r.opt_integer("known_seq", minimum=0))

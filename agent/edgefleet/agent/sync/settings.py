"""Settings of the hub sync: who the device is and how it paces the wire.

Built from ``agent.toml`` (device id, profile, ``[mqtt]``) by
:func:`edgefleet.agent.sync.hub_sync.hub_sync_for`; the transfer knobs have
defaults of the protocol (64 KiB chunks, windows of at most 1 MiB) and may be
overridden through the environment (``EDGEFLEET_SYNC_CHUNK_SIZE``,
``EDGEFLEET_SYNC_WINDOW_BYTES``), which is how tests use small windows;
``EDGEFLEET_SYNC_DISK_FULL_RETRY_S`` sets the first wait after a full disk.

Times are seconds, sizes bytes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from edgefleet.agent.errors import AgentConfigError
from edgefleet.core.mqtt.backoff import BackoffPolicy
from edgefleet.core.protocol import DEFAULT_CHUNK_SIZE, DEFAULT_ROOT, DEFAULT_WINDOW_BYTES
from edgefleet.core.protocol.limits import MAX_CHUNK_SIZE, MAX_WINDOW_BYTES, MIN_CHUNK_SIZE

ENV_CHUNK_SIZE = "EDGEFLEET_SYNC_CHUNK_SIZE"
ENV_WINDOW_BYTES = "EDGEFLEET_SYNC_WINDOW_BYTES"
ENV_DISK_FULL_RETRY_S = "EDGEFLEET_SYNC_DISK_FULL_RETRY_S"


@dataclass(frozen=True)
class SyncSettings:
    device_id: str
    profile: str
    agent_version: str
    max_bundle_bytes: int
    topic_root: str = DEFAULT_ROOT
    chunk_size: int = DEFAULT_CHUNK_SIZE
    window_bytes: int = DEFAULT_WINDOW_BYTES
    #: A requested chunk that has not arrived after this long is asked for again.
    request_timeout_s: float = 10.0
    #: A telemetry batch the hub has not acked after this long is sent again.
    ack_timeout_s: float = 15.0
    #: How often the worker looks at deployments, downloads, telemetry and the state report.
    tick_s: float = 0.5
    #: After reconnecting to a session the broker kept, wait for this long without a
    #: chunk before asking for more (chunks queued for us arrive first).
    resume_quiet_s: float = 1.0
    #: Whole-bundle fetches per assignment before a hash mismatch is final.
    max_download_attempts: int = 2
    #: Largest telemetry lease per batch (the protocol allows 1 MiB per message).
    telemetry_batch_bytes: int = 256 * 1024
    #: Waits before handing an install over again after the disk was full (attempt n
    #: waits ``disk_full_backoff`` at attempt n); the old version serves meanwhile.
    disk_full_backoff: BackoffPolicy = BackoffPolicy(initial_s=5.0, max_s=600.0, jitter=0.2)

    def __post_init__(self) -> None:
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise AgentConfigError(
                f"sync chunk_size must be within {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}"
            )
        if not self.chunk_size <= self.window_bytes <= MAX_WINDOW_BYTES:
            raise AgentConfigError(
                f"sync window_bytes must be within chunk_size..{MAX_WINDOW_BYTES}"
            )
        if self.resume_quiet_s < 0:
            raise AgentConfigError("sync resume_quiet_s must not be negative")
        for name in ("request_timeout_s", "ack_timeout_s", "tick_s"):
            if getattr(self, name) <= 0:
                raise AgentConfigError(f"sync {name} must be positive")
        if self.max_download_attempts < 1:
            raise AgentConfigError("sync max_download_attempts must be at least 1")
        if self.max_bundle_bytes < 1:
            raise AgentConfigError("sync max_bundle_bytes must be positive")
        if not 1024 <= self.telemetry_batch_bytes <= 512 * 1024:
            raise AgentConfigError("sync telemetry_batch_bytes must be within 1 KiB..512 KiB")

    @property
    def window_chunks(self) -> int:
        return max(1, self.window_bytes // self.chunk_size)

    @property
    def persist_every_chunks(self) -> int:
        """Held chunks persisted at least every half window: a crash refetches less than one."""
        return max(1, self.window_chunks // 2)

    def with_env(self, environ: Mapping[str, str] | None = None) -> SyncSettings:
        """These settings with the ``EDGEFLEET_SYNC_*`` overrides applied."""
        env = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        for key, name in ((ENV_CHUNK_SIZE, "chunk_size"), (ENV_WINDOW_BYTES, "window_bytes")):
            raw = env.get(key)
            if raw:
                try:
                    changes[name] = int(raw)
                except ValueError as e:
                    raise AgentConfigError(f"${key} must be an integer, not {raw!r}") from e
        raw = env.get(ENV_DISK_FULL_RETRY_S)
        if raw:
            try:
                first = float(raw)
                changes["disk_full_backoff"] = replace(self.disk_full_backoff, initial_s=first)
            except ValueError as e:  # not a number, NaN, or outside 0 < s <= max_s
                raise AgentConfigError(
                    f"${ENV_DISK_FULL_RETRY_S} must be a number of seconds within "
                    f"0..{self.disk_full_backoff.max_s:g}, not {raw!r}"
                ) from e
        return replace(self, **changes) if changes else self

"""Endpoint settings: :class:`EndpointConfig` (frozen, validated on creation).

Invariants: an endpoint bound to anything other than a loopback address
(``127.0.0.0/8``, ``::1``, ``localhost``) has a bearer token; a token is 16+
printable ASCII characters without spaces (it travels in a header); every
limit is positive. Violations raise :class:`AgentConfigError` naming the field.

The request limits (body, batch rows, tensor bytes per request and in flight)
are not set one by one: :meth:`EndpointConfig.limits` derives them from the
device profile's ``agent_memory_budget_mb`` and ``max_bundle_bytes``
(:mod:`~edgefleet.agent.endpoint.budget`); ``max_body_bytes`` only caps the
derived body limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgefleet.agent.endpoint.budget import EndpointLimits
from edgefleet.agent.errors import AgentConfigError
from edgefleet.core.hosts import is_loopback_host

MIN_TOKEN_CHARS = 16


def _positive_int(value: Any, field: str, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise AgentConfigError(f"field 'endpoint.{field}' must be an integer >= {minimum}")


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how the local OIP v2 endpoint listens. Sizes in bytes, times in seconds."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 picks a free port (tests); EndpointServer.port tells which
    token: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024  # a cap on the limit derived from the memory budget
    max_header_bytes: int = 16 * 1024
    # Connections past their first request head (and its token): a real client.
    max_connections: int = 256
    # Connections that have not yet sent a complete head with a valid token: at
    # the limit, the one waiting longest is closed to make room (never a client
    # that already authenticated), so idle sockets cannot lock anyone out.
    max_unauth_connections: int = 64
    header_timeout_s: float = 5.0  # a request head must arrive within this
    keepalive_timeout_s: float = 75.0  # idle keep-alive connections are closed after this
    request_timeout_s: float = 30.0  # a started request must arrive completely within this
    # The device profile's agent_memory_budget_mb and max_bundle_bytes (the defaults:
    # an endpoint without a profile, as in tests and benchmarks).
    memory_budget_mb: int = 512
    max_bundle_bytes: int = 16 * 1024 * 1024
    # Bodies at least this large are decoded and run on a worker thread so one
    # big batch does not stall the event loop; small ones run inline (faster).
    offload_body_bytes: int = 64 * 1024
    workers: int = 2
    backlog: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise AgentConfigError("field 'endpoint.host' must be a non-empty string")
        if (
            not isinstance(self.port, int)
            or isinstance(self.port, bool)
            or not 0 <= self.port <= 65535
        ):
            raise AgentConfigError("field 'endpoint.port' must be an integer 0..65535")
        if self.token is not None:
            if (
                not isinstance(self.token, str)
                or len(self.token) < MIN_TOKEN_CHARS
                or not all(33 <= ord(c) <= 126 for c in self.token)
            ):
                raise AgentConfigError(
                    f"field 'endpoint.token' must be {MIN_TOKEN_CHARS}+ printable ASCII "
                    "characters without spaces"
                )
        elif not is_loopback_host(self.host):
            raise AgentConfigError(
                f"field 'endpoint.token' is required when 'endpoint.host' ({self.host}) "
                "is not a loopback address"
            )
        _positive_int(self.max_body_bytes, "max_body_bytes", 1024)
        _positive_int(self.max_header_bytes, "max_header_bytes", 1024)
        _positive_int(self.max_connections, "max_connections")
        _positive_int(self.max_unauth_connections, "max_unauth_connections")
        _positive_int(self.memory_budget_mb, "memory_budget_mb")
        _positive_int(self.max_bundle_bytes, "max_bundle_bytes")
        _positive_int(self.offload_body_bytes, "offload_body_bytes")
        _positive_int(self.workers, "workers")
        _positive_int(self.backlog, "backlog")
        for name in ("keepalive_timeout_s", "request_timeout_s", "header_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise AgentConfigError(f"field 'endpoint.{name}' must be a positive number")

    def limits(self) -> EndpointLimits:
        """Body, batch and tensor-byte limits derived from the memory budget."""
        return EndpointLimits.derive(
            self.memory_budget_mb, self.max_bundle_bytes, self.max_body_bytes
        )

    @classmethod
    def from_settings(
        cls, settings: Any, profile: Any | None = None, **overrides: Any
    ) -> EndpointConfig:
        """From ``[endpoint]`` of agent.toml (``host``, ``port``, ``token``,
        ``max_body_bytes``) and the device profile's memory budget when given."""
        values = {
            "host": settings.host,
            "port": settings.port,
            "token": settings.token,
            "max_body_bytes": settings.max_body_bytes,
        }
        if profile is not None:
            values["memory_budget_mb"] = profile.agent_memory_budget_mb
            values["max_bundle_bytes"] = profile.max_bundle_bytes
        values.update(overrides)
        return cls(**values)

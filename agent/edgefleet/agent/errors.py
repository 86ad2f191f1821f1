"""Errors of the agent, each derived from a core family (so the CLI exit code follows).

The tree::

    AgentError (EdgefleetError)
    ├── AgentConfigError (ConfigError)            agent.toml invalid; names file and field  -> 2
    ├── ModelNotFoundError (NotFoundError)        no such model / version installed          -> 2
    ├── InputSchemaError (UsageError)             request does not match the io schema       -> 2 / HTTP 400
    ├── ModelLoadError (OperationalError)         onnxruntime could not load a verified model -> 1
    ├── InferenceError (OperationalError)         onnxruntime failed on a validated input     -> 1 / HTTP 500
    ├── EndpointError (OperationalError)          the endpoint cannot listen (port taken...)  -> 1
    ├── DeploymentError (OperationalError)        an install or rollback step failed          -> 1
    ├── TelemetryBufferError (StorageError)       the SQLite telemetry buffer failed          -> 1
    └── BundleRejectedError (VerificationError)   bundle or directive refused by trust rules  -> 3
"""

from __future__ import annotations

from edgefleet.core.errors import (
    ConfigError,
    EdgefleetError,
    NotFoundError,
    OperationalError,
    StorageError,
    UsageError,
    VerificationError,
)


class AgentError(EdgefleetError):
    """Base of the agent's errors."""


class AgentConfigError(AgentError, ConfigError):
    """agent.toml is invalid; the message names the file and the field."""


class ModelNotFoundError(AgentError, NotFoundError):
    """No such model or version is installed."""


class InputSchemaError(AgentError, UsageError):
    """An inference request does not match the model's io schema."""

    def __init__(self, message: str, kind: str = "schema") -> None:
        super().__init__(message)
        # Short machine-readable reason, counted in telemetry (e.g. "shape", "dtype", "name").
        self.kind = kind


class ModelLoadError(AgentError, OperationalError):
    """onnxruntime could not load a verified model."""


class InferenceError(AgentError, OperationalError):
    """onnxruntime failed to run a model on an input that passed validation."""


class EndpointError(AgentError, OperationalError):
    """The local endpoint cannot serve (the address cannot be bound, for example)."""


class DeploymentError(AgentError, OperationalError):
    """An install, activation or rollback step failed."""


class TelemetryBufferError(AgentError, StorageError):
    """The telemetry buffer could not be read or written."""


class BundleRejectedError(AgentError, VerificationError):
    """A bundle or directive was refused by the trust rules."""

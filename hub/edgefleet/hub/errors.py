"""Errors of the hub, each derived from a core family (so the CLI exit code follows).

The tree::

    HubError (EdgefleetError)
    ├── HubConfigError (ConfigError)              hub.toml invalid; names file and field     -> 2
    ├── HubUsageError (UsageError)                bad selector, phases, gate or enrollment input -> 2
    ├── HubNotFoundError (NotFoundError)          no such device, bundle, rollout            -> 2
    ├── RolloutStateError (UsageError)            illegal rollout transition (e.g. resume a completed one) -> 2
    ├── HubStoreError (StorageError)              the hub store failed                       -> 1
    │   └── CorruptBundleError                    stored bundle bytes do not match their sha256 -> 1
    └── PublishRejectedError (VerificationError)  bundle not signed by trusted publishers    -> 3
"""

from __future__ import annotations

from edgefleet.core.errors import (
    ConfigError,
    EdgefleetError,
    NotFoundError,
    StorageError,
    UsageError,
    VerificationError,
)


class HubError(EdgefleetError):
    """Base of the hub's errors."""


class HubConfigError(HubError, ConfigError):
    """hub.toml is invalid; the message names the file and the field."""


class HubUsageError(HubError, UsageError):
    """A selector, phase list, gate or enrollment argument is malformed."""


class HubNotFoundError(HubError, NotFoundError):
    """No such device, bundle or rollout."""


class RolloutStateError(HubError, UsageError):
    """The rollout cannot make that transition from its current state."""


class HubStoreError(HubError, StorageError):
    """The hub store could not be read or written."""


class FencedError(HubStoreError):
    """A write under a lease epoch that another holder has since taken over."""


class CorruptBundleError(HubStoreError):
    """A bundle's bytes in the store do not hash to its name: never served."""


class PublishRejectedError(HubError, VerificationError):
    """A bundle is not signed by enough trusted publisher keys."""

"""Errors of edgefleet.core and the families every role package builds on.

The tree::

    EdgefleetError                     base of every error edgefleet raises on purpose
    ├── UsageError                     bad arguments, unknown names, malformed config  -> exit 2
    │   ├── ConfigError                a config or profile file is invalid (names file and field)
    │   │   └── ProfileError           device profile missing or invalid
    │   └── NotFoundError              a named thing (model, alias, profile, key) does not exist
    ├── OperationalError               the command was fine, the world was not          -> exit 1
    │   ├── StorageError               disk, database, file system
    │   ├── TransportError             broker, network, timeouts
    │   └── DriftError                 drift statistics cannot be computed or merged
    │       └── ProfileMismatchError   merging statistics of different reference profiles
    ├── VerificationError              a security or integrity check failed             -> exit 3
    │   ├── BundleError                a bundle is malformed, tampered or over budget
    │   ├── SignatureError             signatures missing, invalid, unknown or below threshold
    │   ├── DirectiveError             a directive is forged, replayed, expired or not ours
    │   └── KeyFileError               a key file is unreadable or of the wrong kind
    └── ProtocolError                  a wire message broke the protocol (says which side)  -> exit 1

Each role package (packager, agent, hub) has its own errors module whose
classes derive from these families, so the CLI maps any error to an exit code
in one place (:func:`exit_code_for`).
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose."""


class UsageError(EdgefleetError):
    """Bad arguments, unknown names or malformed configuration."""


class ConfigError(UsageError):
    """A configuration file is invalid; the message names the file and the field."""


class ProfileError(ConfigError):
    """A device profile is missing or invalid."""


class NotFoundError(UsageError):
    """A named thing (model, version, alias, profile, key) does not exist."""


class OperationalError(EdgefleetError):
    """The request was valid but could not be carried out."""


class StorageError(OperationalError):
    """Disk, database or file-system failure."""


class TransportError(OperationalError):
    """Broker or network failure."""


class DriftError(OperationalError):
    """Drift statistics cannot be computed, merged or decoded."""


class ProfileMismatchError(DriftError):
    """Statistics built against different reference profiles cannot be merged."""


class VerificationError(EdgefleetError):
    """A security or integrity check failed."""


class BundleError(VerificationError):
    """A bundle is malformed, tampered with or over budget."""


class SignatureError(VerificationError):
    """Signatures are missing, invalid, from unknown keys or below the threshold."""


class DirectiveError(VerificationError):
    """A directive is forged, replayed, expired or addressed to another device."""


class KeyFileError(VerificationError):
    """A key file is unreadable or holds the wrong kind of key."""


class ProtocolError(EdgefleetError):
    """A wire message broke the protocol.

    ``side`` names who broke it: ``"device"``, ``"hub"`` or ``"peer"``.
    """

    def __init__(self, message: str, side: str = "peer") -> None:
        super().__init__(f"{side} broke the protocol: {message}")
        self.side = side


EXIT_OK = 0
EXIT_OPERATIONAL = 1
EXIT_USAGE = 2
EXIT_VERIFICATION = 3

# Most specific family first; the first match wins.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (VerificationError, EXIT_VERIFICATION),
    (UsageError, EXIT_USAGE),
    (OperationalError, EXIT_OPERATIONAL),
    (ProtocolError, EXIT_OPERATIONAL),
    (EdgefleetError, EXIT_OPERATIONAL),
)


def exit_code_for(error: BaseException) -> int:
    """The process exit code for ``error`` (docs/architecture.md, Command line).

    >>> exit_code_for(SignatureError("bad"))
    3
    >>> exit_code_for(NotFoundError("no such model"))
    2
    """
    for family, code in _EXIT_CODES:
        if isinstance(error, family):
            return code
    return EXIT_OPERATIONAL

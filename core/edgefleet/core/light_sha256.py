"""SHA-256 from the interpreter's own implementation, not OpenSSL's.

``hashlib`` prefers OpenSSL, and importing it maps libcrypto (about 3.5 MB
resident) into the process. The agent daemon hashes a model file when it loads
it and a drift profile when it registers one, and needs libcrypto for nothing
else; the built-in hash is slower (a few hundred MB/s instead of GB/s), which
costs milliseconds per model load. The digest is the same either way.
Everything that hashes in bulk keeps ``hashlib``: bundle verification runs in a
short-lived child or a CLI process, and downloads only run with the hub sync,
whose MQTT client loads OpenSSL through ``ssl`` anyway.
"""

from __future__ import annotations

from typing import Any


def sha256(data: bytes = b"") -> Any:
    """A new sha256 object (``update``/``hexdigest``) that does not load libcrypto."""
    try:
        from _sha2 import sha256 as builtin  # CPython 3.12+
    except ImportError:
        try:
            from _sha256 import sha256 as builtin  # CPython 3.11
        except ImportError:  # an interpreter built without its own sha256
            from hashlib import sha256 as builtin
    return builtin(data)


def sha256_hex(data: bytes) -> str:
    return str(sha256(data).hexdigest())

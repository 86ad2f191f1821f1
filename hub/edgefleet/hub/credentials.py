"""Broker credentials: random passwords and Mosquitto's PBKDF2-SHA512 hash format.

Mosquitto 2 password files hold ``user:$7$<iterations>$<b64 salt>$<b64 hash>``
where the hash is PBKDF2-HMAC-SHA512 of the password (``mosquitto_passwd``'s
default since 2.0, 12-byte salt, standard base64 with padding). The hub
stores exactly this string per device, so it never keeps a plain password
and ``hub broker-config`` can write the password file from the store alone.

Invariants: passwords come from :mod:`secrets`; a hash always verifies its
own password (``verify_password``); comparison is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

# mosquitto_passwd uses 101 iterations; the broker accepts any count, so we
# use more. Every device connect costs one derivation on the broker: at this
# count that is well under a millisecond.
DEFAULT_ITERATIONS = 1000
SALT_BYTES = 12
_HASH_RE = re.compile(r"^\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")


def generate_password(nbytes: int = 24) -> str:
    """A URL-safe random password (no ':' so it fits a password file line)."""
    return secrets.token_urlsafe(nbytes)


def mosquitto_hash(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """``$7$...`` PBKDF2-SHA512 hash as Mosquitto's password file expects it."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return (
        f"$7${iterations}${base64.b64encode(salt).decode('ascii')}"
        f"${base64.b64encode(digest).decode('ascii')}"
    )


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash."""
    m = _HASH_RE.fullmatch(encoded)
    if not m:
        return False
    try:
        salt = base64.b64decode(m.group(2), validate=True)
        expected = base64.b64decode(m.group(3), validate=True)
    except (binascii.Error, ValueError):
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(m.group(1)))
    return hmac.compare_digest(digest, expected)


def is_mosquitto_hash(encoded: str) -> bool:
    return bool(_HASH_RE.fullmatch(encoded))

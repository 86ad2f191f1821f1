"""Ed25519 key files and key ids.

Invariants:

- All cryptography comes from the ``cryptography`` package; nothing here
  implements a primitive.
- A key id is the lowercase hex sha256 of the 32-byte raw public key, so it
  is the same whichever file format carried the key.
- A private key file is PEM PKCS8 without a password and is created with mode
  0600 (whatever the umask) and never overwritten; ``NAME.pub`` next to it is
  PEM SubjectPublicKeyInfo.
- No error message or log line contains private key material: errors name the
  file and the kind of problem only.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.core.errors import KeyFileError, StorageError, UsageError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX_KEY_RE = re.compile(r"^[0-9a-fA-F]{64}$")
#: Key files are tiny; anything bigger is not a key (and is not read whole).
MAX_KEY_FILE_BYTES = 16 * 1024


@dataclass(frozen=True)
class KeyPairPaths:
    """Where :func:`generate_keypair` wrote the two halves of a key pair."""

    private: Path
    public: Path


def keyid_of(public_key: Ed25519PublicKey) -> str:
    """The key id: hex sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_key_to_hex(public_key: Ed25519PublicKey) -> str:
    """The raw public key as 64 lowercase hex characters."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """Parse a raw public key given as 64 hex characters."""
    if not isinstance(text, str) or not _HEX_KEY_RE.fullmatch(text):
        raise KeyFileError("public key must be 64 hex characters (32 raw bytes)")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError as e:
        raise KeyFileError("public key bytes are not a valid Ed25519 key") from e


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo (the ``.pub`` file format)."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file at ``path`` with exactly ``mode``; never overwrite.

    The bytes go to a temporary file first and are hard-linked into place, so a
    crash never leaves a half-written key and an existing file is never replaced.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        # fchmod: the umask must not widen or narrow what we promise.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def generate_keypair(name: str, out_dir: Path) -> KeyPairPaths:
    """Create ``NAME.key`` (PEM PKCS8, mode 0600) and ``NAME.pub`` in ``out_dir``.

    Refuses to overwrite either file (``UsageError``).
    """
    _check_name(name)
    out_dir = Path(out_dir)
    paths = KeyPairPaths(private=out_dir / f"{name}.key", public=out_dir / f"{name}.pub")
    for path in (paths.private, paths.public):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} already exists; refusing to overwrite a key file")
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise StorageError(f"cannot create key directory {out_dir}: {e.strerror}") from e
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        _write_new_file(paths.private, private_pem, 0o600)
        try:
            _write_new_file(paths.public, public_key_pem(private_key.public_key()), 0o644)
        except BaseException:
            paths.private.unlink(missing_ok=True)
            raise
    except FileExistsError as e:
        raise UsageError(f"{e.filename} already exists; refusing to overwrite a key file") from e
    except OSError as e:
        raise StorageError(f"cannot write key files in {out_dir}: {e.strerror}") from e
    return paths


def _read_key_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from e
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is too large to be a key file")
    return data


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an unencrypted PEM PKCS8 Ed25519 private key."""
    data = _read_key_file(Path(path))
    if b"PRIVATE KEY" not in data:
        raise KeyFileError(f"{path} does not hold a PEM private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise KeyFileError(
            f"{path} is password-protected; edgefleet needs an unencrypted key"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        # The cryptography message never contains key bytes, but keep ours generic anyway.
        raise KeyFileError(f"{path} is not a readable PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM (``.pub``) or from 64 hex characters."""
    data = _read_key_file(Path(path))
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path} holds a private key; pass the .pub file instead")
    stripped = data.strip()
    if _HEX_KEY_RE.fullmatch(stripped.decode("ascii", errors="replace")):
        return public_key_from_hex(stripped.decode("ascii"))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path} is not a PEM public key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key

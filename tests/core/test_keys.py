"""Key files: generation with safe modes, loading with clear errors, key ids."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.errors import KeyFileError, UsageError
from edgefleet.core.keys import (
    generate_keypair,
    keyid_of,
    load_private_key,
    load_public_key,
    public_key_from_hex,
    public_key_pem,
    public_key_to_hex,
)


def test_generate_writes_pkcs8_private_0600_and_pem_public(tmp_path: Path) -> None:
    paths = generate_keypair("publisher", tmp_path / "keys")
    assert paths.private == tmp_path / "keys" / "publisher.key"
    assert paths.public == tmp_path / "keys" / "publisher.pub"
    assert stat.S_IMODE(paths.private.stat().st_mode) == 0o600
    assert paths.private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert paths.public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private = load_private_key(paths.private)
    public = load_public_key(paths.public)
    assert keyid_of(private.public_key()) == keyid_of(public)
    # No temporary files left next to the keys.
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "publisher.key",
        "publisher.pub",
    ]


def test_private_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        paths = generate_keypair("wide", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(paths.private.stat().st_mode) == 0o600


def test_generate_never_overwrites(tmp_path: Path) -> None:
    paths = generate_keypair("k", tmp_path)
    original = paths.private.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        generate_keypair("k", tmp_path)
    assert paths.private.read_bytes() == original
    paths.private.unlink()
    with pytest.raises(UsageError, match=r"k\.pub already exists"):
        generate_keypair("k", tmp_path)
    assert not paths.private.exists()


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 65, "sp ace"])
def test_bad_key_names_are_usage_errors(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="invalid key name"):
        generate_keypair(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_keyid_is_sha256_of_raw_public_key() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert keyid_of(key) == hashlib.sha256(raw).hexdigest()
    assert public_key_to_hex(key) == raw.hex()
    assert keyid_of(public_key_from_hex(raw.hex())) == keyid_of(key)


def test_public_key_file_may_hold_hex(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    path = tmp_path / "k.hex"
    path.write_text(public_key_to_hex(key) + "\n")
    assert keyid_of(load_public_key(path)) == keyid_of(key)


def _rsa_pems() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def test_wrong_files_give_clear_errors_without_key_material(tmp_path: Path) -> None:
    ed = Ed25519PrivateKey.generate()
    ed_private = ed.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    encrypted = ed.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    rsa_private, rsa_public = _rsa_pems()
    cases = {
        "pub-as-private": (
            load_private_key,
            public_key_pem(ed.public_key()),
            "does not hold a PEM private key",
        ),
        "private-as-public": (load_public_key, ed_private, "holds a private key"),
        "encrypted": (load_private_key, encrypted, "password-protected"),
        "rsa-private": (load_private_key, rsa_private, "not an Ed25519 private key"),
        "rsa-public": (load_public_key, rsa_public, "not an Ed25519 public key"),
        "garbage-private": (
            load_private_key,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "not a readable PEM",
        ),
        "garbage-public": (load_public_key, b"hello", "not a PEM public key"),
        "huge": (load_public_key, b"x" * 20000, "too large"),
    }
    raw_private = ed.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    for name, (loader, content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(KeyFileError) as info:
            loader(path)
        message = str(info.value)
        assert reason in message, (name, message)
        assert str(path) in message
        assert raw_private.hex() not in message
        assert b"PRIVATE KEY" not in message.encode()


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read key file"):
        load_private_key(tmp_path / "nope.key")


@pytest.mark.parametrize("text", ["", "zz" * 32, "ab" * 31, "ab" * 33])
def test_public_key_from_hex_rejects_bad_input(text: str) -> None:
    with pytest.raises(KeyFileError):
        public_key_from_hex(text)

"""Re-verifying an extracted bundle directory against the trust store before a load.

An installed bundle lives on disk extracted; :func:`verify_bundle_dir` reads its
``manifest.json`` and ``signatures.json`` (bounded) and hands them to
:func:`edgefleet.core.signed_manifest.check_signed_manifest`, the one place the
publisher trust rules live (the same call the archive verifier makes), so that
whatever is loaded was signed by the trusted publishers. Then every file the
manifest lists must have the declared size and sha256 (except the ones in
``skip``, which the caller reads with :func:`read_member_checked`, checking them
in the same read that hands them on).

Extra files in the directory are ignored: only listed files are ever read.
Errors are the verifier's (``BundleError``/``SignatureError``, exit 3).

The signature code (``edgefleet.core.signed_manifest``, which loads
``cryptography``) is imported inside :func:`verify_bundle_dir`, so importing
this module for :func:`read_member_checked` keeps a process free of it (the
daemon verifies in a child process: :mod:`edgefleet.agent.verify_process`).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.errors import ModelLoadError
from edgefleet.core.errors import BundleError
from edgefleet.core.light_sha256 import sha256

if TYPE_CHECKING:
    from edgefleet.core.manifest import Manifest
    from edgefleet.core.trust import TrustStore

_CHUNK = 1 << 16


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror or e}") from e
    if len(data) > limit:
        raise BundleError(f"{path} is larger than {limit} bytes")
    return data


def _file_digest(path: Path) -> tuple[int, str]:
    # Whole-bundle checks run in the verification child or a CLI process: OpenSSL's
    # hash (GB/s) is worth its libcrypto there.
    import hashlib

    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror or e}") from e
    return size, digest.hexdigest()


def read_member_checked(bundle_dir: Path, manifest: Any, member: str) -> bytes:
    """The member's bytes, checked against the manifest's size and sha256 in the same read.

    A mismatch is a BundleError (exit 3): the directory changed after it was verified.
    """
    path = Path(bundle_dir) / member
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from e
    entry = manifest.file(member)
    if entry is None:
        raise BundleError(f"manifest of {bundle_dir} lists no {member}")
    # The daemon runs this on every model load: the built-in hash keeps libcrypto
    # out of its memory (see edgefleet.core.light_sha256).
    if len(data) != entry.size or sha256(data).hexdigest() != entry.sha256:
        raise BundleError(
            f"{path} does not match the manifest (size or sha256 differ): the bundle "
            "directory was modified after verification"
        )
    return data


def verify_bundle_dir(
    bundle_dir: Path, trust: TrustStore, *, skip: Collection[str] = ()
) -> Manifest:
    """The directory's manifest, after the signature and file checks above."""
    from edgefleet.core.manifest import MANIFEST_NAME, SIGNATURES_NAME
    from edgefleet.core.signed_manifest import (
        MAX_MANIFEST_BYTES,
        MAX_SIGNATURES_BYTES,
        check_signed_manifest,
    )

    bundle_dir = Path(bundle_dir)
    manifest_bytes = _read_bounded(bundle_dir / MANIFEST_NAME, MAX_MANIFEST_BYTES)
    signatures_bytes = _read_bounded(bundle_dir / SIGNATURES_NAME, MAX_SIGNATURES_BYTES)
    manifest = check_signed_manifest(manifest_bytes, signatures_bytes, trust).manifest
    for entry in manifest.files:
        if entry.path in skip:
            continue
        size, sha = _file_digest(bundle_dir / entry.path)
        if size != entry.size or sha != entry.sha256:
            raise BundleError(
                f"{bundle_dir / entry.path} does not match the signed manifest "
                f"(size {size} vs {entry.size} or sha256 differs)"
            )
    return manifest

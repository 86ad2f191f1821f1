"""Re-verifying an extracted bundle directory against the trust store before a load.

An installed bundle lives on disk extracted; :func:`verify_bundle_dir` repeats
the checks of ``edgefleet.core.bundle_verifier`` that still make sense for a
directory, so that whatever is loaded was signed by the trusted publishers:

1. ``manifest.json`` (bounded size) is the canonical encoding of the manifest
   it parses to, and ``signatures.json`` holds at least the publisher
   threshold of valid signatures over exactly those bytes;
2. every file the manifest lists has the declared size and sha256 (except the
   ones in ``skip``, which the caller checks while reading them anyway).

Extra files in the directory are ignored: only listed files are ever read.
Errors are the verifier's (``BundleError``/``SignatureError``, exit 3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path

from edgefleet.core.canonical import parse_json
from edgefleet.core.errors import BundleError
from edgefleet.core.manifest import MANIFEST_NAME, SIGNATURES_NAME, Manifest
from edgefleet.core.trust import TrustStore, signatures_from_json, verify_threshold

MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURES_BYTES = 64 << 10
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


def verify_bundle_dir(
    bundle_dir: Path, trust: TrustStore, *, skip: Collection[str] = ()
) -> Manifest:
    """The directory's manifest, after the signature and file checks above."""
    bundle_dir = Path(bundle_dir)
    manifest_bytes = _read_bounded(bundle_dir / MANIFEST_NAME, MAX_MANIFEST_BYTES)
    signatures_bytes = _read_bounded(bundle_dir / SIGNATURES_NAME, MAX_SIGNATURES_BYTES)
    try:
        signatures = signatures_from_json(parse_json(signatures_bytes))
    except ValueError as e:
        raise BundleError(f"{bundle_dir / SIGNATURES_NAME} is not valid JSON: {e}") from e
    verify_threshold(manifest_bytes, signatures, trust.publisher_keys, trust.publisher_threshold)
    manifest = Manifest.from_json_bytes(manifest_bytes)
    if manifest.canonical_bytes() != manifest_bytes:
        raise BundleError(f"{bundle_dir / MANIFEST_NAME} is not in canonical form")
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

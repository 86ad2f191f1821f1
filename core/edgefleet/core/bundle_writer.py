"""Writing signed ``.efb`` bundles.

Invariants:

- A bundle is an uncompressed POSIX ustar archive: ``manifest.json`` (the
  canonical bytes of the manifest), ``signatures.json`` (canonical JSON list
  of ``{keyid, sig}`` over exactly those bytes), then every other member in the
  order of ``manifest.files``; then the end-of-archive blocks.
- Headers are deterministic (mode 0644, uid/gid 0, no user names, mtime 0), so
  the same manifest, members and keys give byte-identical bundles (Ed25519
  signatures are deterministic too).
- The manifest's ``files`` is computed here from the members, never trusted
  from the caller; a member that changes while it is written aborts the write.
- :func:`write_signed_bundle` adds no signature of its own: it writes
  manifest bytes exactly as they were signed, with the signatures given, so a
  signature can be added to an existing bundle (``bundle sign``) without
  invalidating the others.
- The output appears atomically: a temporary sibling file is fsynced and
  renamed over ``out_path``; on any failure nothing is left behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.canonical import canonical_json
from edgefleet.core.durable import fsync_dir
from edgefleet.core.errors import BundleError, StorageError, UsageError
from edgefleet.core.keys import keyid_of
from edgefleet.core.manifest import (
    MANIFEST_NAME,
    SIGNATURES_NAME,
    FileEntry,
    Manifest,
    check_member_path,
)
from edgefleet.core.signed_manifest import parse_manifest
from edgefleet.core.trust import Signature, sign_payload

_CHUNK = 1 << 16


@dataclass(frozen=True)
class BundleInfo:
    """A bundle on disk: its path, sha256 and size, and the manifest it carries."""

    path: Path
    sha256: str
    size: int
    manifest: Manifest
    signer_keyids: tuple[str, ...]


def _describe_member(path: str, source: bytes | Path) -> FileEntry:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return FileEntry(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    digest = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise StorageError(f"cannot read bundle member {path} from {source}: {e.strerror}") from e
    return FileEntry(path=path, size=size, sha256=digest.hexdigest())


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class _HashingReader:
    """Reads a file for tarfile while hashing it, to catch a member that
    changed between hashing and writing."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.digest.update(data)
        return data


def sign_manifest_bytes(
    manifest_bytes: bytes, private_keys: Sequence[Ed25519PrivateKey]
) -> list[Signature]:
    """One signature per distinct key over the exact manifest bytes."""
    seen: dict[str, Signature] = {}
    for key in private_keys:
        if not isinstance(key, Ed25519PrivateKey):
            raise UsageError("bundle signing keys must be Ed25519 private keys")
        keyid = keyid_of(key.public_key())
        if keyid not in seen:
            seen[keyid] = sign_payload(manifest_bytes, key)
    return list(seen.values())


def write_bundle(
    out_path: Path,
    manifest: Manifest,
    members: Mapping[str, bytes | Path],
    private_keys: Sequence[Ed25519PrivateKey],
) -> BundleInfo:
    """Write a signed bundle to ``out_path`` (replacing it atomically).

    ``members`` maps member paths (``model.onnx``, ``smoke.npz``,
    ``reference.json``, optional others) to their bytes or to a file. The
    manifest's ``files`` is recomputed from them; the manifest must name a
    member for each of :meth:`Manifest.required_members`.
    """
    out_path = Path(out_path)
    if not private_keys:
        raise UsageError("a bundle needs at least one signing key")
    for path in members:
        check_member_path(path)
    entries = [_describe_member(path, source) for path, source in members.items()]
    signed = manifest.with_files(entries)
    missing = [p for p in signed.required_members() if p not in members]
    if missing:
        raise BundleError(f"bundle lacks required member {missing[0]!r}")
    manifest_bytes = signed.canonical_bytes()
    signatures = sign_manifest_bytes(manifest_bytes, private_keys)
    return _write_archive(out_path, signed, manifest_bytes, signatures, entries, members)


def write_signed_bundle(
    out_path: Path,
    manifest_bytes: bytes,
    signatures: Sequence[Signature],
    members: Mapping[str, Path],
) -> BundleInfo:
    """Write already-signed manifest bytes with ``signatures`` (kept as given,
    in order) and the members they list, atomically like :func:`write_bundle`.

    ``manifest_bytes`` are written unchanged, never re-encoded (re-encoding
    could change the signed bytes), and must be canonical JSON; each member
    must match its ``files`` entry while it is written, and they are written in
    the order of ``files``.
    """
    out_path = Path(out_path)
    if not signatures:
        raise UsageError("a bundle needs at least one signature")
    manifest = parse_manifest(manifest_bytes)  # canonical and complete: the verifier's rule
    if sorted(members) != sorted(entry.path for entry in manifest.files):
        raise BundleError("bundle members differ from the manifest's files")
    return _write_archive(out_path, manifest, manifest_bytes, signatures, manifest.files, members)


def _write_archive(
    out_path: Path,
    manifest: Manifest,
    manifest_bytes: bytes,
    signatures: Sequence[Signature],
    entries: Sequence[FileEntry],
    members: Mapping[str, bytes | Path],
) -> BundleInfo:
    signatures_bytes = canonical_json([s.to_dict() for s in signatures])
    parent = out_path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{out_path.name}.", suffix=".tmp")
    except OSError as e:
        raise StorageError(f"cannot write bundle in {parent}: {e.strerror}") from e
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                tar.addfile(
                    _tarinfo(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes)
                )
                tar.addfile(
                    _tarinfo(SIGNATURES_NAME, len(signatures_bytes)), io.BytesIO(signatures_bytes)
                )
                for entry in entries:
                    _add_member(tar, entry, members[entry.path])
            raw.flush()
            os.fsync(raw.fileno())
        digest, size = _hash_file(tmp)
        os.replace(tmp, out_path)
        fsync_dir(parent)
    except OSError as e:
        raise StorageError(f"cannot write bundle {out_path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return BundleInfo(
        path=out_path,
        sha256=digest,
        size=size,
        manifest=manifest,
        signer_keyids=tuple(s.keyid for s in signatures),
    )


def _add_member(tar: tarfile.TarFile, entry: FileEntry, source: bytes | Path) -> None:
    info = _tarinfo(entry.path, entry.size)
    if isinstance(source, bytes | bytearray | memoryview):
        tar.addfile(info, io.BytesIO(bytes(source)))
        return
    with open(source, "rb") as f:
        reader = _HashingReader(f)
        try:
            tar.addfile(info, reader)  # type: ignore[arg-type]
        except OSError as e:
            raise BundleError(f"bundle member {entry.path} changed while it was written") from e
        if reader.digest.hexdigest() != entry.sha256 or f.read(1):
            raise BundleError(f"bundle member {entry.path} changed while it was written")


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size

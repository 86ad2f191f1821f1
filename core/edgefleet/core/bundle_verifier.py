"""Streaming verification (and extraction) of ``.efb`` bundles.

The archive is read with a small, strict ustar reader of our own rather than
``tarfile``: tarfile silently treats a corrupt header as the end of the
archive, reads pax/GNU extension headers of any size into memory, and follows
no budget. Here every byte is read once, in order, with bounded memory.

Verification order, each step only after the previous passed:

1. the input fits the byte budget (when one is given);
2. the first member is a regular file ``manifest.json`` of at most
   :data:`MAX_MANIFEST_BYTES`, the second a regular ``signatures.json`` of at
   most :data:`MAX_SIGNATURES_BYTES`;
3. :func:`edgefleet.core.signed_manifest.check_signed_manifest` (the one
   place the trust rules live) accepts the two: the signatures over the exact
   manifest bytes reach the publisher threshold of DISTINCT trusted keys, and
   only then is the manifest parsed (canonical JSON); then its declared sizes
   are checked against the budget;
4. every other member is a regular file with a safe relative path, listed in
   the manifest, seen once, of exactly the declared size and sha256;
5. no listed member is missing, the end-of-archive marker is present and only
   zero padding follows it.

Invariants: nothing is written by :meth:`BundleVerifier.verify`;
:meth:`BundleVerifier.verify_and_extract` writes only inside a fresh temporary
sibling of ``dest`` and renames it to ``dest`` after step 5 — on any failure
the temporary directory is removed and ``dest`` never exists. Every rejection
is a ``BundleError`` or ``SignatureError`` with a one-line reason naming what
failed.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from edgefleet.core.durable import fsync_dir
from edgefleet.core.errors import BundleError, StorageError
from edgefleet.core.manifest import (
    MANIFEST_NAME,
    SIGNATURES_NAME,
    Manifest,
    check_member_path,
)
from edgefleet.core.signed_manifest import (
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURES_BYTES,
    check_signed_manifest,
    parse_manifest,
    parse_signatures,
)
from edgefleet.core.trust import Signature, TrustStore

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNATURES_BYTES",
    "BundleSummary",
    "BundleVerifier",
    "IntactBundle",
    "VerifiedBundle",
    "extract_without_trust",
    "inspect_bundle",
    "sha256_file",
]
#: Tar pads archives to 10 KiB records; more trailing bytes than this is not padding.
MAX_TRAILING_BYTES = 64 << 10
BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_CHUNK = 1 << 16
_T = TypeVar("_T")

_TYPE_NAMES = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a fifo",
    b"7": "a contiguous file",
    b"x": "a pax extended header",
    b"g": "a pax global header",
    b"L": "a GNU long-name header",
    b"K": "a GNU long-link header",
    b"S": "a GNU sparse file",
}


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check."""

    manifest: Manifest
    sha256: str
    size: int
    signer_keyids: list[str]


@dataclass(frozen=True)
class IntactBundle:
    """A bundle whose archive and members match its own manifest; its
    signatures were NOT checked against any trust store."""

    manifest: Manifest
    manifest_bytes: bytes
    signatures: list[Signature]
    sha256: str
    size: int


@dataclass(frozen=True)
class BundleSummary:
    """What ``bundle inspect`` shows: the leading members, NOT verified."""

    manifest: Manifest
    signatures: list[Signature]
    sha256: str
    size: int


@dataclass(frozen=True)
class _Header:
    name: str
    size: int
    typeflag: bytes
    linkname: str
    offset: int
    block: bytes = b""  # the raw 512 bytes, compared with the canonical writer's


def canonical_header(name: str, size: int) -> bytes:
    """The ustar header ``bundle_writer`` writes for a member (tarfile's USTAR layout with
    mode 0644, mtime 0, owner 0, no user or group names); bundles carry nothing else.

    Any other header bytes (a new mtime or mode, bytes after the NUL that ends a name)
    would change the bundle's sha256 without touching its signed content.
    """
    head = (
        name.encode("utf-8").ljust(100, b"\0")
        + b"0000644\0"
        + b"0000000\0" * 2
        + b"%011o\0" % size
        + b"00000000000\0"
    )
    # type "0", no link name, POSIX magic, then zeros: user and group names, device
    # numbers (tarfile leaves them empty for regular files) and the name prefix.
    tail = b"0" + b"\0" * 100 + b"ustar\x0000"
    block = (head + b" " * 8 + tail).ljust(BLOCK, b"\0")
    checksum = b"%06o\0" % sum(block)
    return block[:148] + checksum + block[155:]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}") from e
    return digest.hexdigest()


def _octal(field: bytes, what: str, offset: int) -> int:
    if field[:1] and field[0] & 0x80:
        raise BundleError(f"corrupt tar header at byte {offset}: binary {what} field")
    # Digits padded with spaces/NULs only: bytes after the terminator are not
    # free to vary, so a header is a function of the values it encodes.
    text = field.strip(b" \0")
    if not text:
        return 0
    try:
        return int(text.decode("ascii"), 8)
    except (UnicodeDecodeError, ValueError):
        raise BundleError(f"corrupt tar header at byte {offset}: bad {what} field") from None


def _cstring(field: bytes, what: str, offset: int) -> str:
    try:
        return field.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"tar header at byte {offset}: {what} is not UTF-8") from None


class _TarReader:
    """Sequential reader of a POSIX ustar stream that hashes what it reads."""

    def __init__(self, f: BinaryIO, budget: int | None) -> None:
        self._f = f
        self._budget = budget
        self.pos = 0
        self.digest = hashlib.sha256()

    def _read(self, n: int) -> bytes:
        parts: list[bytes] = []
        want = n
        while want > 0:
            chunk = self._f.read(want)
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
        data = b"".join(parts)
        self.pos += len(data)
        self.digest.update(data)
        if self._budget is not None and self.pos > self._budget:
            raise BundleError(f"bundle is larger than the budget of {self._budget} bytes")
        return data

    def next_header(self) -> _Header | None:
        """The next member header, or None at the end-of-archive marker."""
        offset = self.pos
        block = self._read(BLOCK)
        if offset == 0:
            _check_tar_start(block)
        if not block:
            raise BundleError("truncated archive: no end-of-archive marker")
        if len(block) < BLOCK:
            raise BundleError(f"truncated archive: ends inside the header at byte {offset}")
        if block == _ZERO_BLOCK:
            second = self._read(BLOCK)
            if second != _ZERO_BLOCK:
                raise BundleError("truncated archive: incomplete end-of-archive marker")
            return None
        return _parse_header(block, offset)

    def data(self, size: int, what: str) -> Iterator[bytes]:
        """Yield a member's ``size`` bytes in chunks, then skip its padding."""
        left = size
        while left > 0:
            chunk = self._read(min(left, _CHUNK))
            if not chunk:
                raise BundleError(
                    f"truncated archive: {what} ends after {size - left} of {size} bytes"
                )
            left -= len(chunk)
            yield chunk
        padding = -size % BLOCK
        if padding:
            pad = self._read(padding)
            if len(pad) < padding:
                raise BundleError(f"truncated archive: padding after {what} is cut off")
            # Zero padding keeps the archive bytes a function of its contents.
            if pad.count(0) != padding:
                raise BundleError(f"non-zero padding after {what}")

    def read_member(self, header: _Header, limit: int) -> bytes:
        if header.size > limit:
            raise BundleError(
                f"{header.name} is {header.size} bytes, over the limit of {limit} bytes"
            )
        return b"".join(self.data(header.size, header.name))

    def finish(self) -> None:
        """Only zero padding may follow the end-of-archive marker."""
        trailing = 0
        while chunk := self._read(_CHUNK):
            trailing += len(chunk)
            if chunk.count(0) != len(chunk) or trailing > MAX_TRAILING_BYTES:
                raise BundleError("unexpected data after the end of the archive")


def _check_tar_start(block: bytes) -> None:
    if not block:
        raise BundleError("not a tar archive: the file is empty")
    if block[:2] == b"\x1f\x8b":
        raise BundleError("not a tar archive: gzip-compressed (bundles are plain tar)")
    if len(block) < BLOCK:
        raise BundleError("not a tar archive: shorter than one tar block")
    if block == _ZERO_BLOCK:
        raise BundleError("empty tar archive: manifest.json is missing")
    if block[257:263] != b"ustar\0" and block[257:265] != b"ustar  \0":
        raise BundleError("not a tar archive: no ustar header at the start")


def _parse_header(block: bytes, offset: int) -> _Header:
    stored = _octal(block[148:156], "checksum", offset)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    # Some old writers summed signed chars; accept that spelling too.
    if stored != unsigned and stored != unsigned - 256 * sum(
        1 for b in block[:148] + block[156:] if b > 127
    ):
        raise BundleError(f"corrupt tar header at byte {offset}: checksum mismatch")
    posix = block[257:263] == b"ustar\0" and block[263:265] == b"00"
    gnu = block[257:265] == b"ustar  \0"
    if not (posix or gnu):
        raise BundleError(f"tar header at byte {offset} is neither POSIX ustar nor GNU tar")
    name = _cstring(block[0:100], "member name", offset)
    # GNU headers keep access/change times where POSIX keeps the name prefix.
    prefix = _cstring(block[345:500], "member name prefix", offset) if posix else ""
    if prefix:
        name = f"{prefix}/{name}"
    return _Header(
        name=name,
        size=_octal(block[124:136], "size", offset),
        typeflag=block[156:157],
        linkname=_cstring(block[157:257], "link name", offset),
        offset=offset,
        block=block,
    )


def _require_regular(header: _Header) -> None:
    if header.typeflag in (b"0", b"\0"):
        if header.block != canonical_header(header.name, header.size):
            raise BundleError(
                f"tar header of {header.name!r} at byte {header.offset} differs from the "
                "canonical one (mode, mtime, owner or bytes after the name)"
            )
        return
    kind = _TYPE_NAMES.get(header.typeflag, f"of unknown tar type {header.typeflag!r}")
    target = f" to {header.linkname!r}" if header.typeflag in (b"1", b"2") else ""
    raise BundleError(f"member {header.name!r} is {kind}{target}; only regular files are allowed")


def _leading_member(reader: _TarReader, expected: str, limit: int, position: str) -> bytes:
    header = reader.next_header()
    if header is None:
        raise BundleError(f"{position} member must be {expected}, but the archive ends")
    if header.name != expected:
        raise BundleError(f"{position} member must be {expected}, found {header.name!r}")
    _require_regular(header)
    return reader.read_member(header, limit)


def _read_head(reader: _TarReader) -> tuple[bytes, bytes, list[Signature]]:
    """The two leading members, bounded, and the parsed (unverified) signatures."""
    manifest_bytes = _leading_member(reader, MANIFEST_NAME, MAX_MANIFEST_BYTES, "first")
    signatures_bytes = _leading_member(reader, SIGNATURES_NAME, MAX_SIGNATURES_BYTES, "second")
    return manifest_bytes, signatures_bytes, parse_signatures(signatures_bytes)


def _check_member_header(header: _Header) -> None:
    if header.typeflag in (b"x", b"g", b"L", b"K"):
        raise BundleError(
            f"{_TYPE_NAMES[header.typeflag]} at byte {header.offset}; "
            "bundles use plain ustar headers only"
        )
    _require_regular(header)
    try:
        check_member_path(header.name)
    except BundleError as e:
        if header.name in (MANIFEST_NAME, SIGNATURES_NAME):
            raise BundleError(f"member {header.name!r} appears twice") from None
        raise BundleError(str(e).replace("member path", "member", 1)) from None


class _Extraction:
    """A temporary sibling of ``dest`` that becomes ``dest`` only on commit."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        if os.path.lexists(dest):
            raise StorageError(f"{dest} already exists; extract into a new directory")
        try:
            self.tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
        except OSError as e:
            raise StorageError(f"cannot create a directory next to {dest}: {e.strerror}") from e

    def write(self, path: str, chunks: Iterator[bytes]) -> None:
        """Write one member; ``chunks`` may raise BundleError mid-way (the
        caller then aborts the whole directory)."""
        target = self.tmp / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(target, flags, 0o644)
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise StorageError(f"cannot extract {path} next to {self.dest}: {e.strerror}") from e

    def commit(self) -> None:
        try:
            directories = {self.tmp} | {p.parent for p in self.tmp.rglob("*")}
            for directory in sorted(directories, reverse=True):
                directory.chmod(0o755)
                fsync_dir(directory)
            os.rename(self.tmp, self.dest)
            fsync_dir(self.dest.parent)
        except OSError as e:
            raise StorageError(
                f"cannot move the verified bundle to {self.dest}: {e.strerror}"
            ) from e

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _hashing(chunks: Iterator[bytes], digest: hashlib._Hash) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


@dataclass(frozen=True)
class BundleVerifier:
    """Checks bundles against a trust store and an optional byte budget
    (the device profile's ``max_bundle_bytes``)."""

    trust: TrustStore
    max_bundle_bytes: int | None = None

    def verify(self, path: Path, *, expected_sha256: str | None = None) -> VerifiedBundle:
        """Check everything; write nothing."""
        return self._run(Path(path), None, expected_sha256)

    def verify_and_extract(
        self, path: Path, dest: Path, *, expected_sha256: str | None = None
    ) -> VerifiedBundle:
        """Check everything and leave the members (plus manifest.json and
        signatures.json) in the new directory ``dest``; nothing on failure."""
        return _extracting(Path(dest), lambda ex: self._run(Path(path), ex, expected_sha256))

    def _run(
        self, path: Path, extraction: _Extraction | None, expected_sha256: str | None
    ) -> VerifiedBundle:
        result = _read_bundle_file(
            path, self.max_bundle_bytes, lambda f: self._verify_stream(f, extraction)
        )
        if expected_sha256 is not None and result.sha256 != expected_sha256.lower():
            raise BundleError(
                f"bundle sha256 {result.sha256} is not the expected {expected_sha256}"
            )
        return result

    def verify_stream(self, f: BinaryIO) -> VerifiedBundle:
        """Verify a bundle read sequentially from ``f`` (a file or a pipe);
        write nothing."""
        return self._verify_stream(f, None)

    def _verify_stream(self, f: BinaryIO, extraction: _Extraction | None) -> VerifiedBundle:
        reader = _TarReader(f, self.max_bundle_bytes)
        manifest_bytes = _leading_member(reader, MANIFEST_NAME, MAX_MANIFEST_BYTES, "first")
        signatures_bytes = _leading_member(reader, SIGNATURES_NAME, MAX_SIGNATURES_BYTES, "second")
        signed = check_signed_manifest(manifest_bytes, signatures_bytes, self.trust)
        manifest = signed.manifest
        if self.max_bundle_bytes is not None and manifest.total_size() > self.max_bundle_bytes:
            raise BundleError(
                f"manifest declares {manifest.total_size()} bytes of members, over the "
                f"budget of {self.max_bundle_bytes} bytes"
            )
        _read_members(reader, manifest, manifest_bytes, signatures_bytes, extraction)
        return VerifiedBundle(
            manifest=manifest,
            sha256=reader.digest.hexdigest(),
            size=reader.pos,
            signer_keyids=list(signed.signer_keyids),
        )

    @staticmethod
    def _check_members(
        reader: _TarReader, manifest: Manifest, extraction: _Extraction | None
    ) -> None:
        declared = {entry.path: entry for entry in manifest.files}
        seen: set[str] = set()
        while (header := reader.next_header()) is not None:
            _check_member_header(header)
            if header.name in seen:
                raise BundleError(f"member {header.name!r} appears twice")
            seen.add(header.name)
            entry = declared.get(header.name)
            if entry is None:
                raise BundleError(f"unknown member {header.name!r} (not listed in the manifest)")
            if header.size != entry.size:
                relation = "more" if header.size > entry.size else "less"
                raise BundleError(
                    f"member {header.name!r} is {header.size} bytes, {relation} than the "
                    f"{entry.size} the manifest declares"
                )
            digest = hashlib.sha256()
            chunks = _hashing(reader.data(header.size, repr(header.name)), digest)
            if extraction is not None:
                extraction.write(header.name, chunks)
            else:
                collections.deque(chunks, maxlen=0)
            if digest.hexdigest() != entry.sha256:
                raise BundleError(
                    f"member {header.name!r} fails its sha256 check: content differs "
                    "from the manifest"
                )
        missing = [entry.path for entry in manifest.files if entry.path not in seen]
        if missing:
            raise BundleError(f"missing member {missing[0]!r} (listed in the manifest)")


def _read_bundle_file(path: Path, budget: int | None, read: Callable[[BinaryIO], _T]) -> _T:
    """Open ``path``, refuse it early when its size is over ``budget``, and
    hand it to ``read``; I/O failures become ``StorageError``."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if budget is not None and stat.S_ISREG(st.st_mode) and st.st_size > budget:
                raise BundleError(
                    f"bundle is {st.st_size} bytes, over the budget of {budget} bytes"
                )
            return read(f)
    except OSError as e:
        raise StorageError(f"cannot read bundle {path}: {e.strerror or e}") from e


def _extracting(dest: Path, run: Callable[[_Extraction], _T]) -> _T:
    """Run ``run`` into a fresh temporary sibling of ``dest`` and rename it to
    ``dest`` only if ``run`` returned; on any failure remove it."""
    extraction = _Extraction(dest)
    try:
        result = run(extraction)
        extraction.commit()
    except BaseException:
        extraction.abort()
        raise
    return result


def _read_members(
    reader: _TarReader,
    manifest: Manifest,
    manifest_bytes: bytes,
    signatures_bytes: bytes,
    extraction: _Extraction | None,
) -> None:
    """Steps 4 and 5: every member against the manifest, then the archive end."""
    if extraction is not None:
        extraction.write(MANIFEST_NAME, iter([manifest_bytes]))
        extraction.write(SIGNATURES_NAME, iter([signatures_bytes]))
    BundleVerifier._check_members(reader, manifest, extraction)
    reader.finish()


def extract_without_trust(
    path: Path, dest: Path, *, max_bundle_bytes: int | None = None
) -> IntactBundle:
    """Every check of :class:`BundleVerifier` EXCEPT the signature threshold,
    extracting into the new directory ``dest`` (nothing on failure).
    ``max_bundle_bytes`` is the verifier's budget, applied the same way.

    For tools that add signatures (``bundle sign``): they must know that the
    members match the manifest, and judge the existing signatures themselves.
    Never use this to decide whether to install or serve a bundle.
    """
    path = Path(path)

    def read(f: BinaryIO, extraction: _Extraction) -> IntactBundle:
        reader = _TarReader(f, max_bundle_bytes)
        manifest_bytes, signatures_bytes, signatures = _read_head(reader)
        manifest = parse_manifest(manifest_bytes)
        _read_members(reader, manifest, manifest_bytes, signatures_bytes, extraction)
        return IntactBundle(
            manifest=manifest,
            manifest_bytes=manifest_bytes,
            signatures=signatures,
            sha256=reader.digest.hexdigest(),
            size=reader.pos,
        )

    return _extracting(
        Path(dest), lambda ex: _read_bundle_file(path, max_bundle_bytes, lambda f: read(f, ex))
    )


def inspect_bundle(path: Path) -> BundleSummary:
    """Read the manifest and signatures of a bundle WITHOUT checking trust or
    members (for display); bounded like the verifier."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            manifest_bytes, _, signatures = _read_head(_TarReader(f, None))
    except OSError as e:
        raise StorageError(f"cannot read bundle {path}: {e.strerror or e}") from e
    manifest = Manifest.from_json_bytes(manifest_bytes)
    return BundleSummary(
        manifest=manifest,
        signatures=signatures,
        sha256=sha256_file(path),
        size=path.stat().st_size,
    )

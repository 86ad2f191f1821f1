"""The signed-manifest check: every publisher trust rule for a bundle, in one pure place.

A bundle is trusted through its ``manifest.json``: the manifest lists the size and
sha256 of every member, and ``signatures.json`` signs the exact manifest bytes. The
archive reader (:mod:`edgefleet.core.bundle_verifier`), the re-check of an extracted
directory (``edgefleet.agent.runtime_verify``), ``bundle sign`` and the hub's publish
path all read those two members themselves, then hand the bytes to this module and
act only on what it returns (python-tuf's split: a pure trusted-metadata checker the
updater only calls). Nothing here reads a file, a clock or the network.

Rules, each applied only after the previous passed:

1. ``manifest.json`` is at most :data:`MAX_MANIFEST_BYTES`, ``signatures.json`` at
   most :data:`MAX_SIGNATURES_BYTES` (the readers enforce these bounds *while*
   reading; :func:`check_member_sizes` states them for readers that know a size first);
2. ``signatures.json`` is a JSON list of at most ``MAX_SIGNATURES`` ``{keyid, sig}``
   objects (else ``BundleError``);
3. at least the publisher threshold of DISTINCT trusted keys made a valid signature
   over exactly the manifest bytes (else ``SignatureError``); an empty publisher role
   trusts nothing;
4. only then is the manifest parsed: it must be the canonical JSON encoding of
   itself (what was signed is what every parser sees) and list every member a
   bundle needs (else ``BundleError``).

:func:`parse_manifest` is rule 4 alone, for tools that judge signatures themselves
(``bundle sign``, through :func:`tally_existing`); it never decides whether a bundle
may be installed or served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.core.canonical import canonical_json, parse_json
from edgefleet.core.errors import BundleError, SignatureError
from edgefleet.core.manifest import MANIFEST_NAME, SIGNATURES_NAME, Manifest
from edgefleet.core.trust import (
    Signature,
    SignatureTally,
    TrustStore,
    signatures_from_json,
    tally_signatures,
    verify_threshold,
)

MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURES_BYTES = 64 << 10

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNATURES_BYTES",
    "SignedManifest",
    "check_member_sizes",
    "check_publisher_signatures",
    "check_signed_manifest",
    "parse_manifest",
    "parse_signatures",
    "tally_existing",
]


@dataclass(frozen=True)
class SignedManifest:
    """A manifest whose signatures reached the publisher threshold."""

    manifest: Manifest
    manifest_bytes: bytes
    signatures: tuple[Signature, ...]
    signer_keyids: tuple[str, ...]


def check_member_sizes(manifest_size: int, signatures_size: int) -> None:
    """Rule 1 for a reader that knows both sizes before reading the bytes."""
    for name, size, limit in (
        (MANIFEST_NAME, manifest_size, MAX_MANIFEST_BYTES),
        (SIGNATURES_NAME, signatures_size, MAX_SIGNATURES_BYTES),
    ):
        if size > limit:
            raise BundleError(f"{name} is {size} bytes, over the limit of {limit} bytes")


def parse_signatures(signatures_bytes: bytes) -> list[Signature]:
    """Rule 2: the signature list (not checked against any key)."""
    try:
        return signatures_from_json(parse_json(signatures_bytes))
    except (ValueError, SignatureError) as e:
        raise BundleError(f"signatures.json is malformed: {e}") from e


def check_publisher_signatures(
    manifest_bytes: bytes, signatures: Sequence[Signature], trust: TrustStore
) -> tuple[str, ...]:
    """Rule 3: the key ids of the distinct trusted publishers that signed, or SignatureError."""
    try:
        signers = verify_threshold(
            manifest_bytes, signatures, trust.publisher_keys, trust.publisher_threshold
        )
    except SignatureError as e:
        raise SignatureError(f"manifest.json signature check failed: {e}") from None
    return tuple(signers)


def parse_manifest(manifest_bytes: bytes) -> Manifest:
    """Rule 4: the manifest the bytes encode, canonical and complete (signatures NOT checked)."""
    try:
        value = parse_json(manifest_bytes)
    except ValueError as e:
        raise BundleError(f"manifest.json is not valid JSON: {e}") from e
    # Signed bytes must be the canonical form, so that what was signed is
    # exactly what every parser sees (no whitespace or key-order malleability).
    if canonical_json(value) != manifest_bytes:
        raise BundleError("manifest.json is not in canonical JSON form")
    manifest = Manifest.from_dict(value)
    required = [p for p in manifest.required_members() if manifest.file(p) is None]
    if required:
        raise BundleError(f"manifest lists no {required[0]!r}, which every bundle needs")
    return manifest


def check_signed_manifest(
    manifest_bytes: bytes, signatures_bytes: bytes, trust: TrustStore
) -> SignedManifest:
    """Rules 1-4 over the two leading members' bytes: the trusted manifest."""
    check_member_sizes(len(manifest_bytes), len(signatures_bytes))
    signatures = parse_signatures(signatures_bytes)
    signers = check_publisher_signatures(manifest_bytes, signatures, trust)
    return SignedManifest(
        manifest=parse_manifest(manifest_bytes),
        manifest_bytes=manifest_bytes,
        signatures=tuple(signatures),
        signer_keyids=signers,
    )


def tally_existing(
    manifest_bytes: bytes,
    signatures: Sequence[Signature],
    known: Mapping[str, Ed25519PublicKey],
) -> SignatureTally:
    """How the signatures already on a bundle fare against the keys a signer holds.

    Every signature must at least be an encoded Ed25519 signature (``BundleError``),
    and none by a key in ``known`` may fail to verify (``SignatureError``): a signer
    adds a signature only next to ones it could check or cannot judge.
    """
    for signature in signatures:
        if signature.signature_bytes() is None:
            raise BundleError(
                f"signatures.json holds a malformed signature (keyid {signature.keyid[:16]}...)"
            )
    tally = tally_signatures(manifest_bytes, signatures, known)
    if tally.invalid:
        raise SignatureError(
            f"{tally.invalid} existing signature(s) by a known key do not verify over manifest.json"
        )
    return tally

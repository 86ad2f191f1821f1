"""Adding publisher signatures to an existing bundle (``edgefleet bundle sign``).

A publisher threshold above 1 needs several people, each holding one key, to
sign the same bundle: the first packs it, the others add their signature with
:func:`sign_bundle`, as with TUF's multi-signature metadata.

Invariants:

- A signature is added only to a bundle whose archive and members match its
  own manifest (every check of the verifier except the threshold), and whose
  existing signatures verify for every key id we hold a key for (the
  ``trusted`` keys and the signing keys themselves): both rules are
  :mod:`edgefleet.core.signed_manifest`'s, applied nowhere else. A signature by any other
  key is kept, in place, but not vouched for: nobody here can check it.
- The manifest bytes are never re-encoded, so every signature already present
  stays valid. New signatures follow the existing ones, in the order the keys
  were given, one per distinct key.
- Signing with a key that already signed the bundle is refused
  (``UsageError``) rather than ignored, so an operator who picked the wrong
  key hears about it instead of believing a threshold is met.
- The output is written by :func:`write_signed_bundle` (temporary sibling,
  fsync, rename), so the same bundle and keys always give the same bytes and
  nothing but the finished bundle is ever left behind.
- With a byte budget (``max_bundle_bytes``), the verifier's own checks apply
  (``BundleError``): a regular input file over it is refused from its size
  alone, before a byte of it is read; an input that turns out larger once
  read (a pipe, or a file that grew) is refused as soon as the budget is
  passed. Either way before the output is written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.core.bundle_verifier import extract_without_trust
from edgefleet.core.bundle_writer import BundleInfo, sign_manifest_bytes, write_signed_bundle
from edgefleet.core.canonical import canonical_json
from edgefleet.core.errors import KeyFileError, StorageError, UsageError
from edgefleet.core.keys import keyid_of, load_private_key
from edgefleet.core.signed_manifest import MAX_SIGNATURES_BYTES, tally_existing
from edgefleet.core.trust import MAX_SIGNATURES, Signature

__all__ = ["SignaturePlan", "SignedBundle", "load_signing_key", "plan_signatures", "sign_bundle"]


@dataclass(frozen=True)
class SignedBundle:
    """The bundle :func:`sign_bundle` wrote and what its signatures are."""

    info: BundleInfo
    added_keyids: tuple[str, ...]
    verified_keyids: tuple[str, ...]
    unchecked_keyids: tuple[str, ...]


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key at ``path``. A missing or unusable key file is
    the caller's argument error (``UsageError``), as for ``pack --key``."""
    path = Path(path)
    if not path.exists():
        raise UsageError(
            f"signing key {path} does not exist (create one with 'edgefleet keys generate NAME')"
        )
    try:
        return load_private_key(path)
    except KeyFileError as e:
        raise UsageError(str(e)) from e


@dataclass(frozen=True)
class SignaturePlan:
    """The signature list to write, and what became of the existing ones."""

    signatures: tuple[Signature, ...]
    added: tuple[Signature, ...]
    #: existing signatures that verified with a key we hold
    verified_keyids: tuple[str, ...]
    #: existing signatures by keys we do not hold: kept, not vouched for
    unchecked_keyids: tuple[str, ...]


def plan_signatures(
    manifest_bytes: bytes,
    existing: Sequence[Signature],
    private_keys: Sequence[Ed25519PrivateKey],
    trusted: Mapping[str, Ed25519PublicKey],
) -> SignaturePlan:
    """The signatures after adding one by each distinct key of ``private_keys`` (pure).

    Raises ``SignatureError`` when an existing signature by a key we hold
    (``trusted`` or a signing key) does not verify, ``BundleError`` when one is
    not an encoded Ed25519 signature at all, and ``UsageError`` when a key
    already signed or the list would grow past what verifiers accept.
    """
    if not private_keys:
        raise UsageError("bundle sign needs at least one --key")
    added = sign_manifest_bytes(manifest_bytes, private_keys)
    known = dict(trusted)
    for key in private_keys:
        known[keyid_of(key.public_key())] = key.public_key()
    tally = tally_existing(manifest_bytes, existing, known)
    already = [s.keyid for s in added if s.keyid in tally.valid_keyids]
    if already:
        raise UsageError(f"already signed by key {already[0]}; nothing written")
    signatures = (*existing, *added)
    if len(signatures) > MAX_SIGNATURES:
        raise UsageError(
            f"the bundle would carry {len(signatures)} signatures; verifiers accept at most "
            f"{MAX_SIGNATURES}"
        )
    if len(canonical_json([s.to_dict() for s in signatures])) > MAX_SIGNATURES_BYTES:
        raise UsageError(
            f"signatures.json would be over the {MAX_SIGNATURES_BYTES} bytes verifiers accept"
        )
    return SignaturePlan(
        signatures=signatures,
        added=tuple(added),
        verified_keyids=tally.valid_keyids,
        unchecked_keyids=tuple(s.keyid for s in existing if s.keyid not in known),
    )


def sign_bundle(
    bundle: Path,
    private_keys: Sequence[Ed25519PrivateKey],
    *,
    out: Path | None = None,
    trusted: Mapping[str, Ed25519PublicKey] | None = None,
    max_bundle_bytes: int | None = None,
) -> SignedBundle:
    """Add a signature by each of ``private_keys`` to ``bundle``, writing the
    result to ``out`` (default: ``bundle`` itself, replaced atomically).

    The members are checked and extracted into a temporary directory next to
    the output (same file system, bundle-sized), from which the new bundle is
    written; the directory is removed whatever happens. ``max_bundle_bytes``
    is the verifier's budget (a device profile's ``max_bundle_bytes``): a
    bundle over it is refused, before it is read when its size is known.
    """
    bundle = Path(bundle)
    target = bundle if out is None else Path(out)
    if target.is_dir():
        target = target / bundle.name
    try:
        work = tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.sign-")
    except OSError as e:
        raise StorageError(f"cannot write in {target.parent}: {e.strerror}") from e
    with work as work_dir:
        members_dir = Path(work_dir) / "members"
        intact = extract_without_trust(bundle, members_dir, max_bundle_bytes=max_bundle_bytes)
        plan = plan_signatures(
            intact.manifest_bytes, intact.signatures, private_keys, trusted or {}
        )
        members = {entry.path: members_dir / entry.path for entry in intact.manifest.files}
        info = write_signed_bundle(target, intact.manifest_bytes, plan.signatures, members)
    return SignedBundle(
        info=info,
        added_keyids=tuple(s.keyid for s in plan.added),
        verified_keyids=plan.verified_keyids,
        unchecked_keyids=plan.unchecked_keyids,
    )

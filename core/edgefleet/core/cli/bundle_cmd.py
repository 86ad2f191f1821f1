"""``edgefleet bundle``: inspect, verify and co-sign ``.efb`` bundles.

``inspect`` shows what a bundle claims without checking trust; ``verify``
runs the full streaming check of the device (signatures against the given
keys, every member against the manifest) and writes nothing; ``sign`` adds a
publisher signature to a bundle whose members check out, so that several key
holders can meet a publisher threshold above 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.core.bundle_sign import load_signing_key, sign_bundle
from edgefleet.core.bundle_verifier import BundleVerifier, inspect_bundle
from edgefleet.core.cli.output import emit, json_option
from edgefleet.core.errors import BundleError, SignatureError, UsageError, VerificationError
from edgefleet.core.keys import keyid_of, load_public_key
from edgefleet.core.manifest import Manifest
from edgefleet.core.trust import TrustStore

_BUNDLE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def bundle() -> None:
    """Inspect, verify and co-sign .efb bundles."""


def _model_line(manifest: Manifest) -> str:
    target = manifest.target
    return (
        f"model {manifest.name} v{manifest.version} ({manifest.model.get('task')}) "
        f"for profile {target.get('profile', '?')} ({target.get('arch', '?')})"
    )


def _render_inspect(result: dict[str, Any]) -> str:
    manifest = Manifest.from_dict(result["manifest"])
    lines = [
        f"{result['path']}: {result['size']} bytes, sha256 {result['sha256']}",
        f"bundle id {manifest.bundle_id}; {_model_line(manifest)}",
        f"quantization: {manifest.quantization.get('method', 'n/a')}",
        "files:",
    ]
    lines += [f"  {e.path:<24} {e.size:>12}  {e.sha256}" for e in manifest.files]
    lines.append("signatures (NOT verified; use `edgefleet bundle verify`):")
    lines += [f"  keyid {s['keyid']}" for s in result["signatures"]]
    return "\n".join(lines)


@bundle.command("inspect")
@click.argument("file", type=_BUNDLE)
@json_option
def inspect(file: Path, as_json: bool) -> None:
    """Show a bundle's manifest and signers without verifying them."""
    summary = inspect_bundle(file)
    result = {
        "path": str(file),
        "sha256": summary.sha256,
        "size": summary.size,
        "verified": False,
        "manifest": summary.manifest.to_dict(),
        "signatures": [s.to_dict() for s in summary.signatures],
    }
    emit(as_json, result, _render_inspect)


def _publisher_keys(paths: tuple[Path, ...]) -> tuple[dict[str, Ed25519PublicKey], list[int]]:
    """Union of the publisher keys of every .pub / trust.json given, and the
    thresholds of the trust.json files."""
    keys: dict[str, Ed25519PublicKey] = {}
    store_thresholds: list[int] = []
    for path in paths:
        if path.suffix == ".json":
            store = TrustStore.load(path)
            keys.update(store.publisher_keys)
            store_thresholds.append(store.publisher_threshold)
        else:
            key = load_public_key(path)
            keys[keyid_of(key)] = key
    return keys, store_thresholds


def _load_trust(paths: tuple[Path, ...], threshold: int | None) -> TrustStore:
    keys, store_thresholds = _publisher_keys(paths)
    if not keys:
        raise UsageError("--trust names no publisher keys")
    chosen = threshold if threshold is not None else max(store_thresholds, default=1)
    if chosen > len(keys):
        raise UsageError(f"--threshold {chosen} is more than the {len(keys)} trusted keys")
    return TrustStore(publisher_keys=keys, publisher_threshold=chosen)


def _render_verify(result: dict[str, Any]) -> str:
    return (
        f"OK {result['path']}: {result['model']['name']} v{result['model']['version']}, "
        f"sha256 {result['sha256']}\n"
        f"signed by {len(result['signer_keyids'])} trusted key(s) "
        f"(threshold {result['threshold']}): {', '.join(result['signer_keyids'])}"
    )


@bundle.command("verify")
@click.argument("file", type=_BUNDLE)
@click.option(
    "--trust",
    "trust_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A publisher .pub key or a trust.json; repeat for several.",
)
@click.option(
    "--threshold",
    type=click.IntRange(min=1),
    default=None,
    help="Distinct trusted signatures required (default: the trust.json's, else 1).",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Reject bundles larger than this (a device profile's max_bundle_bytes).",
)
@click.option("--sha256", "expected_sha256", default=None, help="Expected bundle sha256.")
@json_option
def verify(
    file: Path,
    trust_paths: tuple[Path, ...],
    threshold: int | None,
    max_bytes: int | None,
    expected_sha256: str | None,
    as_json: bool,
) -> None:
    """Verify signatures and every member of FILE; exit 3 if anything fails."""
    trust = _load_trust(trust_paths, threshold)
    verifier = BundleVerifier(trust, max_bundle_bytes=max_bytes)
    try:
        verified = verifier.verify(file, expected_sha256=expected_sha256)
    except (BundleError, SignatureError) as e:
        raise type(e)(f"{file.name} rejected: {e}") from e
    except VerificationError:
        raise
    manifest = verified.manifest
    result = {
        "ok": True,
        "path": str(file),
        "sha256": verified.sha256,
        "size": verified.size,
        "bundle_id": manifest.bundle_id,
        "model": {"name": manifest.name, "version": manifest.version},
        "signer_keyids": verified.signer_keyids,
        "threshold": trust.publisher_threshold,
        "files": [entry.to_dict() for entry in manifest.files],
    }
    emit(as_json, result, _render_verify)


def _render_sign(result: dict[str, Any]) -> str:
    lines = [
        f"signed {result['path']}: {result['model']['name']} v{result['model']['version']}, "
        f"sha256 {result['sha256']}",
        f"added {len(result['added_keyids'])} signature(s): {', '.join(result['added_keyids'])}",
    ]
    if result["verified_keyids"]:
        lines.append(f"kept, verified: {', '.join(result['verified_keyids'])}")
    if result["unchecked_keyids"]:
        lines.append(
            f"kept, NOT verified (key not given with --trust): "
            f"{', '.join(result['unchecked_keyids'])}"
        )
    return "\n".join(lines)


@bundle.command("sign")
@click.argument("file", type=_BUNDLE)
@click.option(
    "--key",
    "key_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Private signing key to add a signature with; repeat for several.",
)
@click.option(
    "--trust",
    "trust_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A publisher .pub key or trust.json whose existing signatures must verify.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the signed bundle here (a file, or a folder to keep the name); "
    "default: replace FILE.",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse bundles larger than this, before reading them "
    "(a device profile's max_bundle_bytes).",
)
@json_option
def sign(
    file: Path,
    key_paths: tuple[Path, ...],
    trust_paths: tuple[Path, ...],
    out: Path | None,
    max_bytes: int | None,
    as_json: bool,
) -> None:
    """Add a signature by each --key to FILE, after checking its members and
    existing signatures; exit 3 if the bundle is tampered with."""
    keys = [load_signing_key(path) for path in key_paths]
    trusted, _ = _publisher_keys(trust_paths)
    try:
        signed = sign_bundle(file, keys, out=out, trusted=trusted, max_bundle_bytes=max_bytes)
    except (BundleError, SignatureError) as e:
        raise type(e)(f"{file.name} rejected: {e}") from e
    except UsageError as e:
        raise UsageError(f"{file.name}: {e}") from e
    info = signed.info
    result = {
        "ok": True,
        "path": str(info.path),
        "sha256": info.sha256,
        "size": info.size,
        "bundle_id": info.manifest.bundle_id,
        "model": {"name": info.manifest.name, "version": info.manifest.version},
        "added_keyids": list(signed.added_keyids),
        "verified_keyids": list(signed.verified_keyids),
        "unchecked_keyids": list(signed.unchecked_keyids),
        "signatures": len(info.signer_keyids),
    }
    emit(as_json, result, _render_sign)

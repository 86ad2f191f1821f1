"""``edgefleet bundle``: inspect and verify ``.efb`` bundles.

``inspect`` shows what a bundle claims without checking trust; ``verify``
runs the full streaming check of the device (signatures against the given
keys, every member against the manifest) and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.core.bundle_verifier import BundleVerifier, inspect_bundle
from edgefleet.core.cli.output import emit, json_option
from edgefleet.core.errors import BundleError, SignatureError, UsageError, VerificationError
from edgefleet.core.keys import keyid_of, load_public_key
from edgefleet.core.manifest import Manifest
from edgefleet.core.trust import TrustStore

_BUNDLE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def bundle() -> None:
    """Inspect and verify .efb bundles."""


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


def _load_trust(paths: tuple[Path, ...], threshold: int | None) -> TrustStore:
    """Union of the publisher keys of every .pub / trust.json given."""
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

"""``edgefleet keys``: Ed25519 signing keys for publishers and hubs, and trust stores.

``keys trust`` writes the ``trust.json`` a device without a hub needs (a sideloaded
device): the same :class:`~edgefleet.core.trust.TrustStore` format ``hub device add``
writes, built from public key files the operator names, never from private keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.core.errors import UsageError
from edgefleet.core.keys import generate_keypair, keyid_of, load_public_key, public_key_to_hex
from edgefleet.core.trust import TrustStore


@click.group()
def keys() -> None:
    """Generate signing keys (Ed25519) and write trust stores."""


def _render(result: dict[str, Any]) -> str:
    return (
        f"private key: {result['private_key']} (mode 0600, keep it secret)\n"
        f"public key:  {result['public_key']}\n"
        f"key id:      {result['keyid']}"
    )


@keys.command("generate")
@click.argument("name")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for NAME.key and NAME.pub (created if missing).",
)
@json_option
def generate(name: str, out_dir: Path, as_json: bool) -> None:
    """Create an Ed25519 key pair: NAME.key (PEM PKCS8, mode 0600) and NAME.pub.

    Existing files are never overwritten.
    """
    paths = generate_keypair(name, out_dir)
    public_key = load_public_key(paths.public)
    result = {
        "name": name,
        "keyid": keyid_of(public_key),
        "public_key_hex": public_key_to_hex(public_key),
        "private_key": str(paths.private),
        "public_key": str(paths.public),
    }
    emit(as_json, result, _render)


@keys.command("trust")
@click.argument("pubkeys", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--threshold",
    type=int,
    default=1,
    show_default=True,
    help="How many distinct publisher keys must sign a bundle.",
)
@click.option(
    "--hub-key",
    "hub_keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A hub's public key whose directives the device accepts (repeatable; none for a "
    "device without a hub).",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The trust.json to write (an existing file is not replaced).",
)
@json_option
def trust(
    pubkeys: tuple[Path, ...],
    threshold: int,
    hub_keys: tuple[Path, ...],
    out_path: Path,
    as_json: bool,
) -> None:
    """Write a device trust store: bundles need THRESHOLD signatures from PUBKEYS.

    The file has the format `hub device add` writes; copy it next to agent.toml
    (agent.trust_store) on a device that gets its bundles by sideloading.
    """
    if out_path.exists():
        raise UsageError(f"{out_path} already exists; remove it first or choose another --out")
    publishers = [load_public_key(p) for p in pubkeys]
    distinct = {keyid_of(k) for k in publishers}
    if len(distinct) != len(publishers):
        raise UsageError("the same public key is named twice; a threshold counts distinct keys")
    store = TrustStore.from_keys(
        publisher_keys=publishers,
        publisher_threshold=threshold,
        hub_keys=[load_public_key(p) for p in hub_keys],
    )
    store.save(out_path)
    result = {
        "trust_store": str(out_path),
        "publisher_keys": sorted(store.publisher_keys),
        "publisher_threshold": store.publisher_threshold,
        "hub_keys": sorted(store.hub_keys),
    }
    emit(as_json, result, _render_trust)


def _render_trust(r: dict[str, Any]) -> str:
    hubs = f", {len(r['hub_keys'])} hub keys" if r["hub_keys"] else ", no hub key (sideload only)"
    return (
        f"wrote {r['trust_store']}: {r['publisher_threshold']} of "
        f"{len(r['publisher_keys'])} publisher keys must sign{hubs}"
    )

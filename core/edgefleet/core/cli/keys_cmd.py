"""``edgefleet keys``: Ed25519 signing keys for publishers and hubs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.core.keys import generate_keypair, keyid_of, load_public_key, public_key_to_hex


@click.group()
def keys() -> None:
    """Generate signing keys (Ed25519)."""


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

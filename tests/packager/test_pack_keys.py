"""``pack --key`` more than once, and a packed bundle co-signed with ``bundle sign``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.core.bundle_verifier import inspect_bundle
from edgefleet.core.keys import generate_keypair, keyid_of, load_public_key
from edgefleet.core.trust import TrustStore


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """Key pairs a, b, c; trust stores 2-of-2 (a, b) and 3-of-3; name -> key id."""
    folder = tmp_path / "keys"
    ids = {}
    for name in ("a", "b", "c"):
        pair = generate_keypair(name, folder)
        ids[name] = keyid_of(load_public_key(pair.public))
    public = {n: load_public_key(folder / f"{n}.pub") for n in ids}
    TrustStore.from_keys([public["a"], public["b"]], 2).save(folder / "trust-ab.json")
    TrustStore.from_keys(list(public.values()), 3).save(folder / "trust-abc.json")
    return ids


@pytest.fixture
def registry(cli: Any, models: dict[str, Any], tmp_path: Path) -> Path:
    folder = tmp_path / "registry"
    iris = models["iris_forest"]
    result = cli(
        "registry",
        "register",
        iris.model,
        "--name",
        "iris",
        "--reference-data",
        iris.reference,
        "--registry",
        folder,
    )
    assert result.code == 0, result.err
    return folder


def test_pack_with_two_keys_meets_a_threshold_of_two(
    cli: Any, registry: Path, keys: dict[str, str], tmp_path: Path
) -> None:
    k = tmp_path / "keys"
    out = tmp_path / "dist"
    result = cli(
        "pack",
        "iris:1",
        "--profile",
        "rpi4-arm64",
        "--quantize",
        "none",
        "--key",
        k / "a.key",
        "--key",
        k / "b.key",
        "--out",
        out,
        "--registry",
        registry,
        "--json",
    )
    assert (result.code, result.err) == (0, "")
    packed = result.json()
    assert packed["signer_keyids"] == [keys["a"], keys["b"]]
    bundle = Path(packed["bundle"])
    assert [s.keyid for s in inspect_bundle(bundle).signatures] == [keys["a"], keys["b"]]

    verified = cli("bundle", "verify", bundle, "--trust", k / "trust-ab.json", "--json")
    assert verified.code == 0, verified.err
    assert verified.json()["signer_keyids"] == [keys["a"], keys["b"]]

    # A third publisher joins: 3-of-3 refuses the bundle until c co-signs it.
    three = cli("bundle", "verify", bundle, "--trust", k / "trust-abc.json")
    assert three.code == 3 and "valid signatures from 2 of the 3 required keys" in three.err
    signed = cli(
        "bundle", "sign", bundle, "--key", k / "c.key", "--trust", k / "trust-abc.json", "--json"
    )
    assert signed.code == 0, signed.err
    assert signed.json()["verified_keyids"] == [keys["a"], keys["b"]]
    assert signed.json()["added_keyids"] == [keys["c"]]
    three = cli("bundle", "verify", bundle, "--trust", k / "trust-abc.json", "--json")
    assert three.code == 0, three.err
    assert three.json()["signer_keyids"] == [keys["a"], keys["b"], keys["c"]]
    assert sorted(p.name for p in out.iterdir()) == [bundle.name]


def test_pack_refuses_when_any_key_is_missing(
    cli: Any, registry: Path, keys: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "dist"
    missing = tmp_path / "keys" / "nope.key"
    result = cli(
        "pack",
        "iris:1",
        "--profile",
        "rpi4-arm64",
        "--key",
        tmp_path / "keys" / "a.key",
        "--key",
        missing,
        "--out",
        out,
        "--registry",
        registry,
    )
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        f"error: signing key {missing} does not exist "
        "(create one with 'edgefleet keys generate NAME')\n"
    )
    assert not out.exists()

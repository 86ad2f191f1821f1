"""``edgefleet keys trust``: the trust store of a device without a hub, used by a real install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.agents import make_env

from edgefleet.core.keys import generate_keypair, keyid_of, load_public_key
from edgefleet.core.trust import TrustStore


def edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.core.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def use_trust_store(config: Path, trust: Path) -> None:
    lines = [
        f'trust_store = "{trust}"' if line.startswith("trust_store") else line
        for line in config.read_text().splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")


@pytest.mark.subprocess
def test_sideloaded_device_installs_with_the_store_keys_trust_writes(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    other = generate_keypair("reviewer", tmp_path / "keys")
    trust = tmp_path / "sideload" / "trust.json"
    trust.parent.mkdir()
    made = edgefleet(
        "keys", "trust", str(tmp_path / "keys" / "publisher.pub"), str(other.public),
        "--threshold", "1", "--out", str(trust), "--json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    store = TrustStore.load(trust)
    assert set(result["publisher_keys"]) == set(store.publisher_keys)
    assert store.publisher_threshold == 1 and not store.hub_keys
    # the same format hub device add writes: it round-trips through to_dict
    assert json.loads(trust.read_text()) == store.to_dict()
    use_trust_store(env.config_path, trust)
    installed = env.cli("install", str(env.bundle(1)), "--json")
    assert installed.returncode == 0, installed.stderr
    # A store that trusts only the other key refuses the publisher's bundle.
    stranger = tmp_path / "stranger.json"
    assert edgefleet("keys", "trust", str(other.public), "--out", str(stranger)).returncode == 0
    use_trust_store(env.config_path, stranger)
    refused = env.cli("install", str(env.bundle(2)))
    assert refused.returncode == 3, refused.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "3"], "exceeds"),
        (["--threshold", "0"], "threshold"),
        (["SAME"], "twice"),
        (["EXISTS"], "already exists"),
    ],
)
@pytest.mark.subprocess
def test_keys_trust_refuses_with_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    a = generate_keypair("a", tmp_path).public
    b = generate_keypair("b", tmp_path).public
    out = tmp_path / "trust.json"
    args = [str(a), str(b)]
    if extra == ["SAME"]:
        args, extra = [str(a), str(a)], []
    if extra == ["EXISTS"]:
        out.write_text("{}")
        extra = []
    result = edgefleet("keys", "trust", *args, *extra, "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    if message != "already exists":
        assert not out.exists()


@pytest.mark.subprocess
def test_hub_key_is_kept(tmp_path: Path) -> None:
    pub = generate_keypair("p", tmp_path).public
    hub = generate_keypair("h", tmp_path).public
    out = tmp_path / "trust.json"
    assert (
        edgefleet("keys", "trust", str(pub), "--hub-key", str(hub), "--out", str(out)).returncode
        == 0
    )
    assert set(TrustStore.load(out).hub_keys) == {keyid_of(load_public_key(hub))}

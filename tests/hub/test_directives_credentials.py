"""Signed directives from desired assignments, and Mosquitto password hashes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.directive import check_directive
from edgefleet.core.errors import DirectiveError
from edgefleet.core.testing.brokers import find_mosquitto
from edgefleet.core.trust import TrustStore
from edgefleet.hub.config import DirectiveSettings
from edgefleet.hub.credentials import (
    generate_password,
    is_mosquitto_hash,
    mosquitto_hash,
    verify_password,
)
from edgefleet.hub.directives import DirectiveIssuer, next_seq
from edgefleet.hub.store import DesiredAssignment, DeviceRecord, SqliteHubStore

SHA = "cd" * 32
DAY = 86400.0


@pytest.fixture
def setup(tmp_path: Path) -> tuple[SqliteHubStore, DirectiveIssuer, TrustStore]:
    store = SqliteHubStore(tmp_path / "hub.db")
    key = Ed25519PrivateKey.generate()
    issuer = DirectiveIssuer(store, key, DirectiveSettings(expiry_s=7 * DAY, resign_before_s=DAY))
    trust = TrustStore.from_keys(hub_keys=[key.public_key()])
    for d in ("pi-1", "pi-2"):
        store.add_device(DeviceRecord(d, "rpi5", "$7$1$a$b", 0.0))
    return store, issuer, trust


def test_directives_follow_assignments_and_verify_on_the_device(setup) -> None:  # type: ignore[no-untyped-def]
    store, issuer, trust = setup
    t0 = 1_700_000_000.0
    assert issuer.due(t0) == []  # nothing assigned yet: nothing to say
    store.set_assignment("pi-1", "digits", DesiredAssignment("digits", SHA, 2, 1234, "r1"), t0)
    [first] = issuer.due(t0)
    assert first.device_id == "pi-1"
    directive = check_directive(first.envelope, trust, "pi-1", None, t0 + 1)
    assert directive.assignments[0].version == 2 and directive.expires_at == t0 + 7 * DAY
    assert issuer.due(t0 + 10) == []  # current and far from expiry
    assert [d.device_id for d in issuer.unpublished()] == ["pi-1"]
    store.mark_directive_published("pi-1", first.seq, t0 + 1)
    assert issuer.unpublished() == []

    # Re-signed before it expires: same assignments, higher seq.
    [resigned] = issuer.due(t0 + 6.5 * DAY)
    again = check_directive(resigned.envelope, trust, "pi-1", first.seq, t0 + 6.5 * DAY)
    assert again.seq > first.seq and again.assignments == directive.assignments

    # The other device cannot use it; the old one is now a replay.
    with pytest.raises(DirectiveError, match="another device"):
        check_directive(resigned.envelope, trust, "pi-2", None, t0 + 6.5 * DAY)
    with pytest.raises(DirectiveError, match="replayed"):
        check_directive(first.envelope, trust, "pi-1", again.seq, t0 + 6.5 * DAY)


def test_seq_stays_above_the_last_even_when_the_clock_goes_back() -> None:
    assert next_seq(None, 1000.0) == 1_000_000
    assert next_seq(5_000_000, 1000.0) == 5_000_001
    assert next_seq(5, 1000.0) == 1_000_000


def test_password_hash_round_trip() -> None:
    password = generate_password()
    hashed = mosquitto_hash(password)
    assert is_mosquitto_hash(hashed) and hashed.startswith("$7$1000$")
    assert verify_password(password, hashed)
    assert not verify_password(password + "x", hashed)
    assert not verify_password(password, "$7$1000$!!$??")
    assert mosquitto_hash(password) != hashed  # salted


@pytest.mark.subprocess
def test_we_verify_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    assert find_mosquitto() is not None, "mosquitto must be installed"
    tool = Path("/usr/bin/mosquitto_passwd")
    if not tool.exists():  # the package ships it next to the broker
        tool = Path(str(find_mosquitto())).with_name("mosquitto_passwd")
    pwfile = tmp_path / "pw"
    subprocess.run([str(tool), "-c", "-b", str(pwfile), "dev1", "s3cret"], check=True, timeout=30)
    user, hashed = pwfile.read_text().strip().split(":", 1)
    assert user == "dev1" and is_mosquitto_hash(hashed)
    assert verify_password("s3cret", hashed)
    assert not verify_password("s3cret!", hashed)

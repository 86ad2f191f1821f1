"""Hub limits for a bad day: hostile numbers, broken stores and odd umasks are refused
with one line naming the problem, and nothing half-written is left behind."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.hub.hubkit import HubFixture, make_hub
from tests.hub.servicekit import T, make_service_hub
from tests.support.bundles import placeholder_bundle
from tests.support.waiting import wait_until

import edgefleet.core.manifest as manifest_module
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.broker_files import BROKER_FILES, effective_run_as
from edgefleet.hub.store import SqliteHubStore


def hub_cli(
    fx: HubFixture, *args: str, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.core.cli.main",
            "hub",
            *args,
            "--config",
            str(fx.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=None if umask is None else (lambda: _set_umask(umask)),
    )


def _set_umask(mask: int) -> None:
    import os

    os.umask(mask)


@pytest.mark.subprocess
def test_publish_refuses_a_version_beyond_two_to_the_53(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx = make_hub(tmp_path)
    # A publisher whose tools know no bound signs version 2^63.
    monkeypatch.setattr(manifest_module, "MAX_MODEL_VERSION", 2**64)
    info = placeholder_bundle(tmp_path / "huge.efb", fx.publisher_key, version=2**63)
    monkeypatch.undo()
    result = hub_cli(fx, "publish", str(info.path))
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "must be at most 9007199254740991" in result.stderr
    bundles = fx.config().store.bundles_dir
    assert not bundles.exists() or [p for p in bundles.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    ("section", "line", "field"),
    [
        ("service", "tick_s = nan", "service.tick_s"),
        ("directives", "expiry_s = inf", "directives.expiry_s"),
        ("fleet", "error_rate = nan", "fleet.error_rate"),
        ("fleet.thresholds", "psi_drift = -inf", "fleet.thresholds.psi_drift"),
    ],
)
@pytest.mark.subprocess
def test_nan_and_infinity_in_hub_toml_are_refused(
    tmp_path: Path, section: str, line: str, field: str
) -> None:
    fx = make_hub(tmp_path, extra=f"[{section}]\n{line}\n")
    result = hub_cli(fx, "devices")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and field in result.stderr
    assert "finite" in result.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "nan%"])
def test_a_nan_gate_is_refused(tmp_path: Path, value: str) -> None:
    fx = make_hub(tmp_path)
    info = placeholder_bundle(tmp_path / "d1.efb", fx.publisher_key, version=1)
    assert hub_cli(fx, "publish", str(info.path)).returncode == 0
    added = hub_cli(
        fx, "device", "add", "pi-1", "--profile", "rpi4-arm64", "--out", str(tmp_path / "pi-1")
    )
    assert added.returncode == 0, added.stderr
    result = hub_cli(
        fx, "rollout", "create", "digits:1", "--to", "all", "--gate", f"max_prediction_psi={value}"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "max_prediction_psi" in result.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty file (0 bytes)"),
        (b"\x00" * 4096 + b"garbage" * 1000, "file is not a database"),
    ],
)
@pytest.mark.subprocess
def test_an_empty_or_corrupt_hub_db_is_refused_with_one_line(
    tmp_path: Path, content: bytes, words: str
) -> None:
    fx = make_hub(tmp_path)
    db = fx.config().store.path
    db.write_bytes(content)
    result = hub_cli(fx, "devices")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1
    assert str(db) in result.stderr and words in result.stderr
    assert db.read_bytes() == content  # left exactly as it was


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.subprocess
def test_modes_are_explicit_under_umask_000(tmp_path: Path) -> None:
    fx = make_hub(tmp_path)
    out = tmp_path / "devices" / "pi-1"
    added = hub_cli(
        fx, "device", "add", "pi-1", "--profile", "rpi4-arm64", "--out", str(out), umask=0
    )
    assert added.returncode == 0, added.stderr
    broker = tmp_path / "broker"
    config = hub_cli(fx, "broker-config", "--out", str(broker), umask=0)
    assert config.returncode == 0, config.stderr
    db = fx.config().store.path
    assert _mode(db) == 0o600
    assert (_mode(tmp_path / "devices"), _mode(out)) == (0o750, 0o750)
    assert _mode(out / "agent.toml") == 0o600
    # broker-config's one table of files and modes decides (group-readable only for the
    # account Mosquitto drops to); the umask never does, and nothing is world-writable.
    grouped = effective_run_as(None) is not None
    for spec in BROKER_FILES:
        path = broker / spec.name
        if path.exists():
            want = spec.mode if grouped and spec.broker_reads else spec.mode_alone
            assert _mode(path) == want, spec.name
    for path in [broker, *broker.rglob("*")]:
        assert _mode(path) & 0o002 == 0, path
    assert _mode(broker / "passwd") & 0o007 == 0
    for sidecar in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if sidecar.exists():
            assert _mode(sidecar) & 0o077 == 0, sidecar


@pytest.mark.subprocess
def test_an_existing_world_readable_hub_db_is_tightened(tmp_path: Path) -> None:
    fx = make_hub(tmp_path)
    assert hub_cli(fx, "devices").returncode == 0
    db = fx.config().store.path
    db.chmod(0o644)
    assert hub_cli(fx, "devices").returncode == 0
    assert _mode(db) == 0o600


@pytest.mark.mqtt
def test_a_flood_of_malformed_messages_is_logged_a_few_times(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = make_service_hub(tmp_path, mosquitto_factory)
    try:
        service = hub.start()
        device = hub.device("pi-a")
        caplog.set_level(logging.INFO, logger="edgefleet.hub")
        flood = 1000
        for i in range(flood):
            device.client.publish(T.state("pi-a"), b"{not json %d" % i, qos=0)
            device.client.publish(T.fetch("pi-a"), b"[]", qos=0)
        wait_until(
            "every malformed message counted",
            lambda: (
                service.counters.get("malformed.state", 0) == flood
                and service.counters.get("malformed.fetch", 0) == flood
            ),
        )
        about = [r.getMessage() for r in caplog.records if "pi-a" in r.getMessage()]
        # the first five and then every power of two, for each of the two kinds
        assert 2 <= len(about) <= 2 * (5 + 10), len(about)
        assert all("malformed" in line for line in about)  # what was wrong, from whom
    finally:
        hub.close()


@pytest.mark.subprocess
def test_hub_serve_refuses_a_store_with_damaged_pages(tmp_path: Path) -> None:
    fx = make_hub(tmp_path, broker={"password": "x"})
    db = fx.config().store.path
    store = SqliteHubStore(db)
    for i in range(3000):
        store.bump_counter(f"counter-{i:05d}-" + "x" * 40, i)
    store.close()  # the last connection checkpoints the WAL into hub.db
    data = bytearray(db.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(range(256)) * 16  # a damaged table page
    db.write_bytes(bytes(data))
    result = hub_cli(fx, "serve")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and str(db) in result.stderr
    assert "corrupt" in result.stderr

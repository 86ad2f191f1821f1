"""Where the hub store is: ``[store] path``/``url`` in hub.toml, every relative path (also
the defaults) against hub.toml's folder, and one ``hub serve`` per SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.hub.hubkit import make_hub

from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.config import HubConfig
from edgefleet.hub.errors import HubConfigError, HubStoreError
from edgefleet.hub.store.serve_lock import ServeLock, serve_lock_path


def test_default_paths_resolve_against_the_folder_of_hub_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "hub.toml").write_text("[service]\ntick_s = 2.0\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = HubConfig.load(Path("../etc/hub.toml"))
    assert config.store.path == folder.resolve() / "hub.db"
    assert config.store.bundles_dir == folder.resolve() / "bundles"
    assert config.store.location == config.store.path and config.store.is_sqlite


def test_store_url_selects_postgresql_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "hub.toml").write_text('[store]\nurl = "postgresql://hub@db.example.org/fleet"\n')
    config = HubConfig.load(tmp_path / "hub.toml")
    assert config.store.location == "postgresql://hub@db.example.org/fleet"
    assert not config.store.is_sqlite
    assert config.store.path == tmp_path.resolve() / "hub.db"  # the fleet database's folder
    (tmp_path / "hub.toml").write_text('[store]\nurl = "mysql://hub:secret@db/fleet"\n')
    with pytest.raises(HubConfigError, match="postgresql://") as bad:
        HubConfig.load(tmp_path / "hub.toml")
    assert "\n" not in str(bad.value) and "secret" not in str(bad.value)


@pytest.mark.subprocess
def test_serve_lock_names_the_pid_holding_it_and_dies_with_its_process(tmp_path: Path) -> None:
    store = tmp_path / "hub.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from edgefleet.hub.store.serve_lock import ServeLock\n"
            "ServeLock(Path(sys.argv[1])).acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
            str(store),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(HubStoreError, match=f"in use by hub serve pid {holder.pid}") as e:
            ServeLock(store).acquire()
        assert "\n" not in str(e.value)
    finally:
        holder.kill()  # kill -9: the kernel drops the flock with the process
        holder.wait(30)
    with ServeLock(store) as lock:
        assert lock.held and lock.holder() == os.getpid()


@pytest.mark.mqtt
def test_a_second_hub_serve_on_the_same_sqlite_store_is_refused(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = mosquitto_factory()
    hub = make_hub(tmp_path / "site", broker={"host": broker.host, "port": broker.port})
    serve = [sys.executable, "-m", "edgefleet.core.cli.main", "hub", "serve", "--config"]
    first = subprocess.Popen(
        [*serve, str(hub.config_path)],
        cwd=hub.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = serve_lock_path(hub.root.resolve() / "hub.db")
    try:
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None:
            assert time.monotonic() < deadline, "first hub never took the store"
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        # Started from another folder, with a relative --config: the same store.
        other = tmp_path / "other"
        other.mkdir()
        second = subprocess.run(
            [*serve, os.path.relpath(hub.config_path, other)],
            cwd=other,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"in use by hub serve pid {first.pid}" in lines[0]
        assert not (other / "hub.db").exists()
    finally:
        first.terminate()
        first.wait(30)

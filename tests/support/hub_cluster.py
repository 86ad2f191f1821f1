"""Several ``hub serve`` processes on one PostgreSQL store and one broker, and what to read
back from them: the harness of the hub failover test (tests/hub/test_three_hubs.py) and of
``bench/hub_scale.py --scenario failover``.

Each hub has its own folder, ``hub.toml`` (its own broker client id, shared subscriptions,
the same signing key and bundle folder) and log; the store is the one PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from edgefleet.hub.singleton import LEASE
from edgefleet.hub.store import HubStore


@dataclass
class HubCluster:
    """``n`` hub folders under ``root`` sharing the store at ``url`` (started by :meth:`start`)."""

    root: Path
    url: str
    broker_port: int
    hub_key: Path
    publisher_pub: Path
    bundles_dir: Path
    n: int = 3
    tick_s: float = 0.5
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.n):
            folder = self.folder(i)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hub.toml").write_text(
                f'[store]\npath = "hub.db"\nurl = "{self.url}"\n'
                f'bundles_dir = "{self.bundles_dir}"\n'
                f'[broker]\nport = {self.broker_port}\nclient_id = "hub-{i}"\n'
                "shared_subscriptions = true\n"
                f'[keys]\nhub_signing_key = "{self.hub_key}"\n'
                f'publisher_keys = ["{self.publisher_pub}"]\n'
                f"[service]\ntick_s = {self.tick_s}\n"
            )

    def folder(self, i: int) -> Path:
        return self.root / f"hub-{i}"

    @property
    def configs(self) -> list[Path]:
        return [self.folder(i) / "hub.toml" for i in range(self.n)]

    def start(self, timeout_s: float = 60.0) -> None:
        for config in self.configs:
            log = open(config.parent / "serve.log", "wb")  # noqa: SIM115 - the child owns it
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "edgefleet.core.cli.main", "hub", "serve"]
                    + ["--config", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=config.parent,
                )
            )
        deadline = time.monotonic() + timeout_s
        for config, proc in zip(self.configs, self.procs, strict=True):
            log_path = config.parent / "serve.log"
            while b"hub: serving" not in log_path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"hub serve did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)

    def holder(self, store: HubStore) -> tuple[str, int, subprocess.Popen[bytes]]:
        """The singleton lease's holder, its epoch and its process."""
        found = store.lease_holder(LEASE)
        if found is None:
            raise RuntimeError("no hub holds the singleton lease")
        holder, epoch, _ = found
        pid = int(holder.split(":")[1])
        return holder, epoch, next(p for p in self.procs if p.pid == pid)

    def kill_holder(self, store: HubStore) -> tuple[str, int]:
        """``kill -9`` the lease holder (no goodbye); returns its holder id and epoch."""
        holder, epoch, proc = self.holder(store)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return holder, epoch

    def wait_takeover(self, store: HubStore, old_holder: str, timeout_s: float) -> float:
        """Seconds until another hub holds the lease (raises after ``timeout_s``)."""
        started = time.monotonic()
        while True:
            found = store.lease_holder(LEASE)
            if found is not None and found[0] != old_holder:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"no hub took the lease over within {timeout_s:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def fleet_databases(self) -> list[Path]:
        return [p for i in range(self.n) if (p := self.folder(i) / "hub.fleet.db").exists()]


def directive_counts(url: str) -> dict[str, int]:
    """Directives signed per device (one per assignment change when nothing is doubled)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT device, COUNT(*) FROM directives GROUP BY device").fetchall()
    return {device: n for device, n in rows}


def stored_seqs(url: str) -> dict[str, list[int]]:
    """Every telemetry (device, seq) the store holds, duplicates included, per device."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT device, seq FROM telemetry ORDER BY device, seq").fetchall()
    out: dict[str, list[int]] = {}
    for device, seq in rows:
        out.setdefault(device, []).append(int(seq))
    return out


def fleet_record_counts(databases: list[Path]) -> Counter[tuple[str, int]]:
    """How many times each (device, seq) is held across the hubs' fleet databases."""
    counts: Counter[tuple[str, int]] = Counter()
    for db in databases:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            for device, seq in conn.execute("SELECT device, seq FROM fleet_records"):
                counts[(device, int(seq))] += 1
    return counts


def open_alerts_per_key(url: str, databases: list[Path]) -> dict[str, int]:
    """Open alerts per key, over the store and every hub's fleet database."""
    counts: Counter[str] = Counter()
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('fleet_alerts') IS NOT NULL").fetchone()
        if exists and exists[0]:
            rows = conn.execute("SELECT key FROM fleet_alerts WHERE status = 'open'").fetchall()
            counts.update(key for (key,) in rows)
    for db in databases:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            counts.update(
                key for (key,) in conn.execute("SELECT key FROM fleet_alerts WHERE status = 'open'")
            )
    return dict(counts)


PHASE = re.compile(r"phase (\d+)/\d+")


def transitions(store: HubStore, rollout_id: str) -> Counter[str]:
    """Each recorded transition of a rollout (start and advance named by their phase)."""
    out: Counter[str] = Counter()
    for event in store.rollout_events(rollout_id):
        found = PHASE.search(event.detail)
        out[f"{event.event}:{found.group(1)}" if found else event.event] += 1
    return out

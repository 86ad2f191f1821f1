"""Several ``hub serve`` processes on one PostgreSQL store and one broker, and what to read
back from them: the harness of the hub failover tests (tests/hub/test_three_hubs.py,
tests/integration/test_hub_failover.py through tests/support/failover.py) and of
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
        self.launch()
        self.wait_serving(timeout_s)

    def launch(self) -> None:
        """Start the ``hub serve`` processes without waiting for them."""
        self.procs = [self._serve(config) for config in self.configs]

    @staticmethod
    def _serve(config: Path) -> subprocess.Popen[bytes]:
        log = open(config.parent / "serve.log", "ab")  # noqa: SIM115 - the child owns it
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.core.cli.main", "hub", "serve"]
            + ["--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        """Until every hub says it serves (raises with its log when one exits first)."""
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
    """Every telemetry (device, seq) the store holds (in the fleet tables: telemetry is
    stored once), duplicates included, per device."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT device, seq FROM fleet_records ORDER BY device, seq").fetchall()
    out: dict[str, list[int]] = {}
    for device, seq in rows:
        out.setdefault(device, []).append(int(seq))
    return out


def shared_fleet_tables(url: str) -> bool:
    """True when the fleet tables live in the store's PostgreSQL database (shared by every
    hub); otherwise each hub keeps them in its own ``hub.fleet.db``."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('fleet_records') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _fleet_rows(url: str, databases: list[Path], sql: str) -> list[tuple[object, ...]]:
    """``sql`` over the fleet tables: the shared ones when the store holds them, else every
    hub's own fleet database (rows of all of them together)."""
    if shared_fleet_tables(url):
        with psycopg.connect(url) as conn:
            return [tuple(row) for row in conn.execute(sql).fetchall()]  # type: ignore[arg-type]
    rows: list[tuple[object, ...]] = []
    for db in databases:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            rows += [tuple(row) for row in conn.execute(sql)]
    return rows


def fleet_record_counts(url: str, databases: list[Path]) -> Counter[tuple[str, int]]:
    """How many times each (device, seq) is held in the fleet tables (the shared ones on
    PostgreSQL, else across the hubs' own fleet databases)."""
    counts: Counter[tuple[str, int]] = Counter()
    for device, seq in _fleet_rows(url, databases, "SELECT device, seq FROM fleet_records"):
        counts[(str(device), int(seq))] += 1  # type: ignore[call-overload]
    return counts


def fleet_ack_cursors(url: str, databases: list[Path]) -> dict[str, list[int]]:
    """Every ack cursor (``contiguous``) the fleet tables hold per device: one per device
    in the shared tables; with a fleet database per hub, one per hub that saw the device."""
    out: dict[str, list[int]] = {}
    for device, contiguous in _fleet_rows(
        url, databases, "SELECT device, contiguous FROM fleet_cursor"
    ):
        out.setdefault(str(device), []).append(int(contiguous))  # type: ignore[call-overload]
    return out


def open_alerts_per_key(url: str, databases: list[Path]) -> dict[str, int]:
    """Open alerts per key in the fleet tables (shared, or over every hub's)."""
    sql = "SELECT key FROM fleet_alerts WHERE status = 'open'"
    return dict(Counter(str(key) for (key,) in _fleet_rows(url, databases, sql)))


def highest_contiguous(seqs: list[int], first: int = 1) -> int | None:
    """The highest ``s`` such that every seq ``first .. s`` is in ``seqs`` (None: not even
    ``first``)."""
    have = set(seqs)
    s = first - 1
    while s + 1 in have:
        s += 1
    return s if s >= first else None


PHASE = re.compile(r"phase (\d+)/\d+")


def transition_sequence(store: HubStore, rollout_id: str) -> list[str]:
    """A rollout's recorded transitions in order (start and advance named by their phase)."""
    out = []
    for event in store.rollout_events(rollout_id):
        found = PHASE.search(event.detail)
        out.append(f"{event.event}:{found.group(1)}" if found else event.event)
    return out


def transitions(store: HubStore, rollout_id: str) -> Counter[str]:
    """Each recorded transition of a rollout, counted."""
    return Counter(transition_sequence(store, rollout_id))

"""Hub at fleet scale: ingest with 1..4 hub processes on SQLite and PostgreSQL, the
10,000-device operations, a reconnect storm against two hubs.

Everything is real and started here: mosquitto on a free loopback port, a PostgreSQL
server from the distribution's binaries (``edgefleet.core.testing.postgres``: initdb in a
temp dir, its own port), ``edgefleet hub serve`` subprocesses (each with its own folder,
hub.toml and client id; on PostgreSQL one shared hub store and fleet tables, with
``shared_subscriptions`` when there are several), and the device simulators of
``bench/hub_ingest.py`` in their own processes (windows with 64-feature drift stats).

- ``windows_per_s.<engine>_<hubs>``: 8,000 windows from 100 devices (batches of 10)
  published as fast as one client can, from the first publish until every window is
  committed in the fleet tables (telemetry is stored once: what the rollout gates, drift,
  alerts and reports read), each with its rollups and ack cursor in one transaction. ``cpu_s_per_1000_windows.<run>`` splits the CPU
  time of that run by role (hub processes, database server, broker, device simulator), so
  scaling can be judged on machines with more cores than this one.
- ``fleet10k``: a store holding 10,000 devices (rows, not processes) running v1 with
  baseline telemetry: ``rollout create`` (the command), one gate-evaluating tick of the
  rollout engine, ``rollout status`` and ``hub devices`` (the commands), each timed on
  both engines; ``fleet10k_max_s`` is the slowest of them.
- ``storm_*``: 1,000 devices connect at once against two hubs on PostgreSQL with shared
  subscriptions and publish 12 buffered windows each: ``storm_drain_s`` until every
  window is stored and every device holds its ack; ``storm_losses`` windows published but
  not stored; ``storm_duplicates`` windows counted more than once (windows folded into the
  device rollups, which drift and reports read, minus distinct stored windows).

Prints one JSON object. ``python bench/hub_scale.py [--quick]``. Timing on a loaded
machine is noisy: read the figures, never assert on them in tests.

``python bench/hub_scale.py --scenario failover [--agents 50] [--simulated 0]`` runs the
hub failover test (tests/integration/test_hub_failover.py: 5 agents and 45 simulated
devices) at fleet size, through the same scenario code (tests/support/failover.py): three
``hub serve`` processes on one PostgreSQL store, ``--agents`` real ``agent run`` processes
(2 s telemetry windows, inference traffic to every one) and ``--simulated`` simulated
devices (tests/support/simulated_devices.py), a rollout in three phases (10%, 50%, 100%),
``kill -9`` of the hub holding the singleton lease as phase 2 starts, and the killed hub
started again once the rollout ended (its broker session holds device messages). It prints
``takeover_s`` (kill to another holder), ``rollout_finished``, ``transitions`` in order
and ``phases_recorded_once``, ``duplicates`` ((device, seq) held twice in the fleet tables,
the one telemetry store: shared in the store's database when ``shared_fleet_tables``, else
across the hubs' own fleet databases), ``losses`` (records a device issued from its first
stored seq on that the store does not hold, minus those it merged, dropped or still
holds), ``unacked_after_drain``, ``wrong_ack_cursors`` (devices whose fleet ack cursor is
not their highest contiguous stored seq), directives per device against assignment
changes, open alerts per key, agent and hub RSS, the scenario's timings and ``wall_s``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import hub_ingest  # bench/ is on sys.path when this file runs
from edgefleet.core.cli.main import main as cli_main
from edgefleet.core.keys import generate_keypair
from edgefleet.core.protocol import TelemetryRecord
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.store import (
    BundleRecord,
    DesiredAssignment,
    DeviceRecord,
    open_store,
)

TARGETS = {"sqlite_1": 1000, "postgresql_2": 2000, "fleet10k_max_s": 1.0}
CLK = os.sysconf("SC_CLK_TCK")
SHA = {1: "a1" * 32, 2: "b2" * 32}


# -- processes and their CPU -----------------------------------------------------------
def cpu_s(pid: int) -> float:
    """utime + stime of a live process, seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def database_cpu_s(server: PostgresServer | None) -> float:
    if server is None:
        return 0.0
    pid = server._postmaster_pid()
    if pid is None:
        return 0.0
    return cpu_s(pid) + sum(cpu_s(child) for child in children_of(pid))


class HubProcs:
    """N ``hub serve`` subprocesses sharing a store (or one on an SQLite file)."""

    def __init__(self, work: Path, port: int, n: int, url: str | None, key: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.folders: list[Path] = []
        self.url = url
        for i in range(n):
            folder = work / f"hub-{i}"
            folder.mkdir(parents=True)
            store = f'url = "{url}"\n' if url else ""
            (folder / "hub.toml").write_text(
                f'[store]\npath = "hub.db"\n{store}bundles_dir = "../bundles"\n'
                f'[broker]\nport = {port}\nclient_id = "hub-{i}"\n'
                f"shared_subscriptions = {'true' if n > 1 else 'false'}\n"
                f'[keys]\nhub_signing_key = "{key}"\n[service]\ntick_s = 3600.0\n'
            )
            self.folders.append(folder)

    def start(self) -> None:
        for folder in self.folders:
            log = open(folder / "serve.log", "wb")  # noqa: SIM115 - the child owns it
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "edgefleet.core.cli.main", "hub", "serve"]
                    + ["--config", str(folder / "hub.toml")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                )
            )
        deadline = time.monotonic() + 120
        for folder, proc in zip(self.folders, self.procs, strict=True):
            while b"hub: serving" not in (folder / "serve.log").read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"hub serve failed: {(folder / 'serve.log').read_text()}")
                time.sleep(0.1)

    def cpu_s(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs)

    def fleet_windows(self) -> int:
        """Windows in the fleet tables: in the hub store's database (one, shared, on
        PostgreSQL; each hub's own file on SQLite)."""
        locations = [self.url] if self.url else [f / "hub.db" for f in self.folders]
        return sum(fleet_count(location) for location in locations)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class FleetCounts:
    """Counts in the fleet tables (the one telemetry store) over one plain read connection,
    so they can be polled: opening the fleet tables would take their write lock each time."""

    def __init__(self, location: Path | str) -> None:
        if isinstance(location, Path):
            self.conn: Any = sqlite3.connect(location, timeout=30)
        else:
            import psycopg

            self.conn = psycopg.connect(location, autocommit=True)

    def windows(self) -> int:
        """Window rows stored (one per (device, seq): the key is unique)."""
        return self._one("SELECT COUNT(*) FROM fleet_records WHERE kind = 'window'")

    def rolled_up(self) -> int:
        """Windows folded into the device rollups (a window folded twice counts twice)."""
        return self._one("SELECT COALESCE(SUM(windows), 0) FROM fleet_rollups WHERE device != ''")

    def _one(self, sql: str) -> int:
        return int(self.conn.execute(sql).fetchone()[0])

    def close(self) -> None:
        self.conn.close()


def fleet_count(location: Path | str) -> int:
    if isinstance(location, Path) and not location.exists():
        return 0
    counts = FleetCounts(location)
    try:
        return counts.windows()
    finally:
        counts.close()


def enroll(location: Path | str, devices: list[str]) -> None:
    store = open_store(location)
    try:
        with store.transaction():
            for device_id in devices:
                store.add_device(DeviceRecord(device_id, "rpi4-arm64", "-", 0.0, "g"))
    finally:
        store.close()


def fresh_location(engine: str, work: Path, server: PostgresServer | None) -> Path | str:
    if engine == "sqlite":
        return work / "hub-0" / "hub.db"
    assert server is not None
    return server.dsn(server.create_database())


# -- ingest runs ---------------------------------------------------------------------------
def ingest_run(
    engine: str, hubs: int, root: Path, server: PostgresServer | None, reference: Path, quick: bool
) -> dict[str, Any]:
    devices, windows = (40, 50) if quick else (100, 80)
    total = devices * windows
    work = root / f"{engine}_{hubs}"
    work.mkdir()
    key = generate_keypair("hub", work / "keys").private
    broker = MosquittoBroker(work / "broker").start()
    location = fresh_location(engine, work, server)
    procs = HubProcs(work, broker.port, hubs, location if engine != "sqlite" else None, key)
    enroll(location, [f"tp-{d}" for d in range(devices)])
    procs.start()
    try:
        before = (procs.cpu_s(), database_cpu_s(server), cpu_s(broker.pid or 0))
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        publisher = hub_ingest.spawn(
            "throughput", broker.port, reference, devices=devices, windows=windows
        )
        deadline = time.monotonic() + 900
        stored = FleetCounts(location)
        try:
            while (n := stored.windows()) < total:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{engine}_{hubs}: only {n} stored")
                time.sleep(0.05)
        finally:
            stored.close()
        done = time.time()
        after = (procs.cpu_s(), database_cpu_s(server), cpu_s(broker.pid or 0))
        report = hub_ingest.finish(publisher, 600)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        fleet = procs.fleet_windows()
    finally:
        procs.stop()
        broker.kill()
    per_k = 1000.0 / total
    devices_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    return {
        "windows": total,
        "windows_per_s": round(total / (done - report["started"]), 1),
        "fleet_db_windows": fleet,
        "cpu_s_per_1000_windows": {
            "hub": round((after[0] - before[0]) * per_k, 3),
            "database": round((after[1] - before[1]) * per_k, 3),
            "broker": round((after[2] - before[2]) * per_k, 3),
            "devices": round(devices_cpu * per_k, 3),
        },
    }


# -- 10,000 devices --------------------------------------------------------------------------
def quiet_cli(*argv: str) -> tuple[float, str]:
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli_main(list(argv))
        except SystemExit as e:
            if e.code not in (0, None):
                raise RuntimeError(f"{argv}: exit {e.code}") from None
    return time.perf_counter() - started, out.getvalue()


def fleet10k(engine: str, root: Path, server: PostgresServer | None, quick: bool) -> dict[str, Any]:
    n = 2000 if quick else 10_000
    work = root / f"fleet10k_{engine}"
    (work / "hub-0").mkdir(parents=True)
    location = fresh_location(engine, work, server)
    url = f'url = "{location}"\n' if engine != "sqlite" else ""
    config = work / "hub-0" / "hub.toml"
    config.write_text(f'[store]\npath = "hub.db"\n{url}')
    store = open_store(location)
    now = time.time()
    try:
        with store.transaction():
            for v in (1, 2):
                store.add_bundle(
                    BundleRecord(SHA[v], "digits", v, "rpi4-arm64", 100, "x", {}, ("k",), 1.0)
                )
            for i in range(n):
                device = f"d{i:05d}"
                store.add_device(DeviceRecord(device, "rpi4-arm64", "-", 0.0, f"g{i % 20}"))
                store.set_presence(device, True, now)
                store.set_assignment(
                    device, "digits", DesiredAssignment("digits", SHA[1], 1, 100, "r0"), now
                )
    finally:
        store.close()
    # Baseline telemetry: one window per device, stored as the hub's ingest stores it.
    telemetry = FleetTelemetry(location)
    try:
        body = dict(hub_ingest.window(1, "", now - 600).body)
        body.pop("drift", None)
        record = [TelemetryRecord(1, "window", body)]
        for lo in range(0, n, 500):
            telemetry.ingest_many(
                [(DeviceInfo(f"d{i:05d}", f"g{i % 20}"), record) for i in range(lo, lo + 500)],
                now - 600,
            )
    finally:
        telemetry.close()
    timings: dict[str, float] = {}
    timings["rollout_create_s"], out = quiet_cli(
        "hub", "rollout", "create", "digits:2", "--to", "all", "--phases", "5%,100%",
        "--gate", "bake=0", "--gate", "min_devices=1", "--config", str(config), "--json",
    )  # fmt: skip
    rollout_id = json.loads(out)["rollout"]
    store = open_store(location)
    try:
        engine_ = RolloutEngine(store)
        started = time.perf_counter()
        engine_.tick(time.time())  # starts phase 1: assigns 5% of the fleet
        timings["first_tick_s"] = time.perf_counter() - started
        started = time.perf_counter()
        engine_.tick(time.time())  # evaluates the gates over the phase
        timings["gate_tick_s"] = time.perf_counter() - started
    finally:
        store.close()
    timings["rollout_status_s"], _ = quiet_cli(
        "hub", "rollout", "status", rollout_id, "--config", str(config), "--json"
    )
    timings["hub_devices_s"], _ = quiet_cli("hub", "devices", "--config", str(config), "--json")
    result: dict[str, Any] = {k: round(v, 3) for k, v in timings.items()}
    result["devices"] = n
    result["max_s"] = max(result[k] for k in timings)
    return result


# -- reconnect storm -------------------------------------------------------------------------
def storm(root: Path, server: PostgresServer, reference: Path, quick: bool) -> dict[str, Any]:
    devices, windows = (200, 12) if quick else (1000, 12)
    total = devices * windows
    work = root / "storm"
    work.mkdir()
    key = generate_keypair("hub", work / "keys").private
    broker = MosquittoBroker(work / "broker").start()
    location = fresh_location("postgresql", work, server)
    procs = HubProcs(work, broker.port, 2, str(location), key)
    enroll(location, [f"st-{d}" for d in range(devices)])
    procs.start()
    try:
        proc = hub_ingest.spawn(
            "storm", broker.port, reference, devices=devices, windows=windows, timeout=300
        )
        report = hub_ingest.finish(proc, 900)
        deadline = time.monotonic() + 60
        counts = FleetCounts(location)
        try:
            while counts.windows() < total and time.monotonic() < deadline:
                time.sleep(0.1)
            stored_at = time.time()
            time.sleep(2.0)
            distinct, folded = counts.windows(), counts.rolled_up()
        finally:
            counts.close()
    finally:
        procs.stop()
        broker.kill()
    last_ack = report["last_ack"] or float("inf")
    return {
        "storm_devices": devices,
        "storm_windows": total,
        "storm_drain_s": round(max(last_ack, stored_at) - report["started"], 3),
        "storm_acked_devices": report["acked_devices"],
        "storm_retransmits": report["retransmits"],
        "storm_losses": total - distinct,
        "storm_duplicates": max(0, folded - distinct),
    }


# -- failover ------------------------------------------------------------------------------
def failover(root: Path, server: PostgresServer, agents: int, simulated: int) -> dict[str, Any]:
    """The hub failover scenario of tests/integration/test_hub_failover.py at fleet size
    (tests/support/failover.py runs it), summed up as JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' harness
    from tests.support.failover import FailoverSettings, run_failover
    from tests.support.hub_cluster import highest_contiguous

    work = root / "failover"
    work.mkdir()
    broker = MosquittoBroker(work / "broker").start()
    try:
        run = run_failover(
            work,
            server.dsn(server.create_database()),
            broker.port,
            FailoverSettings(agents=agents, simulated=simulated, window_s=2),
        )
    finally:
        broker.kill()
    doubled_fleet = sum(n - 1 for n in run.fleet_records.values() if n > 1)
    wrong_cursors = sum(
        1
        for d in run.devices
        if run.fleet_cursors.get(d, [])
        != [c for c in [highest_contiguous(run.stored.get(d, []), run.first_seq[d])] if c]
    )
    changes = [run.assignment_changes.get(d, 0) for d in run.devices]
    counts = [run.directives.get(d, 0) for d in run.devices]
    return {
        "hubs": 3,
        "agents": agents,
        "simulated": simulated,
        "killed_in_phase": run.killed_in_phase,
        "old_epoch": run.old_epoch,
        "new_epoch": run.new_epoch,
        "takeover_s": run.takeover_s,
        "rollout_state": run.rollout_state,
        "rollout_finished": run.rollout_state == "completed",
        "transitions": run.transitions,
        "phases_recorded_once": run.transitions
        == ["created", "start:1", "advance:2", "advance:3", "complete"],
        "requests_by_status": {str(k): v for k, v in run.requests_by_status.items()},
        "shared_fleet_tables": run.shared_fleet_tables,
        "stored_records": sum(len(v) for v in run.stored.values()),
        "duplicates": {
            "store": sum(len(v) - len(set(v)) for v in run.stored.values()),
            "fleet_tables": doubled_fleet,
        },
        "losses": sum(
            max(
                0,
                run.issued[d]
                - run.first_seq[d]
                + 1
                - len(set(run.stored.get(d, [])))
                - run.given_up.get(d, 0)
                - run.unacked.get(d, 0),
            )
            for d in run.devices
        ),  # fmt: skip
        "unacked_after_drain": sum(run.unacked.values()),
        "wrong_ack_cursors": wrong_cursors,
        "directives_per_assignment_change": {
            "devices": len(run.devices),
            "equal": sum(1 for c, n in zip(changes, counts, strict=True) if c == n),
            "devices_by_directive_count": dict(sorted(Counter(map(str, counts)).items())),
        },
        "open_alerts_per_key": {
            "keys": len(run.open_alerts),
            "max": max(run.open_alerts.values(), default=0),
        },
        "agent_rss_mb": rss_summary(run.agent_rss_mb),
        "hub_rss_mb": rss_summary(run.hub_rss_mb),
        "timings_s": run.timings,
        "wall_s": run.timings.get("wall_s"),
    }


def rss_summary(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v > 0] or [0.0]
    return {
        "processes": len(values),
        "mean": round(sum(values) / len(values), 1),
        "max": round(max(values), 1),
        "total": round(sum(values), 1),
    }


def main_failover(agents: int, simulated: int) -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-failover-") as tmp:
        server = PostgresServer().start()
        try:
            result = {
                "failover": failover(Path(tmp), server, agents, simulated),
                "cores": os.cpu_count(),
            }
        finally:
            server.remove()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--scenario",
        choices=("scale", "failover"),
        default="scale",
        help="scale: ingest, 10,000 devices, storm (default); failover: 3 hubs, real agents",
    )
    parser.add_argument("--agents", type=int, default=50, help="agent processes (failover)")
    parser.add_argument(
        "--simulated", type=int, default=0, help="simulated devices besides them (failover)"
    )
    args = parser.parse_args()
    if args.scenario == "failover":
        main_failover(args.agents, args.simulated)
        return
    result: dict[str, Any] = {
        "windows_per_s": {},
        "cpu_s_per_1000_windows": {},
        "cores": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-scale-") as tmp:
        root = Path(tmp)
        reference = root / "reference.json"
        reference.write_text(hub_ingest.build_profile().to_json())
        server = PostgresServer().start()
        try:
            for engine, hubs in (
                ("sqlite", 1),
                ("postgresql", 1),
                ("postgresql", 2),
                ("postgresql", 4),
            ):
                run = ingest_run(engine, hubs, root, server, reference, args.quick)
                name = f"{engine}_{hubs}"
                result["windows_per_s"][name] = run["windows_per_s"]
                result["cpu_s_per_1000_windows"][name] = run["cpu_s_per_1000_windows"]
                result.setdefault("fleet_db_windows", {})[name] = run["fleet_db_windows"]
                result["ingest_windows"] = run["windows"]
            result["fleet10k"] = {
                engine: fleet10k(engine, root, server, args.quick)
                for engine in ("sqlite", "postgresql")
            }
            result["fleet10k_max_s"] = max(r["max_s"] for r in result["fleet10k"].values())
            result.update(storm(root, server, reference, args.quick))
        finally:
            server.remove()
    result["targets"] = TARGETS
    result["meets_targets"] = (
        result["windows_per_s"]["sqlite_1"] >= TARGETS["sqlite_1"]
        and result["windows_per_s"]["postgresql_2"] >= TARGETS["postgresql_2"]
        and result["fleet10k_max_s"] <= TARGETS["fleet10k_max_s"]
        and result["storm_losses"] == 0
        and result["storm_duplicates"] == 0
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

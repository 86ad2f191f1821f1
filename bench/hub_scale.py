"""Hub at fleet scale: ingest with 1..4 hub processes on SQLite and PostgreSQL, the
10,000-device operations, a reconnect storm against two hubs.

Everything is real and started here: mosquitto on a free loopback port, a PostgreSQL
server from the distribution's binaries (``edgefleet.core.testing.postgres``: initdb in a
temp dir, its own port), ``edgefleet hub serve`` subprocesses (each with its own folder,
hub.toml, client id and fleet database; on PostgreSQL one shared hub store, with
``shared_subscriptions`` when there are several), and the device simulators of
``bench/hub_ingest.py`` in their own processes (windows with 64-feature drift stats).

- ``windows_per_s.<engine>_<hubs>``: 8,000 windows from 100 devices (batches of 10)
  published as fast as one client can, from the first publish until every window is in the
  hub store (what the rollout gates read). ``cpu_s_per_1000_windows.<run>`` splits the CPU
  time of that run by role (hub processes, database server, broker, device simulator), so
  scaling can be judged on machines with more cores than this one.
- ``fleet10k``: a store holding 10,000 devices (rows, not processes) running v1 with
  baseline telemetry: ``rollout create`` (the command), one gate-evaluating tick of the
  rollout engine, ``rollout status`` and ``hub devices`` (the commands), each timed on
  both engines; ``fleet10k_max_s`` is the slowest of them.
- ``storm_*``: 1,000 devices connect at once against two hubs on PostgreSQL with shared
  subscriptions and publish 12 buffered windows each: ``storm_drain_s`` until every
  window is in the hub store and every device holds its ack; ``storm_losses`` windows
  published but not stored; ``storm_duplicates`` windows the hubs' fleet databases hold
  more than once between them.

Prints one JSON object. ``python bench/hub_scale.py [--quick]``. Timing on a loaded
machine is noisy: read the figures, never assert on them in tests.

``python bench/hub_scale.py --scenario failover [--agents 50]`` runs the hub failover test
(tests/hub/test_three_hubs.py, same harness: tests/support/hub_cluster.py) at fleet size:
three ``hub serve`` processes on one PostgreSQL store, ``--agents`` real ``agent run``
processes (2 s telemetry windows, inference traffic to every one), a rollout in three
phases (10%, 50%, 100%), and ``kill -9`` of the hub holding the singleton lease as phase 2
starts. It prints ``takeover_s`` (kill to another holder), ``rollout_finished``,
``transitions`` and ``phases_recorded_once``, ``duplicates`` ((device, seq) held twice in
the store, or across the hubs' fleet databases), ``losses`` (records a device issued from
its first stored seq on that no store holds, minus those it merged, dropped or still
holds), directives per device (one assignment change each), open alerts per key, agent
and hub RSS, and ``wall_s``.
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
from pathlib import Path
from typing import Any

import hub_ingest  # bench/ is on sys.path when this file runs
from edgefleet.core.cli.main import main as cli_main
from edgefleet.core.keys import generate_keypair
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.singleton import LEASE as LEASE_NAME
from edgefleet.hub.store import (
    BundleRecord,
    DesiredAssignment,
    DeviceRecord,
    TelemetryRow,
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
        total = 0
        for folder in self.folders:
            db = folder / "hub.fleet.db"
            if db.exists():
                with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
                    total += conn.execute(
                        "SELECT COUNT(*) FROM fleet_records WHERE kind = 'window'"
                    ).fetchone()[0]
        return total

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def telemetry_count(location: Path | str) -> int:
    store = open_store(location)
    try:
        return sum(1 for _ in store.telemetry_windows(hub_ingest.MODEL, [1], None, 0.0))
    finally:
        store.close()


def stored_count(location: Path | str) -> int:
    """Rows in the hub store's telemetry table, by the cheapest query either engine has."""
    store = open_store(location)
    try:
        row = store._one("SELECT COUNT(*) AS n FROM telemetry")  # type: ignore[attr-defined]
        return int(row["n"]) if row else 0
    finally:
        store.close()


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
        while stored_count(location) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{engine}_{hubs}: only {stored_count(location)} stored")
            time.sleep(0.05)
        done = time.time()
        after = (procs.cpu_s(), database_cpu_s(server), cpu_s(broker.pid or 0))
        report = hub_ingest.finish(publisher, 600)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        time.sleep(2.0)  # let the fleet ingest workers finish their queues
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
                body = dict(hub_ingest.window(1, "", now - 600).body)
                body.pop("drift", None)
                store.add_telemetry(device, [TelemetryRow(1, "window", body)], now - 600)
    finally:
        store.close()
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
        while stored_count(location) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        stored_at = time.time()
        time.sleep(2.0)
        distinct = telemetry_count(location)
        fleet = procs.fleet_windows()
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
        "storm_duplicates": max(0, fleet - distinct),
    }


# -- failover with real agents ----------------------------------------------------------------
FAILOVER_GATES = ("min_inferences=20", "bake_s=1", "max_latency_p95_ratio=1000",
                  "max_prediction_psi=1000", "device_timeout_s=300")  # fmt: skip


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_for(what: str, check: Any, timeout_s: float, poll_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def buffered_records(state_dir: Path) -> int:
    """Telemetry records a device still holds (not acknowledged by a hub)."""
    db = state_dir / "telemetry.db"
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def device_meta(state_dir: Path) -> dict[str, int]:
    """The telemetry buffer's counters (next_seq, dropped_records, merges, ...)."""
    with contextlib.closing(sqlite3.connect(state_dir / "telemetry.db", timeout=30)) as conn:
        return {k: int(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def lost_records(meta: dict[str, int], stored: list[int], unacked: int) -> int:
    """Records a device issued from its first stored seq on that the store does not hold,
    not counting those it dropped or merged on purpose or still holds."""
    if not stored:
        return 0
    issued = meta["next_seq"] - min(stored)
    gone = meta.get("dropped_records", 0) + meta.get("merges", 0)
    return max(0, issued - len(set(stored)) - gone - unacked)


def failover(root: Path, server: PostgresServer, agents: int) -> dict[str, Any]:
    """Three hubs, a three-phase rollout over ``agents`` real agent processes with telemetry
    flowing; ``kill -9`` of the hub holding the singleton lease when phase 2 starts. The
    harness is the failover test's (tests/support/hub_cluster.py, tests/integration/fleet.py).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' harness
    from tests.integration.fleet import PROFILE, PROFILE_TOML, Traffic, enroll_agent
    from tests.support.bundles import write_signed_bundle
    from tests.support.hub_cluster import (
        HubCluster,
        directive_counts,
        fleet_record_counts,
        open_alerts_per_key,
        stored_seqs,
        transitions,
    )

    from edgefleet.core.keys import load_private_key
    from edgefleet.hub.config import HubConfig
    from edgefleet.hub.rollout.machine import RolloutState

    started = time.monotonic()
    work = root / "failover"
    work.mkdir()
    keys = work / "keys"
    hub_key = generate_keypair("hub", keys).private
    publisher = generate_keypair("publisher", keys)
    profiles = work / "profiles"
    profiles.mkdir()
    (profiles / f"{PROFILE}.toml").write_text(PROFILE_TOML)
    broker = MosquittoBroker(work / "broker").start()
    url = server.dsn(server.create_database())
    cluster = HubCluster(
        work, url, broker.port, hub_key, publisher.private.with_suffix(".pub"), work / "bundles"
    )
    config = HubConfig.load(cluster.configs[0])
    store = open_store(url)
    devices = [
        enroll_agent(
            store,
            config,
            f"pi-{i:02d}",
            work / "devices" / f"pi-{i:02d}",
            profiles,
            window_s=2,
            flush_interval_s=0.5,
        )  # fmt: skip
        for i in range(agents)
    ]
    bundle = write_signed_bundle(
        work / "iris-1.efb", "iris", load_private_key(publisher.private), name="iris", version=1
    )
    quiet_cli("hub", "publish", str(bundle.path), "--config", str(cluster.configs[0]))
    result: dict[str, Any] = {"hubs": cluster.n, "agents": agents}
    try:
        cluster.start()
        for i, device in enumerate(devices):
            device.start()
            if i % 10 == 9:  # a few at a time: each one loads onnxruntime
                time.sleep(2.0)
        online = lambda: sum(1 for d in store.list_devices() if d.online) == agents  # noqa: E731
        wait_for("every agent online", online, 300)
        result["agents_up_s"] = round(time.monotonic() - started, 1)
        with Traffic(devices, interval_s=0.2) as traffic:
            gates = [a for g in FAILOVER_GATES for a in ("--gate", g)]
            quiet_cli("hub", "rollout", "create", "iris:1", "--to", "all", "--id", "f1",
                      "--phases", "10%,50%,100%", *gates, "--config", str(cluster.configs[0]))  # fmt: skip

            def phase() -> int:
                record = store.get_rollout("f1")
                return -1 if record is None else record.status.phase

            wait_for("phase 2", lambda: phase() >= 1, 600)
            result["agent_rss_mb"] = rss_summary([d.proc.pid for d in devices if d.proc])
            holder, epoch = cluster.kill_holder(store)
            result["killed_in_phase"] = phase() + 1
            result["takeover_s"] = round(cluster.wait_takeover(store, holder, 60), 3)
            result["new_epoch"] = store.lease_holder(LEASE_NAME)[1]  # type: ignore[index]
            result["old_epoch"] = epoch

            def settled() -> bool:
                record = store.get_rollout("f1")
                return record is not None and record.status.state not in (
                    RolloutState.CREATED,
                    RolloutState.RUNNING,
                )

            wait_for("the rollout to end", settled, 600)
            record = store.get_rollout("f1")
            assert record is not None
            result["rollout_state"] = record.status.state.value
            result["rollout_finished"] = record.status.state is RolloutState.COMPLETED
            result["requests_by_status"] = {str(k): v for k, v in sorted(traffic.codes.items())}
        drained = lambda: all(buffered_records(d.state_dir) == 0 for d in devices)  # noqa: E731
        with contextlib.suppress(RuntimeError):
            wait_for("every device's telemetry acknowledged", drained, 120, poll_s=1.0)
        for device in devices:  # what a device holds after a clean stop counts as unacked
            device.stop()
        result["unacked_after_drain"] = sum(buffered_records(d.state_dir) for d in devices)
        recorded = transitions(store, "f1")
        result["transitions"] = dict(sorted(recorded.items()))
        result["phases_recorded_once"] = all(n == 1 for n in recorded.values()) and all(
            f"{e}" in recorded for e in ("start:1", "advance:2", "advance:3", "complete")
        )
        seqs = stored_seqs(url)
        result["stored_records"] = sum(len(v) for v in seqs.values())
        result["duplicates"] = {
            "store": sum(len(v) - len(set(v)) for v in seqs.values()),
            "fleet_databases": sum(
                n - 1 for n in fleet_record_counts(cluster.fleet_databases()).values() if n > 1
            ),
        }
        result["losses"] = sum(
            lost_records(
                device_meta(d.state_dir), seqs.get(d.id, []), buffered_records(d.state_dir)
            )
            for d in devices
        )
        counts = directive_counts(url)
        result["directives_per_assignment_change"] = {
            "assignment_changes_per_device": 1,
            "devices_by_directive_count": {
                str(n): sum(1 for d in devices if counts.get(d.id, 0) == n)
                for n in sorted({counts.get(d.id, 0) for d in devices})
            },
        }
        alerts = open_alerts_per_key(url, cluster.fleet_databases())
        result["open_alerts_per_key"] = {
            "keys": len(alerts),
            "max": max(alerts.values(), default=0),
        }
        result["hub_rss_mb"] = rss_summary([p.pid for p in cluster.procs if p.poll() is None])
    finally:
        for device in devices:
            device.stop()
        cluster.stop()
        store.close()
        broker.kill()
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def rss_summary(pids: list[int]) -> dict[str, float]:
    values = [rss_mb(pid) for pid in pids]
    values = [v for v in values if v > 0] or [0.0]
    return {
        "processes": len(values),
        "mean": round(sum(values) / len(values), 1),
        "max": round(max(values), 1),
        "total": round(sum(values), 1),
    }


def main_failover(agents: int) -> None:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-failover-") as tmp:
        server = PostgresServer().start()
        try:
            result = {"failover": failover(Path(tmp), server, agents), "cores": os.cpu_count()}
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
    args = parser.parse_args()
    if args.scenario == "failover":
        main_failover(args.agents)
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

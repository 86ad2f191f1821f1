"""Fleet console benchmark: API server time and dashboard weight on a large fleet.

The hub store holds 10,000 simulated devices (rows with a state report, in 50 groups), two
published versions and 100 rollouts of 100 devices each (started: phase 1 assigned); the
fleet database holds 24 telemetry windows of 16 features per device (240,000 windows, folded
into their rollups as ``hub serve`` does). The API runs in this process under uvicorn on a
free loopback port with its result cache off, so every request does the full work.

- ``endpoints``: per endpoint, p50/p95 of the server time the API reports in its
  ``Server-Timing`` header (the request as the application handled it, without the client),
  ``cold`` (caches emptied before each request) and ``warm`` (repeated within the cache's
  lifetime: 2 s for device rows, 60 s for drift, as ``hub api`` runs);
- ``api_p95_ms``: the slowest endpoint's cold p95 (goal: <= 200 ms); ``api_warm_p95_ms``
  the same for warm requests;
- ``overview_bytes``: bytes the dashboard's overview transfers (page, script, style, the
  session check and the overview JSON; nothing else is loaded) — goal <= 300 KB;
- ``devices``, ``windows``, ``rollouts``: the fleet size;
- ``drift_board``: the drift endpoints' start (see docs/console.md, "Performance"):
  ``first_ms`` the server time of the first drift request after the API started (it waits
  at most ``drift_wait_s`` for the board, then answers ``computing``), ``ready_s`` how long
  until the board's first snapshot of the whole fleet was there, ``update_s`` how long a
  batch of new windows took to show in the answers, and the server times of the requests
  made meanwhile (``during_build``, ``during_update``). The ``drift_*`` endpoints' cold
  requests come after ``ready_s``: each empties the answer caches and makes the board check
  the fleet database again (behind the request).

``--store postgresql`` runs the hub store on a PostgreSQL server of its own (initdb in a
temporary directory, a free loopback port); the fleet tables go wherever the hub puts them
for that store. Prints one JSON object.
``python bench/console.py [--devices N] [--repeat N] [--store sqlite|postgresql]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgefleet.core.drift import ReferenceProfile, WindowStats
from edgefleet.core.protocol import LatencyHistogram, TelemetryRecord, WindowSummary
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.config import HubConfig, StoreSettings
from edgefleet.hub.console.access_store import AccessStore, console_db_path
from edgefleet.hub.console.api.app import create_app
from edgefleet.hub.console.api.server import CACHE_S, DRIFT_CACHE_S, DRIFT_WAIT_S
from edgefleet.hub.console.auth import create_token
from edgefleet.hub.console.service import FleetConsole
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry
from edgefleet.hub.fleet.settings import FleetSettings
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.store import BundleRecord, DeviceRecord, HubStore, open_store

MODEL = "bench"
N_FEATURES = 16
WINDOWS = 24
WINDOW_S = 3600.0
ROWS = 100
GROUPS = 50
ROLLOUTS = 100
PER_ROLLOUT = 100
LATENCY_EDGES = (1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 1000.0)


def build_hub(config: HubConfig, n_devices: int) -> tuple[HubStore, list[str]]:
    store = open_store(config.store.location)
    now = time.time()
    ids = [f"dev-{i:05d}" for i in range(n_devices)]
    with store.transaction():
        for i, device_id in enumerate(ids):
            store.add_device(
                DeviceRecord(
                    device_id=device_id,
                    profile="rpi4-arm64",
                    password_hash="$7$101$c2FsdA==$aGFzaA==",
                    created_at=now - 86400,
                    group=f"g{i % GROUPS:02d}",
                    online=i % 10 != 0,
                    last_seen=now - 30,
                    state={
                        "models": [{"name": MODEL, "active": {"version": 1}, "deployment": None}],
                        "directive_error": "directive rejected: unknown key"
                        if i % 997 == 0
                        else None,
                    },
                )
            )
        for version in (1, 2):
            store.add_bundle(
                BundleRecord(
                    sha256=f"{version:064x}",
                    model=MODEL,
                    version=version,
                    profile=None,
                    size=1 << 20,
                    path=f"{version}.efb",
                    manifest={},
                    signer_keyids=("k",),
                    published_at=now - 3600,
                )
            )
    engine = RolloutEngine(store)
    for r in range(min(ROLLOUTS, n_devices // PER_ROLLOUT)):
        members = ids[r * PER_ROLLOUT : (r + 1) * PER_ROLLOUT]
        engine.create(
            MODEL,
            2,
            "ids=" + ",".join(members),
            now - 600,
            phases_text="10%,100%",
            rollout_id=f"r-{r:03d}",
        )
    engine.tick(now - 300)
    return store, ids


def window_pool(rng: np.random.Generator) -> tuple[ReferenceProfile, list[str]]:
    """A reference profile and 64 encoded windows of ROWS rows (every 16th shifted)."""
    X = rng.normal(size=(5000, N_FEATURES))
    profile = ReferenceProfile.build(
        X, [f"f{i}" for i in range(N_FEATURES)], outputs=rng.integers(0, 2, 5000)
    )
    pool = []
    for k in range(64):
        w = WindowStats.empty(profile)
        rows = rng.normal(size=(ROWS, N_FEATURES))
        if k % 16 == 0:
            rows[:, :4] += 1.0
        w.update(rows.astype(np.float32))
        w.update_outputs(rng.integers(0, 2, ROWS))
        pool.append(base64.b64encode(w.to_bytes()).decode("ascii"))
    return profile, pool


def _window(seq: int, start_s: float, blob: str) -> TelemetryRecord:
    counts = [0] * (len(LATENCY_EDGES) + 1)
    counts[2] = ROWS
    return TelemetryRecord.of_window(
        seq,
        WindowSummary(
            model=MODEL,
            version=1,
            start_s=start_s,
            end_s=start_s + WINDOW_S,
            requests=ROWS,
            latency_ms=LatencyHistogram(LATENCY_EDGES, tuple(counts)),
            predictions={"0": ROWS // 2, "1": ROWS - ROWS // 2},
            drift=blob,
        ),
    )


def build_telemetry(fleet_db: Any, ids: list[str], seed: int = 1) -> int:
    """24 hourly windows per device into the fleet tables at ``fleet_db`` (where the
    console reads them: ``FleetConsole.fleet_db``)."""
    profile, pool = window_pool(np.random.default_rng(seed))
    now = time.time()
    start = now - WINDOWS * WINDOW_S
    telemetry = FleetTelemetry(fleet_db, FleetSettings())
    telemetry.store.put_reference(MODEL, 1, profile.to_json(), {"accuracy": 0.9}, now)
    stored = 0
    try:
        batch: list[tuple[DeviceInfo, list[TelemetryRecord]]] = []
        for i, device_id in enumerate(ids):
            records = [
                _window(seq + 1, start + seq * WINDOW_S, pool[(i * 7 + seq) % len(pool)])
                for seq in range(WINDOWS)
            ]
            batch.append((DeviceInfo(device_id, f"g{i % GROUPS:02d}", "rpi4-arm64"), records))
            if len(batch) == 200:
                stored += sum(r.stored for r in telemetry.ingest_many(batch, now))
                batch = []
        if batch:
            stored += sum(r.stored for r in telemetry.ingest_many(batch, now))
    finally:
        telemetry.close()
    return stored


def more_telemetry(fleet_db: Any, ids: list[str], seed: int = 2) -> int:
    """One new window (the current hour) from each of ``ids``, as ``hub serve`` would
    store it: what the drift board has to take in."""
    _profile, pool = window_pool(np.random.default_rng(seed))
    now = time.time()
    telemetry = FleetTelemetry(fleet_db, FleetSettings())
    try:
        batch = [
            (
                DeviceInfo(d, f"g{int(d[4:]) % GROUPS:02d}", "rpi4-arm64"),
                [_window(WINDOWS + 1, now - WINDOW_S / 2, pool[k % len(pool)])],
            )
            for k, d in enumerate(ids)
        ]
        return sum(r.stored for r in telemetry.ingest_many(batch, now))
    finally:
        telemetry.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(config: HubConfig, store: HubStore) -> tuple[Any, str, AccessStore, FleetConsole]:
    import uvicorn

    access = AccessStore(console_db_path(config.store.path))
    console = FleetConsole(
        config,
        store,
        access,
        cache_s=CACHE_S,
        drift_cache_s=DRIFT_CACHE_S,
        drift_wait_s=DRIFT_WAIT_S,
    )
    app = create_app(console, access)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False)
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}", access, console


def server_ms(response: httpx.Response) -> float:
    timing = response.headers["server-timing"]
    return float(timing.split("dur=")[1])


def percentiles(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(samples, 50)), 2),
        "p95_ms": round(float(np.percentile(samples, 95)), 2),
        "n": len(samples),
    }


def drift_start(client: httpx.Client, path: str, limit_s: float = 3600.0) -> dict[str, Any]:
    """The first drift request after the API started, then one every half second until
    the board's first snapshot is there."""
    t0 = time.monotonic()
    r = client.get(path)
    r.raise_for_status()
    first = {"first_ms": round(server_ms(r), 2), "first_computing": r.json()["computing"]}
    during = []
    while r.json()["computing"]:
        if time.monotonic() - t0 > limit_s:
            raise SystemExit(f"the drift board was not built within {limit_s:.0f} s")
        time.sleep(0.5)
        r = client.get(path)
        r.raise_for_status()
        during.append(server_ms(r))
    return {
        **first,
        "ready_s": round(time.monotonic() - t0, 1),
        "during_build": percentiles(during) if during else None,
    }


def drift_update(
    client: httpx.Client, fleet_db: Any, ids: list[str], path: str, limit_s: float = 3600.0
) -> dict[str, Any]:
    """New windows from 1% of the devices: how long until the answers count them (their
    windows end later than any stored before; a count of windows would not do: when the
    hour moves the start of the span, the board is rebuilt without the oldest hour)."""
    last_end = client.get(path).json()["fleet"]["end_s"]
    stored = more_telemetry(fleet_db, ids[: max(1, len(ids) // 100)])
    t0 = time.monotonic()
    during = []
    while True:
        r = client.get(path)
        r.raise_for_status()
        during.append(server_ms(r))
        if r.json()["fleet"]["end_s"] > last_end:
            break
        if time.monotonic() - t0 > limit_s:
            raise SystemExit(f"new windows did not show within {limit_s:.0f} s")
        time.sleep(0.2)
    return {
        "new_windows": stored,
        "update_s": round(time.monotonic() - t0, 1),
        "during_update": percentiles(during),
    }


def run(args: argparse.Namespace, work: Path, url: str | None) -> dict[str, Any]:
    config = HubConfig(
        store=StoreSettings(path=work / "hub.db", url=url, bundles_dir=work / "bundles")
    )
    t0 = time.perf_counter()
    store, ids = build_hub(config, args.devices)
    # Wherever the console reads the fleet tables for this store.
    fleet_db = FleetConsole(config, store).fleet_db
    windows = build_telemetry(fleet_db, ids)
    setup_s = time.perf_counter() - t0
    server, base, access, console = serve(config, store)
    token = create_token(access, "bench", "viewer", time.time(), 1).secret
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=300)
    middle = ids[len(ids) // 2]
    rollouts = min(ROLLOUTS, args.devices // PER_ROLLOUT)
    endpoints = {
        "overview": "/api/v1/overview",
        "devices_page": "/api/v1/devices?limit=100",
        "devices_filtered": "/api/v1/devices?limit=100&offset=100&group=g07&online=true",
        "device": f"/api/v1/devices/{middle}",
        "rollouts": "/api/v1/rollouts",
        "rollout": f"/api/v1/rollouts/r-{rollouts // 2:03d}",
        "drift_group": f"/api/v1/drift/{MODEL}?scope=group",
        "drift_device": f"/api/v1/drift/{MODEL}?scope=device",
        "drift_device_page_2": f"/api/v1/drift/{MODEL}?scope=device&offset=200&limit=200",
        "drift_fleet": f"/api/v1/drift/{MODEL}?scope=fleet",
        "alerts": "/api/v1/alerts",
    }
    board: dict[str, Any] = {"drift_wait_s": DRIFT_WAIT_S}
    if args.skip_drift:
        endpoints = {k: v for k, v in endpoints.items() if not k.startswith("drift")}
    else:
        board.update(drift_start(client, endpoints["drift_group"]))
    results: dict[str, Any] = {}
    for name, path in endpoints.items():
        # Cold: the caches emptied before each request (a dashboard's first look, or a
        # poll after the cache expired). Warm: repeated within the cache's lifetime.
        cold = []
        for _ in range(args.cold):
            console.clear_caches()
            r = client.get(path)
            r.raise_for_status()
            cold.append(server_ms(r))
        warm = []
        for _ in range(args.repeat):
            r = client.get(path)
            r.raise_for_status()
            warm.append(server_ms(r))
        results[name] = {
            "cold": percentiles(cold),
            "warm": percentiles(warm),
            "bytes": len(r.content),
        }
    if not args.skip_drift:
        board.update(drift_update(client, fleet_db, ids, endpoints["drift_device"]))
    anon = httpx.Client(base_url=base, timeout=60)
    weight = sum(
        len(anon.get(p).content)
        for p in ("/", "/static/app.js", "/static/app.css", "/api/v1/session")
    )
    weight += len(client.get("/api/v1/overview").content)
    server.should_exit = True
    console.close()
    access.close()
    store.close()
    return {
        "devices": args.devices,
        "store": args.store,
        "windows": windows,
        "features": N_FEATURES,
        "rollouts": rollouts,
        "drift_measured": not args.skip_drift,
        # Cold figures: what a request costs when no cache holds the answer.
        "api_p95_ms": max(v["cold"]["p95_ms"] for v in results.values()),
        "slowest": max(results, key=lambda k: results[k]["cold"]["p95_ms"]),
        "api_warm_p95_ms": max(v["warm"]["p95_ms"] for v in results.values()),
        "cache_s": {"devices": CACHE_S, "drift": DRIFT_CACHE_S},
        "overview_bytes": weight,
        "endpoints": results,
        "drift_board": board,
        "setup_s": round(setup_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20, help="warm requests per endpoint")
    parser.add_argument("--cold", type=int, default=5, help="cold requests per endpoint")
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the hub store's engine (postgresql: a server of its own, started and removed here)",
    )
    parser.add_argument(
        "--skip-drift",
        action="store_true",
        help="leave out the drift endpoints (and building their board)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        if args.store == "sqlite":
            result = run(args, Path(tmp), None)
        else:
            pg = PostgresServer().start()
            try:
                result = run(args, Path(tmp), pg.dsn(pg.create_database()))
            finally:
                pg.remove()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

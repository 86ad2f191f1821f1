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
- ``devices``, ``windows``, ``rollouts``: the fleet size.

Prints one JSON object. ``python bench/console.py [--devices N] [--repeat N]``.
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
from edgefleet.hub.config import HubConfig, StoreSettings
from edgefleet.hub.console.access_store import AccessStore, console_db_path
from edgefleet.hub.console.api.app import create_app
from edgefleet.hub.console.api.server import CACHE_S, DRIFT_CACHE_S
from edgefleet.hub.console.auth import create_token
from edgefleet.hub.console.service import FleetConsole
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry
from edgefleet.hub.fleet.settings import FleetSettings, fleet_location
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.store import BundleRecord, DeviceRecord, SqliteHubStore

MODEL = "bench"
N_FEATURES = 16
WINDOWS = 24
WINDOW_S = 3600.0
ROWS = 100
GROUPS = 50
ROLLOUTS = 100
PER_ROLLOUT = 100
LATENCY_EDGES = (1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 1000.0)


def build_hub(work: Path, n_devices: int) -> tuple[HubConfig, SqliteHubStore, list[str]]:
    config = HubConfig(store=StoreSettings(path=work / "hub.db", bundles_dir=work / "bundles"))
    store = SqliteHubStore(config.store.path)
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
    return config, store, ids


def build_telemetry(config: HubConfig, ids: list[str], seed: int = 1) -> int:
    rng = np.random.default_rng(seed)
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
    counts = [0] * (len(LATENCY_EDGES) + 1)
    counts[2] = ROWS
    hist = LatencyHistogram(LATENCY_EDGES, tuple(counts))
    now = time.time()
    start = now - WINDOWS * WINDOW_S
    telemetry = FleetTelemetry(fleet_location(config.store.path), FleetSettings())
    telemetry.store.put_reference(MODEL, 1, profile.to_json(), {"accuracy": 0.9}, now)
    stored = 0
    try:
        batch: list[tuple[DeviceInfo, list[TelemetryRecord]]] = []
        for i, device_id in enumerate(ids):
            records = [
                TelemetryRecord.of_window(
                    seq + 1,
                    WindowSummary(
                        model=MODEL,
                        version=1,
                        start_s=start + seq * WINDOW_S,
                        end_s=start + (seq + 1) * WINDOW_S,
                        requests=ROWS,
                        latency_ms=hist,
                        predictions={"0": ROWS // 2, "1": ROWS - ROWS // 2},
                        drift=pool[(i * 7 + seq) % len(pool)],
                    ),
                )
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(config: HubConfig, store: SqliteHubStore) -> tuple[Any, str, AccessStore, FleetConsole]:
    import uvicorn

    access = AccessStore(console_db_path(config.store.path))
    console = FleetConsole(config, store, access, cache_s=CACHE_S, drift_cache_s=DRIFT_CACHE_S)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20, help="warm requests per endpoint")
    parser.add_argument("--cold", type=int, default=5, help="cold requests per endpoint")
    parser.add_argument(
        "--skip-drift",
        action="store_true",
        help="leave out the drift endpoints (their per-device breakdown is the slow part)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        config, store, ids = build_hub(work, args.devices)
        windows = build_telemetry(config, ids)
        setup_s = time.perf_counter() - t0
        server, base, access, console = serve(config, store)
        token = create_token(access, "bench", "viewer", time.time(), 1).secret
        client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=300
        )
        middle = ids[len(ids) // 2]
        endpoints = {
            "overview": "/api/v1/overview",
            "devices_page": "/api/v1/devices?limit=100",
            "devices_filtered": "/api/v1/devices?limit=100&offset=100&group=g07&online=true",
            "device": f"/api/v1/devices/{middle}",
            "rollouts": "/api/v1/rollouts",
            "rollout": f"/api/v1/rollouts/r-{min(ROLLOUTS, args.devices // PER_ROLLOUT) // 2:03d}",
            "drift_group": f"/api/v1/drift/{MODEL}?scope=group",
            "drift_device": f"/api/v1/drift/{MODEL}?scope=device",
            "alerts": "/api/v1/alerts",
        }
        if args.skip_drift:
            endpoints = {k: v for k, v in endpoints.items() if not k.startswith("drift")}
        results: dict[str, Any] = {}
        for name, path in endpoints.items():
            # Cold: the caches emptied before each request (a dashboard's first look, or a
            # poll after the cache expired). Warm: repeated within the cache's lifetime.
            cold_n = 1 if name.startswith("drift") and args.devices > 2000 else args.cold
            cold = []
            for _ in range(cold_n):
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
    print(
        json.dumps(
            {
                "devices": args.devices,
                "windows": windows,
                "features": N_FEATURES,
                "rollouts": min(ROLLOUTS, args.devices // PER_ROLLOUT),
                "drift_measured": not args.skip_drift,
                # Cold figures: what a request costs when no cache holds the answer.
                "api_p95_ms": max(v["cold"]["p95_ms"] for v in results.values()),
                "slowest": max(results, key=lambda k: results[k]["cold"]["p95_ms"]),
                "api_warm_p95_ms": max(v["warm"]["p95_ms"] for v in results.values()),
                "cache_s": {"devices": CACHE_S, "drift": DRIFT_CACHE_S},
                "overview_bytes": weight,
                "endpoints": results,
                "setup_s": round(setup_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Shared builders for hub tests: keys, hub.toml, telemetry windows and storing them
(bundles: tests.support.bundles)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.core.keys import generate_keypair
from edgefleet.core.protocol.telemetry import LatencyHistogram, TelemetryRecord, WindowSummary
from edgefleet.hub.config import HubConfig
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry, IngestResult
from edgefleet.hub.fleet.totals import WindowTotals
from edgefleet.hub.rollout.evidence import VersionStats
from edgefleet.hub.store import HubStore, SqliteHubStore

LATENCY_EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


@dataclass(frozen=True)
class HubFixture:
    root: Path
    config_path: Path
    publisher_key: Path
    hub_key: Path

    def config(self) -> HubConfig:
        return HubConfig.load(self.config_path)

    def store(self) -> SqliteHubStore:
        return SqliteHubStore(self.config().store.path)


def make_hub(root: Path, *, broker: dict[str, Any] | None = None, extra: str = "") -> HubFixture:
    """Keys plus a hub.toml whose paths live under ``root``."""
    keys = root / "keys"
    publisher = generate_keypair("publisher", keys)
    hub = generate_keypair("hub", keys)
    broker_lines = "\n".join(
        f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {str(v).lower()}"
        for k, v in (broker or {}).items()
    )
    text = f"""
[store]
path = "hub.db"
bundles_dir = "bundles"

[broker]
{broker_lines}

[keys]
hub_signing_key = "keys/hub.key"
publisher_keys = ["keys/publisher.pub"]
{extra}
"""
    config_path = root / "hub.toml"
    config_path.write_text(text)
    return HubFixture(root, config_path, publisher.private, hub.private)


def window(
    model: str,
    version: int,
    *,
    requests: int,
    errors: int = 0,
    latency_bucket: int = 2,
    predictions: dict[str, int] | None = None,
    start_s: float | None = None,
) -> dict[str, Any]:
    """A telemetry window body as the agent sends it (all latencies in one bucket).

    ``start_s`` defaults to ten minutes ago: the hub refuses windows from the far past.
    """
    if start_s is None:
        start_s = time.time() - 600
    counts = [0] * (len(LATENCY_EDGES) + 1)
    counts[latency_bucket] = requests
    summary = WindowSummary(
        model=model,
        version=version,
        start_s=start_s,
        end_s=start_s + 60,
        requests=requests,
        errors={"inference": errors} if errors else {},
        latency_ms=LatencyHistogram(LATENCY_EDGES, tuple(counts)),
        predictions=predictions
        if predictions is not None
        else {"0": requests // 2, "1": requests - requests // 2},
    )
    return summary.to_dict()


def stats_of(body: dict[str, Any]) -> VersionStats:
    """A window body's evidence as the rollout gates read it once the fleet stored it."""
    return VersionStats.from_totals(WindowTotals.of_window(WindowSummary.from_dict(body)))


def location_of(store: HubStore) -> Path | str:
    """The database an open hub store is in (its fleet tables are there too)."""
    url = getattr(store, "url", None)
    return url if isinstance(url, str) else Path(getattr(store, "path"))  # noqa: B009


class TelemetryWriter:
    """Stores telemetry windows the way the hub does: through the fleet ingest, into the
    fleet tables of the store's database, which the rollout gates read."""

    def __init__(self, store_or_location: HubStore | Path | str) -> None:
        location = (
            store_or_location
            if isinstance(store_or_location, (Path, str))
            else location_of(store_or_location)
        )
        self.fleet = FleetTelemetry(location)

    def windows(
        self, device: str, bodies: list[tuple[int, dict[str, Any]]], at: float, *, group: str = ""
    ) -> IngestResult:
        """Store ``(seq, window body)`` pairs of one device, received at ``at``."""
        records = [TelemetryRecord(seq, "window", body) for seq, body in bodies]
        return self.fleet.ingest(DeviceInfo(device, group or None), records, at)

    def close(self) -> None:
        self.fleet.close()

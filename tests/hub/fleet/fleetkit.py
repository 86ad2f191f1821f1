"""Building blocks for fleet tests: real reference profiles and real telemetry windows.

Windows are what an agent would send: ``WindowStats`` from the drift module filled with
the rows the device saw, encoded with ``to_bytes`` and base64, inside a ``WindowSummary``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from edgefleet.core.cli.main import main
from edgefleet.core.drift import ConfusionCounts, ReferenceProfile, WindowStats
from edgefleet.core.protocol import LatencyHistogram, TelemetryRecord, WindowSummary
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry
from edgefleet.hub.fleet.settings import FleetSettings

MODEL = "sensor"
LATENCY_EDGES = (1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 1000.0)
N_FEATURES = 8
NAMES = tuple(f"f{i}" for i in range(N_FEATURES))


def reference(rng: np.random.Generator, n: int = 20_000) -> ReferenceProfile:
    """A normal reference with a class output: y = 1 when f0 + f1 > 0."""
    X = rng.normal(size=(n, N_FEATURES))
    return ReferenceProfile.build(X, NAMES, outputs=classify(X))


def classify(X: np.ndarray) -> np.ndarray:
    return (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def window_record(
    seq: int,
    profile: ReferenceProfile,
    X: np.ndarray,
    start_s: float,
    end_s: float,
    *,
    version: int = 1,
    y_true: np.ndarray | None = None,
    errors: int = 0,
    latency_ms: float = 3.0,
    model: str = MODEL,
) -> TelemetryRecord:
    stats = WindowStats.empty(profile, start_s, end_s)
    stats.update(X)
    y = classify(X)
    stats.update_outputs(y)
    confusion = None
    if y_true is not None:
        cc = ConfusionCounts([0, 1])
        cc.update(y_true, y)
        confusion = cc.to_dict()
    counts = [0] * (len(LATENCY_EDGES) + 1)
    counts[int(np.searchsorted(LATENCY_EDGES, latency_ms))] = len(X)
    summary = WindowSummary(
        model=model,
        version=version,
        start_s=start_s,
        end_s=end_s,
        requests=len(X),
        errors={"internal": errors} if errors else {},
        latency_ms=LatencyHistogram(LATENCY_EDGES, tuple(counts)),
        predictions={
            str(k): int(v) for k, v in zip(*np.unique(y, return_counts=True), strict=True)
        },
        drift=base64.b64encode(stats.to_bytes()).decode("ascii"),
        confusion=confusion,
    )
    return TelemetryRecord.of_window(seq, summary)


@dataclass
class SimDevice:
    """A device with its own data slice and its own telemetry seq counter."""

    info: DeviceInfo
    next_seq: int = 1
    unacked: list[TelemetryRecord] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)

    def record(
        self,
        profile: ReferenceProfile,
        X: np.ndarray,
        start_s: float,
        end_s: float,
        **kwargs: object,
    ) -> TelemetryRecord:
        rec = window_record(self.next_seq, profile, X, start_s, end_s, **kwargs)  # type: ignore[arg-type]
        self.next_seq += 1
        self.unacked.append(rec)
        self.rows.append(X)
        return rec

    def ack(self, highest: int | None) -> None:
        if highest is not None:
            self.unacked = [r for r in self.unacked if r.seq > highest]


def fleet(groups: Sequence[str], per_group: int, profile: str = "rpi4-arm64") -> list[SimDevice]:
    return [
        SimDevice(DeviceInfo(f"{g}-d{i:02d}", g, profile)) for g in groups for i in range(per_group)
    ]


DRIFTED = ("east-d01", "east-d02", "east-d04")
WINDOWS, ROWS = 6, 100


def build_fleet(
    db: Path,
    profile: ReferenceProfile,
    drifted_features: int,
    rng: np.random.Generator,
    groups: Sequence[str] = ("north", "south", "east", "west"),
    *,
    now: float | None = None,
) -> float:
    """20 devices in 4 groups, an hour of windows two hours ago; DRIFTED see shifted features.

    The windows straddle a bucket boundary (half an hour either side), so reports always
    have two time buckets. Taking "two hours ago" from the raw clock instead put all six
    windows in one bucket whenever the clock read less than ten minutes past the hour: the
    report then had a one-point timeline and no timeline charts.
    """
    settings = FleetSettings()
    current = time.time() if now is None else now
    telemetry = FleetTelemetry(db, settings)
    telemetry.store.put_reference(MODEL, 1, profile.to_json(), {"accuracy": 0.95}, current)
    start = settings.bucket_of(current) - 2 * settings.bucket_s + settings.bucket_s // 2
    step = settings.bucket_s // WINDOWS
    for dev in fleet(groups, 5):
        for k in range(WINDOWS):
            X = rng.normal(size=(ROWS, N_FEATURES))
            if dev.info.id in DRIFTED:
                X[:, :drifted_features] += 1.5
            dev.record(profile, X, start + k * step, start + (k + 1) * step)
        telemetry.ingest(dev.info, dev.unacked, start + WINDOWS * step + 1)
    telemetry.close()
    return start


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``edgefleet ARGV`` through the real entry point (exit codes mapped in one place)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


class Receiver:
    """A local HTTP endpoint answering with scripted status codes."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.bodies: list[dict[str, object]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(length)))
                code = outer.codes.pop(0) if outer.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

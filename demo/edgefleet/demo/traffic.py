"""The demo's clients: Open Inference Protocol v2 JSON requests to every agent's endpoint.

One background thread plays the clients of all devices in turn, one batch of rows per
request, at a fixed pace. Each device has a flag that makes its rows drifted (size
features scaled by :data:`~edgefleet.demo.training.DRIFT_SCALE`), which is how the
demo injects drift. The clients always send the 30 features of the original data set,
as real clients would; a model that wants more is refused by the agent (HTTP 400).

Invariants: the pump never raises into the demo (every failure is counted per device:
``refused`` for 4xx answers, ``unavailable`` when the agent is not reachable or has no
model yet); counters are only read through :meth:`TrafficPump.snapshot`, under the lock.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.demo.training import MODEL_NAME, DemoData

ROWS_PER_REQUEST = 16
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class InferOutcome:
    status: int  # HTTP status, 0 when the agent could not be reached
    version: int | None = None
    error: str | None = None


class OipClient:
    """A keep-alive HTTP/1.1 client for one agent's endpoint (127.0.0.1 only)."""

    def __init__(self, port: int, model: str = MODEL_NAME, timeout_s: float = TIMEOUT_S) -> None:
        self.port = port
        self.path = f"/v2/models/{model}/infer"
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def infer(self, rows: np.ndarray) -> InferOutcome:
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(rows.shape),
                        "datatype": "FP32",
                        "data": [round(float(v), 5) for v in rows.reshape(-1)],
                    }
                ],
                "outputs": [{"name": "label"}],
            }
        ).encode()
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, self.timeout_s)
            self._conn.request(
                "POST", self.path, body=body, headers={"Content-Type": "application/json"}
            )
            response = self._conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return InferOutcome(0, error=type(e).__name__)
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            doc = {}
        if response.status != 200:
            return InferOutcome(response.status, error=str(doc.get("error", ""))[:200])
        version = doc.get("model_version")
        if isinstance(version, int | str) and str(version).isdigit():
            return InferOutcome(200, version=int(version))
        return InferOutcome(200)


@dataclass
class DeviceTraffic:
    """What the clients of one device sent and got back."""

    device: str
    port: int | None = None
    drifted: bool = False
    requests: int = 0
    rows: int = 0
    drifted_rows: int = 0
    ok_by_version: Counter[int] = field(default_factory=Counter)
    refused: int = 0
    unavailable: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "rows": self.rows,
            "drifted_rows": self.drifted_rows,
            "answered_by_version": {str(k): v for k, v in sorted(self.ok_by_version.items())},
            "refused": self.refused,
            "unavailable": self.unavailable,
            "last_error": self.last_error,
        }


class TrafficPump:
    """Sends ``requests_per_s`` requests per second to each device, round robin."""

    def __init__(
        self,
        data: DemoData,
        devices: list[str],
        *,
        requests_per_s: float = 8.0,
        rows_per_request: int = ROWS_PER_REQUEST,
        seed: int = 7,
    ) -> None:
        self.data = data
        self.requests_per_s = requests_per_s
        self.rows_per_request = rows_per_request
        self._rng = np.random.default_rng(seed)
        self._devices = {d: DeviceTraffic(d) for d in devices}
        self._clients: dict[str, OipClient] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_port(self, device: str, port: int) -> None:
        with self._lock:
            self._devices[device].port = port

    def set_drift(self, device: str, drifted: bool) -> None:
        with self._lock:
            self._devices[device].drifted = drifted

    def snapshot(self) -> dict[str, DeviceTraffic]:
        with self._lock:
            return {
                d: DeviceTraffic(
                    t.device,
                    t.port,
                    t.drifted,
                    t.requests,
                    t.rows,
                    t.drifted_rows,
                    Counter(t.ok_by_version),
                    t.refused,
                    t.unavailable,
                    t.last_error,
                )
                for d, t in self._devices.items()
            }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="demo-traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=TIMEOUT_S + 1)
        for client in self._clients.values():
            client.close()

    def _loop(self) -> None:
        period = 1.0 / self.requests_per_s
        next_round = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                targets = [(t.device, t.port, t.drifted) for t in self._devices.values()]
            for device, port, drifted in targets:
                if self._stop.is_set():
                    return
                if port is None:
                    continue
                self._send(device, port, drifted)
            next_round += period
            delay = next_round - time.monotonic()
            if delay < -period:  # fell behind (a slow agent): do not try to catch up
                next_round = time.monotonic()
            elif delay > 0:
                self._stop.wait(delay)

    def _send(self, device: str, port: int, drifted: bool) -> None:
        client = self._clients.get(device)
        if client is None or client.port != port:
            if client is not None:
                client.close()
            client = self._clients[device] = OipClient(port)
        rows, _labels = self.data.sample(self._rng, self.rows_per_request, drifted)
        outcome = client.infer(rows)
        with self._lock:
            t = self._devices[device]
            t.requests += 1
            if outcome.status == 200:
                t.rows += len(rows)
                if drifted:
                    t.drifted_rows += len(rows)
                if outcome.version is not None:
                    t.ok_by_version[outcome.version] += 1
            elif outcome.status in (0, 404, 503):
                t.unavailable += 1
                t.last_error = outcome.error
            else:
                t.refused += 1
                t.last_error = outcome.error

"""Bundle distribution benchmark: one 1 MiB bundle rolled out to 100 devices over MQTT.

Everything real but the devices' deployment driver: a local mosquitto started here
with the password file and ACL ``hub broker-config`` writes for the enrolled fleet
(every device and the hub authenticate and are confined to their topics), the hub
as its own ``edgefleet hub serve`` process (store, bundle store, rollout
engine, directive signing, chunk server, default settings), and 100 devices each
running the agent's real ``HubSync`` with its own MQTT client and state directory,
spread over ``--processes`` device processes (4: 200 threads in one interpreter would
measure the GIL, not the protocol). A device "commits" once its sync handed over a
file whose signatures and hashes the real ``BundleVerifier`` accepts (loading
onnxruntime sessions is not what is measured). The rollout is created through the
hub's store, as ``hub rollout create`` does, with one 100% phase.

Device state directories and the HTTP baseline's downloads live on tmpfs when there
is one: 100 simulated devices sharing one disk would queue behind each other's
fsyncs, which no real fleet does.

Prints one JSON object:

- ``all_committed_s``: from ``rollout create`` until the hub counts every device
  committed (rollout start, directive signing and publication, downloads,
  verification, state reports).
- ``mqtt_download_s``: from the first device accepting its directive until the last
  device holds the complete file with its sha256 checked.
- ``byte_ratio``: chunk-frame bytes the devices received (60-byte headers included)
  divided by bundle size x devices.
- ``http_s``: the same 100 downloads from a local ``http.server`` (100 concurrent
  clients, each writing the file, fsync, sha256 check), the baseline.
- ``mqtt_http_time_ratio``: ``mqtt_download_s / http_s``.
- ``download_milestones_s``: seconds after the first device accepted its directive
  until the last one did, the first chunk frame arrived anywhere, the last device
  got its first frame, the last frame arrived, the last device handed its file over.
- ``cpu_s_until_committed``: CPU seconds the hub, the broker and the device processes
  used from ``rollout create`` until every device committed (where the time goes).

Targets: byte_ratio <= 1.05, all_committed_s <= 60, mqtt_http_time_ratio <= 3.
Run: ``python bench/distribution.py`` (``--devices N``, ``--size-bytes B``,
``--processes P``). Timings on a shared 2-core machine vary by tens of percent.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.agent.sync import DeployOutcome, HubSync, Progress, SyncSettings
from edgefleet.agent.sync.reconcile import InstalledModel
from edgefleet.agent.sync.reporter import last_will
from edgefleet.core.bundle_verifier import BundleVerifier
from edgefleet.core.bundle_writer import write_bundle
from edgefleet.core.keys import generate_keypair, load_private_key
from edgefleet.core.manifest import Manifest
from edgefleet.core.mqtt import InboundMessage, MqttSettings
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import Topics
from edgefleet.core.testing.brokers import MosquittoBroker, free_port
from edgefleet.core.trust import TrustStore
from edgefleet.hub.broker_config import write_broker_config
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.config import HubConfig
from edgefleet.hub.enrollment import enroll_device, publisher_trust
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.store import SqliteHubStore

TARGET_BYTE_RATIO = 1.05
TARGET_ALL_COMMITTED_S = 60.0
TARGET_TIME_RATIO = 3.0
PROFILE = "x86_64-gateway"
MODEL = "bench"


@dataclass
class VerifyingDeployer:
    """A deployment driver that verifies the handed-over bundle and commits at once."""

    trust: TrustStore
    models: dict[str, InstalledModel] = field(default_factory=dict)
    outcomes: dict[str, DeployOutcome] = field(default_factory=dict)
    handed_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def installed(self) -> Mapping[str, InstalledModel]:
        with self.lock:
            return dict(self.models)

    def idle(self) -> bool:
        return True

    def submit_install(
        self, path: Path, *, allow_downgrade: bool, now: float, rollout_id: str | None = None
    ) -> str:
        self.handed_at = time.time()
        request_id = f"r{len(self.outcomes) + 1}"
        try:
            verified = BundleVerifier(self.trust).verify(path)
        except Exception as e:  # a real driver would reject; the benchmark reports it
            self.outcomes[request_id] = DeployOutcome(request_id, "install", "rejected", str(e))
            return request_id
        with self.lock:
            self.models[verified.manifest.name] = InstalledModel(
                verified.sha256, verified.manifest.version
            )
        self.outcomes[request_id] = DeployOutcome(request_id, "install", "committed")
        return request_id

    def submit_rollback(self, model: str, *, now: float, rollout_id: str | None = None) -> str:
        raise NotImplementedError

    def outcome(self, request_id: str) -> DeployOutcome | None:
        return self.outcomes.get(request_id)

    def in_progress(self) -> Progress | None:
        return None

    def last_outcomes(self) -> Mapping[str, Mapping[str, Any]]:
        return {}


class FrameCounter:
    def __init__(self) -> None:
        self.bytes = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, message: InboundMessage) -> None:
        now = time.time()
        with self._lock:
            self.bytes += len(message.payload)
            if self.first_at is None:
                self.first_at = now
            self.last_at = now


def make_bundle(root: Path, key_path: Path, size: int) -> Path:
    manifest = Manifest(
        bundle_id=f"{MODEL}-1",
        model={"name": MODEL, "version": 1, "task": "classification"},
        target={"profile": PROFILE, "arch": "x86_64"},
    )
    members: dict[str, bytes | Path] = {
        "model.onnx": os.urandom(size),
        "smoke.npz": b"smoke",
        "reference.json": b"{}",
    }
    out = root / "bench-1.efb"
    key = load_private_key(key_path)
    # Shrink the payload until the whole bundle (tar headers, records) fits `size` bytes.
    payload = size
    while write_bundle(out, manifest, members, [key]).size > size:
        payload -= 512
        members["model.onnx"] = os.urandom(payload)
    return out


def http_baseline(bundle: Path, devices: int, root: Path, device_root: Path) -> float:
    """Wall time of ``devices`` concurrent HTTP downloads (write, fsync, sha256)."""
    serve_dir = root / "http"
    serve_dir.mkdir()
    shutil.copy(bundle, serve_dir / "bundle.efb")
    expected = hashlib.sha256(bundle.read_bytes()).hexdigest()

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # 100 clients connect at once: no SYN retries

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(serve_dir))
    server = Server(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/bundle.efb"
    out_dir = device_root / "http-out"
    out_dir.mkdir()
    errors: list[str] = []

    def fetch(i: int) -> None:
        digest = hashlib.sha256()
        path = out_dir / f"{i}.efb"
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f:
            while block := response.read(1 << 16):
                f.write(block)
                digest.update(block)
            f.flush()
            os.fsync(f.fileno())
        if digest.hexdigest() != expected:
            errors.append(f"download {i}: sha256 mismatch")

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(devices)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    server.shutdown()
    if errors:
        raise SystemExit(errors[0])
    return elapsed


def device_worker(spec_path: Path) -> None:
    """One device process: run the syncs of the devices in ``spec_path`` until SIGTERM."""
    spec = json.loads(spec_path.read_text())
    topics = Topics()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    syncs: list[HubSync] = []
    deployers: list[VerifyingDeployer] = []
    counters: list[FrameCounter] = []
    for device in spec["devices"]:
        device_id = device["id"]
        trust = TrustStore.from_dict(device["trust"])
        client = MqttClient(
            MqttSettings(
                host=spec["host"],
                port=spec["port"],
                client_id=device_id,
                username=device_id,
                password=device["password"],
                lwt=last_will(topics, device_id),
            )
        )
        counter = FrameCounter()
        client.subscribe(topics.chunk(device_id), counter)
        deployer = VerifyingDeployer(trust)
        settings = SyncSettings(
            device_id=device_id, profile=PROFILE, agent_version="bench", max_bundle_bytes=64 << 20
        )
        sync = HubSync(settings, client, trust, deployer, None, Path(spec["root"]) / device_id)
        sync.start()
        syncs.append(sync)
        deployers.append(deployer)
        counters.append(counter)
    for sync in syncs:
        sync.transport.wait_subscribed(30)
    Path(spec["ready"]).touch()
    stop.wait(600)
    result = {
        "accepted": [s.accepted.accepted_at for s in syncs if s.accepted is not None],
        "handed": [d.handed_at for d in deployers if d.handed_at is not None],
        "frame_bytes": sum(c.bytes for c in counters),
        "first_frame": [c.first_at for c in counters if c.first_at is not None],
        "last_frame": [c.last_at for c in counters if c.last_at is not None],
        "state_reports": sum(s.reporter.published for s in syncs),
    }
    for sync in syncs:
        sync.stop(timeout_s=2.0)
    Path(spec["result"]).write_text(json.dumps(result))


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (0 where /proc is not available)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command name: state is [0], utime [11], stime [12] (clock ticks).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(what: str, predicate: Any, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise SystemExit(f"timed out waiting for {what}: {tail}")
        time.sleep(0.05)


def run(devices: int, size: int, root: Path, device_root: Path, processes: int) -> dict[str, Any]:
    """The MQTT rollout, then the HTTP baseline; every process started here ends here."""
    brokers: list[MosquittoBroker] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        return _run(devices, size, root, device_root, processes, brokers, children)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        for broker in brokers:
            broker.stop()


def _run(
    devices: int,
    size: int,
    root: Path,
    device_root: Path,
    processes: int,
    brokers: list[MosquittoBroker],
    children: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    keys = root / "keys"
    port = free_port()
    generate_keypair("publisher", keys)
    generate_keypair("hub", keys)
    (root / "hub.toml").write_text(
        f"""
[store]
path = "hub.db"
bundles_dir = "hub-bundles"

[broker]
host = "127.0.0.1"
port = {port}
password = "{secrets.token_urlsafe(16)}"

[keys]
hub_signing_key = "keys/hub.key"
publisher_keys = ["keys/publisher.pub"]

[service]
tick_s = 1.0
"""
    )
    config = HubConfig.load(root / "hub.toml")
    store = SqliteHubStore(config.store.path)
    bundle_path = make_bundle(root, keys / "publisher.key", size)
    bundle = (
        PublishedBundleStore(config.store.bundles_dir, store)
        .publish(bundle_path, publisher_trust(config), time.time())
        .bundle
    )
    enrolled = []
    for i in range(devices):
        enrollment = enroll_device(store, config, f"dev-{i:03d}", PROFILE, time.time())
        enrolled.append(
            {"id": enrollment.username, "password": enrollment.password, "trust": enrollment.trust}
        )
    # The broker checks the hub's generated password file and ACL, as in a deployment.
    files = write_broker_config(root / "broker", config, store.list_devices(), persistence=False)
    broker = MosquittoBroker(
        root / "mosquitto",
        password_file=files.password_file,
        acl_file=files.acl_file,
        allow_anonymous=False,
        port=port,
    ).start()
    brokers.append(broker)
    hub_log = root / "hub.log"
    with open(hub_log, "wb") as log:
        hub = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.core.cli.main", "hub", "serve"]
            + ["--config", str(root / "hub.toml"), "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    children.append(hub)
    workers = []
    for w in range(processes):
        spec = {
            "host": broker.host,
            "port": broker.port,
            "devices": enrolled[w::processes],
            "root": str(device_root / f"w{w}"),
            "ready": str(root / f"w{w}.ready"),
            "result": str(root / f"w{w}.json"),
        }
        spec_path = root / f"w{w}.spec.json"
        spec_path.write_text(json.dumps(spec))
        with open(root / f"w{w}.log", "wb") as log:
            workers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", str(spec_path)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
            children.append(workers[-1])
    wait_until(
        "the device processes",
        lambda: all((root / f"w{w}.ready").exists() for w in range(processes)),
        120,
        root / "w0.log",
    )
    # The hub is up once it has seen every device's retained "online" status.
    wait_until("the hub", lambda: all(d.online for d in store.list_devices()), 60, hub_log)

    roles = {"hub": [hub.pid], "broker": [broker.pid], "devices": [w.pid for w in workers]}
    cpu_before = {role: sum(cpu_seconds(p) for p in pids) for role, pids in roles.items()}
    engine = RolloutEngine(store)
    started = time.monotonic()
    rollout = engine.create(
        MODEL, 1, "all", time.time(), phases_text="100%", gate_overrides=["min_inferences=0"]
    )

    def committed() -> int:
        rows = store.list_rollout_devices(rollout.rollout_id)
        return sum(1 for r in rows if r.install.value == "committed")

    deadline = started + 300
    while committed() < devices and time.monotonic() < deadline:
        time.sleep(0.05)
    all_committed_s = time.monotonic() - started
    done = committed()
    cpu_s = {
        role: round(sum(cpu_seconds(p) for p in pids) - cpu_before[role], 2)
        for role, pids in roles.items()
    }

    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(60)
    results = [json.loads((root / f"w{w}.json").read_text()) for w in range(processes)]
    accepted = [t for r in results for t in r["accepted"]]
    handed = [t for r in results for t in r["handed"]]
    mqtt_download_s = max(handed) - min(accepted) if handed and accepted else float("nan")
    first_frames = [t for r in results for t in r["first_frame"]]
    last_frames = [t for r in results for t in r["last_frame"]]
    # Milestones after the first directive was accepted: where the download time goes.
    milestones = (
        {
            "last_accepted": round(max(accepted) - min(accepted), 3),
            "first_frame": round(min(first_frames) - min(accepted), 3),
            "last_first_frame": round(max(first_frames) - min(accepted), 3),
            "last_frame": round(max(last_frames) - min(accepted), 3),
            "last_handed": round(max(handed) - min(accepted), 3),
        }
        if handed and accepted and first_frames
        else {}
    )
    delivered = sum(r["frame_bytes"] for r in results)
    state_reports = sum(r["state_reports"] for r in results) / devices
    hub.send_signal(signal.SIGTERM)
    hub.wait(30)
    chunks_sent = store.counters().get("chunks.sent", 0)
    store.close()

    http_s = http_baseline(bundle_path, devices, root, device_root)
    byte_ratio = delivered / (bundle.size * devices)
    ratio = mqtt_download_s / http_s
    return {
        "benchmark": "distribution",
        "devices": devices,
        "bundle_bytes": bundle.size,
        "devices_committed": done,
        "all_committed_s": round(all_committed_s, 3),
        "mqtt_download_s": round(mqtt_download_s, 3),
        "http_s": round(http_s, 3),
        "mqtt_http_time_ratio": round(ratio, 3),
        "byte_ratio": round(byte_ratio, 4),
        "chunk_frames_sent": chunks_sent,
        "state_reports_per_device": round(state_reports, 2),
        "cpu_s_until_committed": cpu_s,
        "download_milestones_s": milestones,
        "chunk_size": SyncSettings.__dataclass_fields__["chunk_size"].default,
        "window_bytes": SyncSettings.__dataclass_fields__["window_bytes"].default,
        "targets": {
            "byte_ratio": TARGET_BYTE_RATIO,
            "all_committed_s": TARGET_ALL_COMMITTED_S,
            "mqtt_http_time_ratio": TARGET_TIME_RATIO,
        },
        "meets_targets": done == devices
        and byte_ratio <= TARGET_BYTE_RATIO
        and all_committed_s <= TARGET_ALL_COMMITTED_S
        and ratio <= TARGET_TIME_RATIO,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--size-bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--processes", type=int, default=4, help="device processes the devices are spread over"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        device_worker(args.worker)
        return
    shm = Path("/dev/shm")
    fast = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with (
        tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp,
        tempfile.TemporaryDirectory(prefix="edgefleet-bench-devices-", dir=fast) as devices_tmp,
    ):
        processes = max(1, min(args.processes, args.devices))
        result = run(args.devices, args.size_bytes, Path(tmp), Path(devices_tmp), processes)
        result["device_processes"] = processes
        result["device_storage"] = "tmpfs" if fast else "disk"
    print(json.dumps(result))


if __name__ == "__main__":
    main()

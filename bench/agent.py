"""Agent benchmark: in-process predict overhead, endpoint throughput, memory, start-up.

Everything is measured side by side in one run, with the digits MLP (hidden
layers 256 and 128, converted with skl2onnx, zipmap off) in a real signed
bundle and the device profile's session settings (threads, no spinning):

- ``predict_ratio_p50/p99``: ``LoadedModel.predict`` (schema checks, run,
  prediction ids) vs ``onnxruntime.InferenceSession.run`` on the same session,
  batch 1, calls interleaved so both see the same noise; median over 5 blocks
  of the per-block ratio (pooled figures next to it).
- ``http_rps``/``http_p99_ms``: single-row OIP v2 infer requests over
  keep-alive against the real daemon (``edgefleet agent run``, telemetry
  recording on), vs ``fastapi_rps``/``fastapi_p99_ms``: a plain FastAPI app
  (``async def`` route, ``request.json()``, the same session, JSONResponse) on
  uvicorn with its defaults in this environment. Same load generator for
  both: a separate process driving several keep-alive connections, closed
  loop. Rounds alternate between the two servers; the median round counts.
- ``rss_mb``: resident memory of the daemon after the load test, vs
  ``bare_rss_mb``: a bare Python process holding the same session after a
  few runs. The daemon is started exactly as the shipped systemd unit starts
  it (``edgefleet agent run --config agent.toml``, which replaces itself with
  ``python -m edgefleet.agent.daemon``; no allocator or interpreter tuning);
  ``rss_ready_mb`` is the daemon right after start-up, before any request.
- ``startup_s``: from spawning ``edgefleet agent run`` to the first 200 on
  ``/v2/health/ready`` (median of 3 starts; the bundle is re-verified and
  loaded each time).
- ``endpoint_only_*``: the same measurements for a process that only
  verifies and loads the bundle the way the daemon does (in a child process)
  and serves it with ``EndpointServer`` (no CLI, no telemetry buffer, no
  deployment machine), to separate the cost of the HTTP layer from the rest
  of the daemon; ``rss_import_breakdown_mb`` shows what each part of the
  daemon adds to a process holding the session, and ``rss_kept_out_mb`` what
  the daemon no longer loads would add on top (measured, not estimated).

- ``attacks``: the endpoint under the attacks of its security tests, against
  a daemon with a bearer token and the Raspberry Pi Zero 2 W's memory figures
  (``agent_memory_budget_mb``, ``max_bundle_bytes``) serving iris: the latency
  of single-row requests with the token (p50/p99/max over sequential
  requests on fresh connections) before and during 256 unauthenticated 4 MiB
  bodies, 300 idle connections, four 520,000-row requests and four of the
  largest batches the budget admits (with those batches' own times), and the
  daemon's peak resident memory against the budget.

Prints one JSON object. ``python bench/agent.py [--quick] [--profile NAME] [--attacks-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the signed test bundles are built by tests/support/bundles.py

from tests.agent import attack_client  # noqa: E402
from tests.support.bundles import make_signer, trained_model, write_signed_bundle  # noqa: E402

TARGETS = {"predict_ratio": 1.25, "http_rps_ratio": 1.0, "rss_ratio": 1.25, "startup_s": 1.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
        return int(head.split(b" ")[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if http_status(port, "/v2/health/ready") == 200:
            return time.perf_counter() - start
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.005)
    raise RuntimeError("server not ready in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- 1. in-process predict vs raw onnxruntime ----------------------------------------------
def bench_predict(bundle: Path, trust: Any, profile: Any, iterations: int) -> dict[str, Any]:
    """Per-call latency of ``LoadedModel.predict`` vs ``InferenceSession.run`` on the same session.

    Calls alternate (and alternate which goes first) so both see the same
    machine noise. The iterations are split into 5 blocks; the ratios reported
    are the median of the per-block ratios (robust to a burst of load from
    other processes during one block), the pooled percentiles are reported too.
    """
    from edgefleet.agent.model.runtime import load_bundle

    model = load_bundle(bundle, trust, profile)
    session = model.session  # the very session the agent runs: only the overhead differs
    m = trained_model("digits_mlp")
    name = session.get_inputs()[0].name
    rows = [m.X_test[i : i + 1].copy() for i in range(len(m.X_test))]
    for x in rows[:200]:
        session.run(None, {name: x})
        model.predict(x)
    clock = time.perf_counter_ns
    blocks = 5
    per_block = max(1000, iterations // blocks)
    raw_all: list[int] = []
    ours_all: list[int] = []
    ratios_p50: list[float] = []
    ratios_p99: list[float] = []

    def q(v: list[int], p: float) -> float:
        return v[min(len(v) - 1, int(len(v) * p))] / 1000.0

    for _ in range(blocks):
        raw_ns: list[int] = []
        ours_ns: list[int] = []
        for i in range(per_block):
            x = rows[i % len(rows)]
            if i & 1:
                t = clock()
                session.run(None, {name: x})
                raw_ns.append(clock() - t)
                t = clock()
                model.predict(x)
                ours_ns.append(clock() - t)
            else:
                t = clock()
                model.predict(x)
                ours_ns.append(clock() - t)
                t = clock()
                session.run(None, {name: x})
                raw_ns.append(clock() - t)
        raw_ns.sort()
        ours_ns.sort()
        ratios_p50.append(q(ours_ns, 0.5) / q(raw_ns, 0.5))
        ratios_p99.append(q(ours_ns, 0.99) / q(raw_ns, 0.99))
        raw_all += raw_ns
        ours_all += ours_ns
    raw_all.sort()
    ours_all.sort()
    return {
        "predict_ratio_p50": statistics.median(ratios_p50),
        "predict_ratio_p99": statistics.median(ratios_p99),
        "predict_p50_us": q(ours_all, 0.5),
        "predict_p99_us": q(ours_all, 0.99),
        "raw_run_p50_us": q(raw_all, 0.5),
        "raw_run_p99_us": q(raw_all, 0.99),
        "predict_ratio_pooled_p50": q(ours_all, 0.5) / q(raw_all, 0.5),
        "predict_ratio_pooled_p99": q(ours_all, 0.99) / q(raw_all, 0.99),
        "predict_ratio_blocks_p50": [round(r, 3) for r in ratios_p50],
        "predict_ratio_blocks_p99": [round(r, 3) for r in ratios_p99],
    }


# --- 2. servers -------------------------------------------------------------------------------
AGENT_TOML = """\
[agent]
device_id = "bench-device"
state_dir = "{state}"
profile = "{profile}"
trust_store = "{trust}"
log_level = "warning"
[endpoint]
host = "127.0.0.1"
port = {port}
[probation]
smoke = true
min_requests = 0
max_seconds = 0
"""

FASTAPI_APP = """\
import sys
import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from edgefleet.agent.model.runtime import select_providers, session_options
from edgefleet.core.profiles import load_profile

profile = load_profile(sys.argv[2])
session = ort.InferenceSession(
    open(sys.argv[1], "rb").read(),
    sess_options=session_options(profile),
    providers=select_providers(profile.execution_providers),
)
app = FastAPI()


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request) -> JSONResponse:
    body = await request.json()
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    label, probabilities = session.run(None, {tensor["name"]: x})
    return JSONResponse({
        "model_name": model,
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": list(label.shape),
             "data": label.tolist()},
            {"name": "probabilities", "datatype": "FP32", "shape": list(probabilities.shape),
             "data": probabilities.ravel().tolist()},
        ],
    })


@app.get("/v2/health/ready")
async def ready() -> dict:
    return {"ready": True}


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning", access_log=False)
"""

BARE_HOLDER = """\
import sys, time
import numpy as np
import onnxruntime as ort

# The same session as the agent's (profile threads, no spinning), without edgefleet.
so = ort.SessionOptions()
so.intra_op_num_threads, so.inter_op_num_threads = map(int, sys.argv[3:5])
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
so.add_session_config_entry("session.inter_op.allow_spinning", "0")
so.log_severity_level = 3
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(open(sys.argv[1], "rb").read(), so, providers=sys.argv[5].split(","))
x = np.zeros((1, 64), dtype=np.float32)
name = session.get_inputs()[0].name
for _ in range(2000):
    session.run(None, {name: x})
print("ready", flush=True)
time.sleep(60)
"""

LEAN_SERVER = """\
import signal, sys, tempfile, threading
from pathlib import Path
from edgefleet.agent.endpoint import EndpointConfig, EndpointServer
from edgefleet.agent.model.runtime import MODEL_MEMBER, load_model_dir
from edgefleet.agent.model.serving import ServingSet
from edgefleet.agent.verify_process import ChildBundleChecker, VerifyProcess
from edgefleet.core.profiles import load_profile

# Verified like the daemon does it: extraction and every load checked in a child process.
bundle, trust, profile = Path(sys.argv[1]), Path(sys.argv[2]), load_profile(sys.argv[3])
store = Path(tempfile.mkdtemp(dir=sys.argv[5])) / "bundle"
ChildBundleChecker(trust, profile.max_bundle_bytes)(bundle, store)
with VerifyProcess(trust) as child:
    checked = child.load(store)
model = load_model_dir(store, checked.manifest, profile, model_bytes=checked.members[MODEL_MEMBER])
server = EndpointServer(EndpointConfig(port=int(sys.argv[4])), ServingSet({"digits": model}))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
server.start()
stop.wait()
server.stop()
"""

IMPORT_BREAKDOWN = """\
import importlib, json, sys
import numpy as np
import onnxruntime as ort

def rss():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024

# A process holding the session (as the bare baseline), then the daemon's parts in
# the order it loads them, then what the daemon keeps out of its process.
so = ort.SessionOptions()
so.intra_op_num_threads, so.inter_op_num_threads = map(int, sys.argv[2:4])
session = ort.InferenceSession(open(sys.argv[1], "rb").read(), so, providers=["CPUExecutionProvider"])
x = np.zeros((1, session.get_inputs()[0].shape[1]), dtype=np.float32)
for _ in range(2000):
    session.run(None, {session.get_inputs()[0].name: x})
daemon = [
    ("python + numpy + onnxruntime + session", []),
    ("stdlib (logging, json, threading, socket, selectors, pathlib, dataclasses)",
     ["logging", "json", "threading", "socket", "selectors", "pathlib", "dataclasses"]),
    ("agent.toml and device profile (tomllib)", ["edgefleet.agent.config", "edgefleet.core.profiles"]),
    ("sqlite3", ["sqlite3"]),
    ("drift statistics", ["edgefleet.core.drift"]),
    ("telemetry buffer and recorder", ["edgefleet.agent.telemetry"]),
    ("runtime", ["edgefleet.agent.model.runtime", "edgefleet.agent.model.serving"]),
    ("endpoint", ["edgefleet.agent.endpoint"]),
    ("daemon, deployment state, verification client",
     ["edgefleet.agent.daemon", "edgefleet.agent.deploy.context", "edgefleet.agent.deploy.loader",
      "edgefleet.agent.deploy.worker", "edgefleet.agent.verify_process"]),
]
kept_out = [
    ("deployment driver (loaded at the first install)", ["edgefleet.agent.deploy.driver"]),
    ("cryptography + bundle verifier (child process only)",
     ["edgefleet.core.trust", "edgefleet.core.bundle_verifier"]),
    ("hashlib's OpenSSL libcrypto (built-in sha256 for model loads and profile ids)",
     ["hashlib"]),
    ("asyncio + ssl (replaced by selectors)", ["asyncio"]),
    ("click + CLI (exec'd away)", ["click", "edgefleet.core.cli.main", "edgefleet.agent.cli"]),
]
out = {}
for table in (daemon, kept_out):
    part = {}
    previous = rss()
    for name, modules in table:
        for module in modules:
            importlib.import_module(module)
        now = rss()
        part[name] = round(now - previous if modules else now, 1)
        previous = now
    out["daemon" if table is daemon else "kept_out"] = part
print(json.dumps(out))
"""

LOADGEN = """\
import json, selectors, socket, sys, time

host, port, path, body_file, conns, duration, warmup = sys.argv[1:8]
port, conns, duration, warmup = int(port), int(conns), float(duration), float(warmup)
body = open(body_file, "rb").read()
request = (
    f"POST {path} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\nContent-Type: application/json\\r\\n"
    f"Content-Length: {len(body)}\\r\\n\\r\\n"
).encode() + body
sel = selectors.DefaultSelector()
states = []
for _ in range(conns):
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    st = [s, bytearray(), 0.0]
    states.append(st)
    sel.register(s, selectors.EVENT_READ, st)
latencies, codes = [], {}
t_measure = time.perf_counter() + warmup
t_end = t_measure + duration
for st in states:
    st[2] = time.perf_counter()
    st[0].sendall(request)
while time.perf_counter() < t_end:
    for key, _ in sel.select(timeout=1.0):
        st = key.data
        data = st[0].recv(65536)
        if not data:
            raise SystemExit("server closed a keep-alive connection")
        buf = st[1]
        buf += data
        while True:
            end = buf.find(b"\\r\\n\\r\\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            i = head.find(b"content-length:")
            j = head.find(b"\\r\\n", i)
            length = int(head[i + 15 : j if j >= 0 else len(head)])
            if len(buf) < end + 4 + length:
                break
            code = int(head[9:12])
            del buf[: end + 4 + length]
            now = time.perf_counter()
            if now >= t_measure:
                latencies.append(now - st[2])
                codes[code] = codes.get(code, 0) + 1
            st[2] = now
            st[0].sendall(request)
elapsed = time.perf_counter() - t_measure
latencies.sort()
print(json.dumps({
    "rps": len(latencies) / elapsed,
    "p50_ms": latencies[len(latencies) // 2] * 1000,
    "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    "n": len(latencies),
    "codes": codes,
}))
"""


def load(
    port: int, body_file: Path, connections: int, duration: float, work: Path
) -> dict[str, Any]:
    script = work / "loadgen.py"
    if not script.exists():
        script.write_text(LOADGEN)
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            "127.0.0.1",
            str(port),
            "/v2/models/digits/infer",
            str(body_file),
            str(connections),
            str(duration),
            "1.0",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    bad = {c: n for c, n in result["codes"].items() if c != "200"}
    if bad:
        raise RuntimeError(f"non-200 answers during the load test: {bad}")
    return result


def start_measured(
    cmd: list[str], port: int, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], float]:
    """Spawn a server and return it with the seconds from spawn to ready."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, time.perf_counter() - t0


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


# --- 5. the endpoint under attack -----------------------------------------------------------
ATTACK_TOKEN = "bench-attack-token-0123456789"


def _probe(port: int, until: Any, minimum: int = 20) -> dict[str, Any]:
    """Single-row requests with the token, one after another, while ``until()`` is False."""
    latencies: list[float] = []
    codes: dict[str, int] = {}
    while len(latencies) < minimum or not until():
        t0 = time.perf_counter()
        try:
            code = str(attack_client.served(port, ATTACK_TOKEN))
        except OSError as e:
            code = type(e).__name__
        latencies.append(time.perf_counter() - t0)
        codes[code] = codes.get(code, 0) + 1
        if len(latencies) >= 5000:
            break
    latencies.sort()
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "n": len(latencies),
        "codes": codes,
    }


def _under(port: int, attack: Any) -> dict[str, Any]:
    """Probe while ``attack()`` runs on a thread; the attack's own seconds next to it."""
    import threading

    outcome: dict[str, Any] = {}

    def run() -> None:
        t0 = time.perf_counter()
        outcome["result"] = attack()
        outcome["attack_s"] = time.perf_counter() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    figures = _probe(port, lambda: not thread.is_alive())
    thread.join(300)
    figures["attack_s"] = outcome.get("attack_s")
    if isinstance(outcome.get("result"), dict):
        figures.update(outcome["result"])
    return figures


def _batches(port: int, body: bytes) -> dict[str, Any]:
    times: list[float] = []
    codes: dict[str, int] = {}

    def send() -> None:
        t0 = time.perf_counter()
        code = attack_client.post_expecting_continue(port, body, ATTACK_TOKEN)
        times.append(time.perf_counter() - t0)
        codes[str(code)] = codes.get(str(code), 0) + 1

    attack_client.run_together([send] * 4, timeout_s=300)
    return {"batch_codes": codes, "batch_s": sorted(round(t, 3) for t in times)}


def bench_attacks(work: Path, signer: Any, env: dict[str, str]) -> dict[str, Any]:
    from edgefleet.core.profiles import load_profile

    zero = load_profile("rpi-zero-2w")
    base = load_profile("x86_64-gateway")
    text = base.source.read_text().split("[agent]")[0]
    text = re.sub(
        r"max_bundle_bytes = [0-9_]+", f"max_bundle_bytes = {zero.max_bundle_bytes}", text
    )
    text += f"\n[agent]\nagent_memory_budget_mb = {zero.agent_memory_budget_mb}\n"
    profiles = work / "attack-profiles"
    profiles.mkdir()
    (profiles / "x86_64-gateway.toml").write_text(text)
    bundle = write_signed_bundle(
        work / "iris.efb", "iris", signer, name="iris", version=1, profile="x86_64-gateway"
    ).path
    port = free_port()
    config = work / "attack-agent.toml"
    toml = AGENT_TOML.format(
        state=work / "attack-state", profile="x86_64-gateway", trust=signer.trust_path, port=port
    )
    toml = toml.replace("[agent]\n", f'[agent]\nprofiles_dir = "{profiles}"\n', 1)
    toml = toml.replace("[endpoint]\n", f'[endpoint]\ntoken = "{ATTACK_TOKEN}"\n', 1)
    config.write_text(toml)
    cli = [sys.executable, "-m", "edgefleet.core.cli.main", "agent"]
    subprocess.run(
        [*cli, "install", str(bundle), "--config", str(config), "--wait", "final"],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    proc = subprocess.Popen(
        [*cli, "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        start = time.perf_counter()
        while attack_client_ready(port) is False:
            if proc.poll() is not None or time.perf_counter() - start > 60:
                raise RuntimeError("the attacked daemon did not start")
            time.sleep(0.05)
        result: dict[str, Any] = {
            "profile_memory": f"{zero.name}: agent_memory_budget_mb "
            f"{zero.agent_memory_budget_mb}, max_bundle_bytes {zero.max_bundle_bytes}",
            "budget_mb": zero.agent_memory_budget_mb,
            "baseline": _probe(port, lambda: True, minimum=200),
            "unauthenticated_4mib_bodies_x256": _under(
                port, lambda: attack_client.unauthenticated_bodies(port)
            ),
        }
        idle: list[socket.socket] = []
        result["idle_connections_x300"] = _under(
            port, lambda: idle.extend(attack_client.connect(port) for _ in range(300))
        )
        result["idle_connections_x300_held"] = _probe(port, lambda: True, minimum=200)
        for sock in idle:
            sock.close()
        huge = attack_client.infer_body(520_000)
        result["rows_520000_x4"] = _under(port, lambda: _batches(port, huge))
        rows = attack_client.largest_admitted_rows(port, ATTACK_TOKEN)
        largest = attack_client.infer_body(rows)
        result["largest_admitted_x4"] = _under(port, lambda: _batches(port, largest))
        result["largest_admitted_rows"] = rows
        result["peak_rss_mb"] = attack_client.peak_rss_mb(proc.pid)
        result["within_budget"] = result["peak_rss_mb"] <= zero.agent_memory_budget_mb
        return result
    finally:
        stop(proc)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def attack_client_ready(port: int) -> bool:
    try:
        return attack_client.served(port, ATTACK_TOKEN) == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--profile", default="rpi4-arm64" if platform.machine() == "aarch64" else "x86_64-gateway"
    )
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--attacks-only", action="store_true", help="only the endpoint-under-attack figures"
    )
    args = parser.parse_args()
    if args.attacks_only:
        with tempfile.TemporaryDirectory(prefix="edgefleet-bench-attacks-") as tmp:
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            }
            signer = make_signer(Path(tmp) / "keys")
            attacks = bench_attacks(Path(tmp), signer, env)
        print(json.dumps({"attacks": _rounded(attacks)}))
        return
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    from edgefleet.agent.model.runtime import select_providers
    from edgefleet.core.profiles import load_profile

    profile = load_profile(args.profile)
    duration = 2.0 if args.quick else 4.0
    rounds = 2 if args.quick else 3
    iterations = 6000 if args.quick else 30000
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-agent-") as tmp:
        work = Path(tmp)
        signer = make_signer(work / "keys")
        assert signer.trust_path is not None
        model = trained_model("digits_mlp")
        bundle = write_signed_bundle(
            work / "digits.efb",
            "digits_mlp",
            signer,
            name="digits",
            version=1,
            profile=args.profile,
            arch=profile.arch,
        ).path
        onnx_file = work / "model.onnx"
        onnx_file.write_bytes(model.onnx_bytes)
        body_file = work / "request.json"
        row = model.X_test[0].tolist()
        body_file.write_text(
            json.dumps(
                {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": row}]}
            )
        )
        for name, text in (
            ("fastapi_app.py", FASTAPI_APP),
            ("lean_server.py", LEAN_SERVER),
            ("bare.py", BARE_HOLDER),
            ("imports.py", IMPORT_BREAKDOWN),
        ):
            (work / name).write_text(text)

        result: dict[str, Any] = {}
        result.update(bench_predict(bundle, signer.trust, profile, iterations))

        # The daemon, with the bundle installed through the real command.
        agent_port, lean_port, fastapi_port = free_port(), free_port(), free_port()
        config = work / "agent.toml"
        config.write_text(
            AGENT_TOML.format(
                state=work / "state", profile=args.profile, trust=signer.trust_path, port=agent_port
            )
        )
        cli = [sys.executable, "-m", "edgefleet.core.cli.main", "agent"]
        subprocess.run(
            [*cli, "install", str(bundle), "--config", str(config), "--wait", "final"],
            check=True,
            capture_output=True,
            env=env,
            timeout=300,
        )
        daemon_cmd = [*cli, "run", "--config", str(config)]
        lean_cmd = [
            sys.executable,
            str(work / "lean_server.py"),
            str(bundle),
            str(signer.trust_path),
            args.profile,
            str(lean_port),
            str(work),
        ]
        fastapi_cmd = [
            sys.executable,
            str(work / "fastapi_app.py"),
            str(onnx_file),
            args.profile,
            str(fastapi_port),
        ]
        startups: dict[str, list[float]] = {"daemon": [], "lean": [], "fastapi": []}
        for _ in range(3):
            for key, cmd, port in (
                ("daemon", daemon_cmd, agent_port),
                ("lean", lean_cmd, lean_port),
                ("fastapi", fastapi_cmd, fastapi_port),
            ):
                proc, seconds = start_measured(cmd, port, env)
                startups[key].append(seconds)
                stop(proc)

        servers = {
            "daemon": (daemon_cmd, agent_port),
            "lean": (lean_cmd, lean_port),
            "fastapi": (fastapi_cmd, fastapi_port),
        }
        procs = {key: start_measured(cmd, port, env)[0] for key, (cmd, port) in servers.items()}
        time.sleep(1.0)
        rss_ready = {key: rss_mb(proc.pid) for key, proc in procs.items()}
        try:
            runs: dict[str, list[dict[str, Any]]] = {key: [] for key in servers}
            for _ in range(rounds):
                for key, (_, port) in servers.items():
                    runs[key].append(load(port, body_file, args.connections, duration, work))
            rss = {key: rss_mb(proc.pid) for key, proc in procs.items()}
        finally:
            for proc in procs.values():
                stop(proc)

        bare = subprocess.Popen(
            [
                sys.executable,
                str(work / "bare.py"),
                str(onnx_file),
                args.profile,
                str(profile.intra_op_threads),
                str(profile.inter_op_threads),
                ",".join(select_providers(profile.execution_providers)),
            ],
            env=env,
            stdout=subprocess.PIPE,
        )
        try:
            assert bare.stdout is not None
            bare.stdout.readline()
            bare_rss = rss_mb(bare.pid)
        finally:
            bare.kill()
            bare.wait()
        breakdown = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    str(work / "imports.py"),
                    str(onnx_file),
                    str(profile.intra_op_threads),
                    str(profile.inter_op_threads),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )

        attacks = bench_attacks(work, signer, env)

    mine, lean, base = (median_round(runs[k]) for k in ("daemon", "lean", "fastapi"))
    result.update(
        {
            "http_rps": mine["rps"],
            "http_p50_ms": mine["p50_ms"],
            "http_p99_ms": mine["p99_ms"],
            "fastapi_rps": base["rps"],
            "fastapi_p50_ms": base["p50_ms"],
            "fastapi_p99_ms": base["p99_ms"],
            "http_rps_ratio": mine["rps"] / base["rps"],
            "rss_mb": rss["daemon"],
            "bare_rss_mb": bare_rss,
            "rss_ratio": rss["daemon"] / bare_rss,
            "rss_ready_mb": rss_ready["daemon"],
            "startup_s": statistics.median(startups["daemon"]),
            # The endpoint alone (verified load, EndpointServer, no telemetry, no CLI):
            "endpoint_only_rps": lean["rps"],
            "endpoint_only_p99_ms": lean["p99_ms"],
            "endpoint_only_rps_ratio": lean["rps"] / base["rps"],
            "endpoint_only_rss_mb": rss["lean"],
            "endpoint_only_rss_ratio": rss["lean"] / bare_rss,
            "endpoint_only_startup_s": statistics.median(startups["lean"]),
            "fastapi_rss_mb": rss["fastapi"],
            "fastapi_startup_s": statistics.median(startups["fastapi"]),
            "rounds_rps": {k: [round(r["rps"]) for r in v] for k, v in runs.items()},
            "startup_runs_s": {k: [round(x, 3) for x in v] for k, v in startups.items()},
            "rss_import_breakdown_mb": breakdown["daemon"],
            "rss_kept_out_mb": breakdown["kept_out"],
        }
    )
    import onnxruntime
    import uvicorn

    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    result["attacks"] = _rounded(attacks)
    result["setup"] = {
        "model": "digits MLP (256, 128), skl2onnx, float32",
        "profile": args.profile,
        "intra_op_threads": profile.intra_op_threads,
        "inter_op_threads": profile.inter_op_threads,
        "connections": args.connections,
        "duration_s": duration,
        "rounds": rounds,
        "predict_iterations": iterations,
        "onnxruntime": onnxruntime.__version__,
        "uvicorn": uvicorn.__version__,
        "uvicorn_http": "httptools" if _has("httptools") else "h11",
        "uvicorn_loop": "uvloop" if _has("uvloop") else "asyncio",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "load_average_at_start": load_at_start,
        "daemon_command": "edgefleet agent run --config agent.toml (as the systemd unit runs it; "
        "it execs python -m edgefleet.agent.daemon agent run --config agent.toml)",
        "allocator_or_interpreter_tuning": "none (no MALLOC_* or PYTHON* settings, no -O)",
    }
    result["targets"] = TARGETS
    result["pass"] = {
        "predict_ratio": result["predict_ratio_p50"] <= TARGETS["predict_ratio"]
        and result["predict_ratio_p99"] <= TARGETS["predict_ratio"],
        "http_rps_ratio": result["http_rps_ratio"] >= TARGETS["http_rps_ratio"],
        "rss_ratio": result["rss_ratio"] <= TARGETS["rss_ratio"],
        "startup_s": result["startup_s"] <= TARGETS["startup_s"],
    }
    print(json.dumps(result))


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()

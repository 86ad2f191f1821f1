"""The endpoint under attack from the local network, against a real ``agent run`` process.

The daemon runs with the Raspberry Pi Zero 2 W's memory figures (its
``agent_memory_budget_mb`` and ``max_bundle_bytes``) and a bearer token. Each
attack is bounded in count and time; after each one the daemon's peak resident
memory (``VmHWM`` in ``/proc/PID/status``) must still be within the budget and
a client with the token must still get 200. Latencies under attack are in
``bench/agent.py``, not here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.agent.state_env import PROFILE_NAME, AgentEnv, kill, make_env, stop

from edgefleet.core.profiles import load_profile

pytestmark = pytest.mark.slow

ZERO = load_profile("rpi-zero-2w")
TOKEN = "attack-test-token-0123456789"
MIB = 1024 * 1024
ROW = [5.1, 3.5, 1.4, 0.2]


def zero_like_profile() -> str:
    """The test gateway profile with the Pi Zero's memory budget and bundle size."""
    return f"""\
name = "{PROFILE_NAME}"
description = "x86_64 test machine with the memory figures of {ZERO.name}"

[hardware]
arch = "x86_64"
cores = 2
memory_mb = {ZERO.memory_mb}
storage_budget_mb = 64

[onnxruntime]
min_onnxruntime = "1.17"
execution_providers = ["CPUExecutionProvider"]
intra_op_threads = 1
inter_op_threads = 1

[model]
quantization = "none"
int8_format = "U8S8"
max_bundle_bytes = {ZERO.max_bundle_bytes}

[telemetry]
telemetry_budget_bytes = 1048576
window_s = 60

[agent]
agent_memory_budget_mb = {ZERO.agent_memory_budget_mb}
"""


class Daemon:
    def __init__(self, env: AgentEnv, proc: subprocess.Popen[str], url: str) -> None:
        self.env = env
        self.proc = proc
        self.port = int(url.rsplit(":", 1)[1])

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def connect(self, timeout: float = 30.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


def request(
    sock: socket.socket, method: str, path: str, body: bytes = b"", token: str | None = TOKEN
) -> tuple[int, bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Length: {len(body)}\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        rest += chunk
    return int(head.split(b" ")[1]), rest[:length]


def infer_body(rows: int) -> bytes:
    data = ",".join(["1"] * (rows * len(ROW)))
    shape = f"[{rows},{len(ROW)}]"
    return (
        f'{{"inputs":[{{"name":"X","shape":{shape},"datatype":"FP32","data":[{data}]}}]}}'.encode()
    )


def served_with_token(daemon: Daemon) -> int:
    """One ordinary authenticated request on a fresh connection: its status."""
    body = json.dumps(
        {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    ).encode()
    with daemon.connect() as sock:
        status, _ = request(sock, "POST", "/v2/models/iris/infer", body)
    return status


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    env = make_env(tmp_path_factory.mktemp("attacks"))
    (env.root / "profiles" / f"{PROFILE_NAME}.toml").write_text(zero_like_profile())
    config = env.config_path.read_text().replace("[endpoint]\n", f'[endpoint]\ntoken = "{TOKEN}"\n')
    env.config_path.write_text(config)
    installed = env.cli("install", str(env.bundle(1)))
    assert installed.returncode == 0, installed.stderr
    proc = env.start_daemon()
    try:
        url = env.endpoint_url(proc)
        running = Daemon(env, proc, url)
        assert served_with_token(running) == 200
        yield running
    finally:
        try:
            assert stop(proc) == 0, env.log_tail()
        finally:
            kill(proc)


def within_budget(daemon: Daemon) -> None:
    peak = daemon.peak_rss_mb()
    print(f"peak RSS {peak:.1f} MB")
    assert peak <= ZERO.agent_memory_budget_mb, (
        f"peak RSS {peak:.0f} MB above the budget of {ZERO.agent_memory_budget_mb} MB"
    )


def test_unauthenticated_bodies_are_never_buffered(daemon: Daemon) -> None:
    body = b"x" * (4 * MIB)
    head = (
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: agent\r\n"
        b"Content-Length: %d\r\nAuthorization: Bearer wrong-token-0123456789\r\n\r\n" % len(body)
    )

    def attack() -> None:
        try:
            with daemon.connect(timeout=20) as sock:
                sock.sendall(head + body)
                sock.recv(1024)
        except OSError:
            pass  # refused and closed before the body went out: the point of it

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(256)]
    for thread in attackers:
        thread.start()
    # Meanwhile: a client without a token sending its head first is told 401 at once,
    # and a client with the token is served.
    with daemon.connect() as sock:
        sock.sendall(head)
        status, _ = read_response(sock)
        assert status == 401
        assert sock.recv(1) == b""  # closed without waiting for the body
    assert served_with_token(daemon) == 200
    for thread in attackers:
        thread.join(60)
    assert not any(t.is_alive() for t in attackers)
    assert served_with_token(daemon) == 200
    within_budget(daemon)


def test_idle_connections_do_not_lock_clients_out(daemon: Daemon) -> None:
    idle = [daemon.connect() for _ in range(300)]
    try:
        assert served_with_token(daemon) == 200
        assert served_with_token(daemon) == 200
    finally:
        for sock in idle:
            sock.close()
    within_budget(daemon)


def post_expecting_continue(daemon: Daemon, body: bytes) -> int:
    """POST as curl does for big bodies: the head first, the body once told to go on."""
    with daemon.connect(timeout=120) as sock:
        sock.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: agent\r\nContent-Length: %d\r\n"
            b"Authorization: Bearer %s\r\nExpect: 100-continue\r\n\r\n"
            % (len(body), TOKEN.encode())
        )
        status, _ = read_response(sock)
        if status != 100:
            return status
        sock.sendall(body)
        return read_response(sock)[0]


def test_big_batches_stay_within_the_memory_budget(daemon: Daemon) -> None:
    results: list[int] = []

    def send_all(body: bytes) -> None:
        results.clear()
        threads = [
            threading.Thread(
                target=lambda: results.append(post_expecting_continue(daemon, body)), daemon=True
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        assert served_with_token(daemon) == 200
        for thread in threads:
            thread.join(120)

    # Four of the 4 MB, 520,000-row requests that used to take 751 MB ...
    send_all(infer_body(520_000))
    within_budget(daemon)
    assert results == [413] * 4
    # ... and four of the largest batches this budget admits, sent at once: they
    # take turns in the tensor budget instead of decoding side by side.
    send_all(infer_body(largest_admitted_rows(daemon)))
    assert results == [200] * 4
    within_budget(daemon)


def largest_admitted_rows(daemon: Daemon) -> int:
    """The largest iris batch of one-digit values the endpoint takes (found by bisection)."""
    low, high = 1, 520_000
    while high - low > 1000:
        mid = (low + high) // 2
        with daemon.connect() as sock:
            head = (
                "POST /v2/models/iris/infer HTTP/1.1\r\nHost: agent\r\n"
                f"Content-Length: {len(infer_body(mid))}\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Expect: 100-continue\r\n\r\n"
            )
            sock.sendall(head.encode())
            status, _ = read_response(sock)
        if status == 100:
            low = mid
        else:
            assert status == 413
            high = mid
    return low

"""Raw HTTP clients that attack the agent endpoint, shared by its tests and ``bench/agent.py``.

Everything talks to ``127.0.0.1:port`` over plain sockets, so a request is
exactly the bytes an attacker would send: heads without the token followed by
big bodies, sockets that never send anything, huge batches sent as curl does
(``Expect: 100-continue``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

ROW = [5.1, 3.5, 1.4, 0.2]
MIB = 1024 * 1024


def connect(port: int, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


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


def infer_body(rows: int, features: int = len(ROW)) -> bytes:
    """An iris batch of one-digit values: the most rows per byte of JSON."""
    data = ",".join(["1"] * (rows * features))
    shape = f"[{rows},{features}]"
    return (
        f'{{"inputs":[{{"name":"X","shape":{shape},"datatype":"FP32","data":[{data}]}}]}}'.encode()
    )


def post_head(
    length: int, token: str | None, *, expect_continue: bool = False, model: str = "iris"
) -> bytes:
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: agent\r\nContent-Length: {length}\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if expect_continue:
        head += "Expect: 100-continue\r\n"
    return head.encode() + b"\r\n"


def served(port: int, token: str | None) -> int:
    """One ordinary single-row request on a fresh connection: its status."""
    body = json.dumps(
        {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    ).encode()
    with connect(port) as sock:
        sock.sendall(post_head(len(body), token) + body)
        return read_response(sock)[0]


def post_expecting_continue(port: int, body: bytes, token: str | None) -> int:
    """POST as curl does for big bodies: the head first, the body once told to go on."""
    with connect(port, timeout=120) as sock:
        sock.sendall(post_head(len(body), token, expect_continue=True))
        status, _ = read_response(sock)
        if status != 100:
            return status
        sock.sendall(body)
        return read_response(sock)[0]


def largest_admitted_rows(port: int, token: str | None, high: int = 520_000) -> int:
    """The largest batch of :func:`infer_body` the endpoint admits (bisection on 100 Continue)."""
    low = 1
    while high - low > 1000:
        mid = (low + high) // 2
        with connect(port) as sock:
            sock.sendall(post_head(len(infer_body(mid)), token, expect_continue=True))
            status, _ = read_response(sock)
        if status == 100:
            low = mid
        else:
            assert status == 413, status
            high = mid
    return low


def unauthenticated_bodies(port: int, count: int = 256, body_bytes: int = 4 * MIB) -> None:
    """``count`` connections at once, each sending a head with a wrong token and the body."""
    body = b"x" * body_bytes
    head = post_head(len(body), "wrong-token-0123456789")

    def attack() -> None:
        try:
            with connect(port, timeout=20) as sock:
                sock.sendall(head + body)
                sock.recv(1024)
        except OSError:
            pass  # refused and closed before the body went out: the point of it

    run_together([attack] * count, timeout_s=60)


def run_together(jobs: list[Callable[[], object]], timeout_s: float) -> None:
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"attack clients still running after {timeout_s} s")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")

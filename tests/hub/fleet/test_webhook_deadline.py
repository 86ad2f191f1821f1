"""Each webhook call ends within its total time bound, however slowly the receiver
answers (a receiver trickling one byte every 0.4 s once held the alert thread for as long
as it liked: every single read finished within the per-read timeout)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from tests.hub.fleet.test_sinks_and_metrics import FAST, event
from tests.support.waiting import wait_until

from edgefleet.hub.fleet.alert_sinks import WebhookSink

TRICKLE = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000


@pytest.fixture
def trickler() -> Iterator[str]:
    """An HTTP 'server' that reads the request and answers one byte every 0.4 s."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                for byte in TRICKLE:
                    if stop.wait(0.4):
                        return
                    try:
                        conn.sendall(bytes((byte,)))
                    except OSError:
                        break  # the client gave up: good

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    thread.join(5)
    server.close()


def test_a_trickling_receiver_cannot_hold_the_alert_thread(trickler: str) -> None:
    sink = WebhookSink(
        trickler, timeout_s=1.0, call_timeout_s=2.0, max_attempts=1, backoff=FAST
    ).start()
    try:
        started = time.monotonic()
        sink.send(event())
        # Well past the 2 s bound but far shorter than the trickle (about 11 hours).
        wait_until(lambda: f"the call to give up: {sink.stats}", lambda: sink.stats.failed == 1)
        assert sink.stats.delivered == 0
        print(f"gave up after {time.monotonic() - started:.1f} s")
    finally:
        sink.stop()


def test_the_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        WebhookSink("http://127.0.0.1/x", timeout_s=5.0, call_timeout_s=1.0)
    with pytest.raises(ValueError):
        WebhookSink("http://127.0.0.1/x", call_timeout_s=float("inf"))
    with pytest.raises(ValueError):
        WebhookSink("http://127.0.0.1/x", timeout_s=float("nan"))

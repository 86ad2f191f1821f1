"""The endpoint's limits: token before body, connection pools, header timeout, tensor budget.

The budget arithmetic is tested as pure functions; the rest over real sockets
against an in-process :class:`EndpointServer` (the attacks against a real
``agent run`` process are in ``test_endpoint_attacks.py``).
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest
from tests.agent.test_endpoint import TOKEN, RawClient, infer_body
from tests.support.bundles import make_signer, trained_model, write_model_dir
from tests.support.waiting import wait_until

from edgefleet.agent.endpoint import EndpointConfig, EndpointServer
from edgefleet.agent.endpoint.app import EndpointApp
from edgefleet.agent.endpoint.budget import (
    MIB,
    EndpointLimits,
    TensorBudget,
    json_request_charge,
    row_tensor_bytes,
)
from edgefleet.agent.endpoint.http11 import Head, Request
from edgefleet.agent.endpoint.metrics import EndpointMetrics
from edgefleet.agent.model.runtime import LoadedModel, load_bundle
from edgefleet.agent.model.serving import ServingSet
from edgefleet.agent.telemetry_sink import RecordingTelemetrySink
from edgefleet.core.errors import ProfileError
from edgefleet.core.profiles import DeviceProfile, list_profiles, load_profile

PROFILE = load_profile("x86_64-gateway")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("iris")
    signer = make_signer(root / "keys")
    return load_bundle(
        write_model_dir(root / "iris", "iris", signer, version=1), signer.trust, PROFILE
    )


# --- the arithmetic ----------------------------------------------------------------------


@pytest.mark.parametrize("profile", list_profiles(), ids=lambda p: p.name)
def test_every_shipped_profile_derives_usable_limits(profile: DeviceProfile) -> None:
    limits = EndpointLimits.derive(
        profile.agent_memory_budget_mb, profile.max_bundle_bytes, 4 * MIB
    )
    assert 64 * 1024 <= limits.max_body_bytes <= 4 * MIB
    assert limits.max_batch_rows >= 10_000
    assert limits.per_request <= limits.inflight


def test_pi_zero_figures() -> None:
    zero = load_profile("rpi-zero-2w")
    assert (zero.memory_mb, zero.agent_memory_budget_mb) == (512, 192)
    limits = EndpointLimits.derive(zero.agent_memory_budget_mb, zero.max_bundle_bytes, 4 * MIB)
    # 192 MiB - (80 MiB + 2 x 16 MiB) = 80 MiB of request memory, 12 bytes per tensor byte.
    assert limits.inflight == limits.per_request == 80 * MIB // 12
    assert limits.max_body_bytes == 80 * MIB // 12 // 4
    assert limits.max_batch_rows == 80 * MIB // 12 // 28


def test_profile_without_the_field_gets_a_quarter_of_its_memory(tmp_path: Path) -> None:
    zero = load_profile("rpi-zero-2w")
    text = zero.source.read_text().split("[agent]")[0]
    path = tmp_path / "rpi-zero-2w.toml"
    path.write_text(text)
    assert load_profile(str(path)).agent_memory_budget_mb == 128


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "'agent_memory_budget_mb' must be a positive integer"),
        ("true", "'agent_memory_budget_mb' must be a positive integer"),
        ("513", "'agent_memory_budget_mb' (513) must not exceed 'memory_mb' (512)"),
    ],
)
def test_bad_memory_budgets_are_refused(tmp_path: Path, value: str, message: str) -> None:
    zero = load_profile("rpi-zero-2w")
    text = zero.source.read_text().replace(
        "agent_memory_budget_mb = 192", f"agent_memory_budget_mb = {value}"
    )
    path = tmp_path / "rpi-zero-2w.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=re.escape(message)):
        load_profile(str(path))


def test_json_charge_grows_with_the_body_and_rows_are_capped() -> None:
    row = row_tensor_bytes([(1, 8), (3, 4)])
    assert row == 16 + 8 + 12
    small = json_request_charge(1000, n_features=4, row_bytes=row, max_batch_rows=10**6)
    big = json_request_charge(10_000, n_features=4, row_bytes=row, max_batch_rows=10**6)
    capped = json_request_charge(10_000, n_features=4, row_bytes=row, max_batch_rows=10)
    assert small < big and capped == 4 * 10_000 + 10 * row
    assert json_request_charge(0, n_features=4, row_bytes=row, max_batch_rows=10) == 0


def test_tensor_budget_never_overcommits() -> None:
    budget = TensorBudget(EndpointLimits(4096, 100, per_request=100, inflight=150))
    assert budget.try_acquire(100)
    assert not budget.try_acquire(60)  # would exceed the in-flight total: wait
    assert not budget.try_acquire(101)  # above one request's share: never
    assert not budget.fits_one_request(101)
    assert budget.try_acquire(50) and budget.in_use == 150 == budget.peak
    budget.release(100)
    assert budget.available == 100
    with pytest.raises(ValueError):
        budget.release(51)
    with pytest.raises(ValueError):
        EndpointLimits(4096, 100, per_request=200, inflight=100)


# --- over sockets ------------------------------------------------------------------------


def test_no_token_gets_401_before_its_body_is_sent(iris: LoadedModel) -> None:
    config = EndpointConfig(port=0, token=TOKEN)
    with EndpointServer(config, ServingSet({"iris": iris})) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(
                b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: t\r\n"
                b"Content-Length: 4000000\r\nAuthorization: Bearer not-the-token-at-all\r\n\r\n"
            )
            reply = b""
            while chunk := sock.recv(4096):  # the server closes: no body is awaited
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 401 ") and b"Connection: close" in reply
        c = RawClient(srv.port)
        assert c.request("GET", "/v2/health/live", headers=AUTH)[0] == 200
        c.close()


def test_idle_unauthenticated_connections_make_room_for_a_client(iris: LoadedModel) -> None:
    config = EndpointConfig(port=0, token=TOKEN, max_unauth_connections=4, max_connections=2)
    with EndpointServer(config, ServingSet({"iris": iris})) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(10)]
        wait_until("ten connections", lambda: srv.metrics.connections_total == 10)
        client = RawClient(srv.port)
        assert client.request("GET", "/v2/health/live", headers=AUTH)[0] == 200
        assert srv.metrics.connections_evicted >= 7
        assert srv.metrics.connections_refused == 0
        # The authenticated client keeps its place whatever arrives after it.
        more = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(10)]
        assert client.request("GET", "/v2/health/live", headers=AUTH)[0] == 200
        assert client.connects == 1
        for sock in idle + more:
            sock.close()
        client.close()


def test_a_client_in_a_burst_of_idle_connections_is_not_evicted(iris: LoadedModel) -> None:
    config = EndpointConfig(port=0, token=TOKEN, max_unauth_connections=4)
    with EndpointServer(config, ServingSet({"iris": iris})) as srv:
        srv.call_soon_threadsafe(lambda: time.sleep(0.3))  # the burst queues up meanwhile
        before = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(3)]
        client = RawClient(srv.port)
        client.send(
            b"GET /v2/health/live HTTP/1.1\r\nAuthorization: Bearer %s\r\n\r\n" % TOKEN.encode()
        )
        after = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(20)]
        assert client.read_response()[0] == 200
        assert srv.metrics.connections_evicted >= 19
        for sock in before + after:
            sock.close()
        client.close()


def test_a_head_must_arrive_within_header_timeout(iris: LoadedModel) -> None:
    config = EndpointConfig(port=0, header_timeout_s=0.5, keepalive_timeout_s=30)
    with EndpointServer(config, ServingSet({"iris": iris})) as srv:
        silent = RawClient(srv.port)
        silent.connect()
        assert silent.is_closed_by_peer()  # nothing sent: closed after header_timeout_s
        slow = RawClient(srv.port)
        slow.send(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n")
        assert slow.read_response()[0] == 408
        # A client past its first request idles on keep-alive as long as it likes ...
        kept = RawClient(srv.port)
        assert kept.request("GET", "/v2/health/live")[0] == 200
        time.sleep(1.6)
        assert kept.request("GET", "/v2/health/live")[0] == 200
        # ... but its next head is held to the same clock.
        kept.send(b"GET /v2/health/live HTTP/1.1\r\n")
        assert kept.read_response()[0] == 408
        for c in (silent, slow, kept):
            c.close()


def test_requests_wait_for_room_in_the_tensor_budget(iris: LoadedModel) -> None:
    # The smallest budget: 16 MiB of request memory, 1.3 MiB of tensors in flight.
    config = EndpointConfig(port=0, memory_budget_mb=1, max_bundle_bytes=1024)
    x = trained_model("iris").X_test
    body = infer_body(x[:1].repeat(3000, axis=0))
    with EndpointServer(config, ServingSet({"iris": iris})) as srv:
        charge = srv.app.admit(_head(body))
        assert isinstance(charge, int) and 2 * charge > srv.limits.inflight >= charge
        first, second, health = RawClient(srv.port), RawClient(srv.port), RawClient(srv.port)
        head = b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
        first.send(head + body[:100])  # admitted and charged; its body is slow to come
        wait_until("the budget charged", lambda: srv.budget.in_use == charge)
        second.send(head + body)  # no room: waits, nothing of it is decoded
        assert second.sock is not None
        second.sock.shutdown(socket.SHUT_WR)  # a half-closed client still gets its answer
        wait_until("one budget wait", lambda: srv.metrics.budget_waits == 1)
        assert health.request("GET", "/v2/health/live")[0] == 200  # costs nothing: never waits
        # A small request passes the big one waiting: it holds its charge for a moment only.
        assert health.request("POST", "/v2/models/iris/infer", infer_body(x[:1]))[0] == 200
        assert srv.metrics.budget_waits == 1
        first.send(body[100:])
        assert first.read_response()[0] == 200
        status, _, answer = second.read_response()
        assert status == 200 and json.loads(answer)["outputs"][0]["shape"] == [3000]
        assert srv.budget.peak <= srv.limits.inflight
        wait_until("the budget released", lambda: srv.budget.in_use == 0)
        for c in (first, second, health):
            c.close()


def test_one_request_above_the_budget_is_413_before_its_body(iris: LoadedModel) -> None:
    config = EndpointConfig(port=0, memory_budget_mb=1, max_bundle_bytes=1024)
    with EndpointServer(config, ServingSet({"iris": iris})) as srv:
        limit = srv.limits.max_body_bytes
        body = infer_body(trained_model("iris").X_test[:1].repeat(limit // 60, axis=0))
        assert len(body) <= limit  # within the body limit, but too many rows to answer
        c = RawClient(srv.port)
        c.send(b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
        status, headers, answer = c.read_response()
        assert status == 413 and headers["connection"] == "close"
        assert "per-request budget" in json.loads(answer)["error"]
        c.close()


def test_batches_above_the_row_limit_are_refused(iris: LoadedModel) -> None:
    sink = RecordingTelemetrySink()
    limits = EndpointLimits(4 * MIB, max_batch_rows=10, per_request=64 * MIB, inflight=64 * MIB)
    app = EndpointApp(
        ServingSet({"iris": iris}),
        sink,
        EndpointMetrics(),
        token=None,
        agent_version="t",
        limits=limits,
    )
    x = trained_model("iris").X_test
    for rows, status in ((10, 200), (11, 413)):
        body = infer_body(x[:1].repeat(rows, axis=0))
        job = app.route(Request("POST", "/v2/models/iris/infer", True, {}, body, True))
        assert callable(job)
        outcome = job()
        assert outcome.status == status, outcome.body
        if outcome.after is not None:
            outcome.after()
    assert sink.error_kinds() == ["too_large"]


def _head(body: bytes) -> Head:
    return Head("POST", "/v2/models/iris/infer", True, {}, len(body), True)

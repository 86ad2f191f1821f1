"""The OIP v2 endpoint over real sockets: routes, keep-alive, limits, token, encodings."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.support.bundles import make_signer, trained_model, write_model_dir
from tests.support.waiting import wait_until

from edgefleet.agent.endpoint import EndpointConfig, EndpointServer
from edgefleet.agent.errors import AgentConfigError, AgentError, EndpointError
from edgefleet.agent.model.runtime import LoadedModel, load_bundle
from edgefleet.agent.model.serving import ServingSet
from edgefleet.agent.telemetry_sink import RecordingTelemetrySink
from edgefleet.core.errors import OperationalError
from edgefleet.core.profiles import load_profile

PROFILE = load_profile("x86_64-gateway")
TOKEN = "s3cret-token-0123456789"


class RawClient:
    """A minimal HTTP/1.1 client over one socket: sends raw bytes, reads whole responses."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.addr = (host, port)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.connects = 0

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection(self.addr, timeout=self.timeout)
        self.buf = b""
        self.connects += 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, data: bytes) -> None:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(data)

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        assert self.sock is not None
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a response")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a response body")
            rest += chunk
        body, self.buf = rest[:length], rest[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        self.send(head.encode() + b"\r\n" + body)
        return self.read_response()

    def is_closed_by_peer(self) -> bool:
        if self.sock is None:
            return True
        self.sock.settimeout(2.0)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False
        finally:
            self.sock.settimeout(self.timeout)


def infer_body(x: np.ndarray, name: str = "X", **extra: Any) -> bytes:
    doc = {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        **extra,
    }
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("models")
    signer = make_signer(root / "keys")
    loaded = {}
    for kind, version in (("iris", 3), ("wine_str", 1), ("diabetes", 2)):
        bundle = write_model_dir(root / kind, kind, signer, version=version)
        loaded[kind] = load_bundle(bundle, signer.trust, PROFILE)
    return loaded


@pytest.fixture(scope="module")
def sink() -> RecordingTelemetrySink:
    return RecordingTelemetrySink()


@pytest.fixture(scope="module")
def server(
    models: dict[str, LoadedModel], sink: RecordingTelemetrySink
) -> Iterator[EndpointServer]:
    config = EndpointConfig(port=0, max_body_bytes=256 * 1024, offload_body_bytes=32 * 1024)
    with EndpointServer(config, ServingSet(models), sink) as srv:
        yield srv


@pytest.fixture
def client(server: EndpointServer) -> Iterator[RawClient]:
    c = RawClient(server.port)
    yield c
    c.close()


def test_health_and_server_metadata(client: RawClient) -> None:
    assert client.request("GET", "/v2/health/live")[0] == 200
    status, headers, body = client.request("GET", "/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True}
    assert headers["content-type"] == "application/json" and "date" in headers
    status, _, body = client.request("GET", "/v2")
    doc = json.loads(body)
    assert status == 200 and doc["name"] == "edgefleet-agent" and "version" in doc
    assert client.connects == 1  # all over one keep-alive connection


def test_model_metadata_and_readiness(client: RawClient) -> None:
    status, _, body = client.request("GET", "/v2/models/iris")
    meta = json.loads(body)
    assert status == 200
    assert meta["name"] == "iris" and meta["versions"] == ["3"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities", "prediction_id"]
    assert client.request("GET", "/v2/models/iris/versions/3")[0] == 200
    assert json.loads(client.request("GET", "/v2/models/iris/ready")[2])["ready"] is True
    assert client.request("GET", "/v2/models/iris/versions/3/ready")[0] == 200
    status, _, body = client.request("GET", "/v2/models/iris/versions/2/ready")
    assert status == 404 and "version 2 is not served" in json.loads(body)["error"]
    status, _, body = client.request("GET", "/v2/models/nope")
    assert status == 404 and json.loads(body)["error"] == "model 'nope' is not served here"


def test_infer_matches_the_model(client: RawClient, models: dict[str, LoadedModel]) -> None:
    m = trained_model("iris")
    x = m.X_test[:5]
    status, _, body = client.request("POST", "/v2/models/iris/infer", infer_body(x, id="req-7"))
    assert status == 200, body
    doc = json.loads(body)
    assert doc["model_name"] == "iris" and doc["model_version"] == "3" and doc["id"] == "req-7"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [5]
    assert outputs["label"]["data"] == m.expected[:5].tolist()
    probs = np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(5, 3)
    assert m.expected_probabilities is not None
    np.testing.assert_array_equal(probs, m.expected_probabilities[:5])  # exact float32 round trip
    ids = outputs["prediction_id"]["data"]
    assert outputs["prediction_id"]["shape"] == [5] and len(set(ids)) == 5


def test_infer_versioned_nested_and_selected_outputs(client: RawClient) -> None:
    m = trained_model("iris")
    x = m.X_test[:2]
    doc = {
        "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP64", "data": x.tolist()}],
        "outputs": [{"name": "label", "parameters": {"binary_data": False}}],
        "parameters": {"priority": 0, "custom": "ignored"},
    }
    status, _, body = client.request(
        "POST", "/v2/models/iris/versions/3/infer", json.dumps(doc).encode()
    )
    assert status == 200, body
    outputs = json.loads(body)["outputs"]
    assert [o["name"] for o in outputs] == ["label"]
    assert outputs[0]["data"] == m.expected[:2].tolist()
    status, _, _ = client.request(
        "POST", "/v2/models/iris/versions/9/infer", json.dumps(doc).encode()
    )
    assert status == 404


def test_string_labels_and_regression(client: RawClient) -> None:
    w = trained_model("wine_str")
    status, _, body = client.request("POST", "/v2/models/wine_str/infer", infer_body(w.X_test[:3]))
    out = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert status == 200 and out["label"]["datatype"] == "BYTES"
    assert out["label"]["data"] == w.expected[:3].tolist()
    d = trained_model("diabetes")
    status, _, body = client.request("POST", "/v2/models/diabetes/infer", infer_body(d.X_test[:4]))
    out = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert status == 200 and out["variable"]["shape"] == [4, 1]
    np.testing.assert_allclose(out["variable"]["data"], d.expected[:4], rtol=1e-6)


@pytest.mark.parametrize(
    ("case", "doc", "kind", "fragment"),
    [
        (
            "features",
            {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            "features",
            "expects 4 features, got 3",
        ),
        (
            "wrong_name",
            {"inputs": [{"name": "Y", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            "name",
            "no input named 'Y'",
        ),
        (
            "count",
            {"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            "data",
            "has 4 values but shape [2, 4] needs 8",
        ),
        (
            "strings",
            {
                "inputs": [
                    {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ["1", "2", "3", "4"]}
                ]
            },
            "data",
            "needs numbers",
        ),
        (
            "bools",
            {
                "inputs": [
                    {
                        "name": "X",
                        "shape": [1, 4],
                        "datatype": "FP32",
                        "data": [True, False, True, True],
                    }
                ]
            },
            "data",
            "true/false",
        ),
        (
            "datatype",
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP128", "data": [1, 2, 3, 4]}]},
            "datatype",
            "'FP128' is not one of",
        ),
        (
            "bytes_for_float",
            {
                "inputs": [
                    {
                        "name": "X",
                        "shape": [1, 4],
                        "datatype": "BYTES",
                        "data": ["a", "b", "c", "d"],
                    }
                ]
            },
            "dtype",
            "expects float32",
        ),
        (
            "nan",
            {
                "inputs": [
                    {
                        "name": "X",
                        "shape": [1, 4],
                        "datatype": "FP32",
                        "data": [1, 2, float("nan"), 4],
                    }
                ]
            },
            "non_finite",
            "NaN or infinite",
        ),
        (
            "overflow",
            {
                "inputs": [
                    {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 1e300, 4]}
                ]
            },
            "non_finite",
            "NaN or infinite",
        ),
        (
            "rank",
            {
                "inputs": [
                    {"name": "X", "shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ]
            },
            "shape",
            "must have 2 dimensions",
        ),
        (
            "empty",
            {"inputs": [{"name": "X", "shape": [0, 4], "datatype": "FP32", "data": []}]},
            "empty",
            "has no rows",
        ),
        ("no_inputs", {"inputs": []}, "request", "'inputs' must be a non-empty list"),
        (
            "ragged",
            {
                "inputs": [
                    {"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [1]]}
                ]
            },
            "data",
            "rectangular",
        ),
        (
            "output",
            {
                "inputs": [
                    {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                ],
                "outputs": [{"name": "nope"}],
            },
            "name",
            "has no output 'nope'",
        ),
        (
            "negative_dim",
            {"inputs": [{"name": "X", "shape": [-1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            "request",
            "non-negative integers",
        ),
    ],
)
def test_schema_violations_are_400_and_reach_telemetry(
    client: RawClient, sink: RecordingTelemetrySink, case: str, doc: Any, kind: str, fragment: str
) -> None:
    before = len(sink.errors)
    status, _, body = client.request("POST", "/v2/models/iris/infer", json.dumps(doc).encode())
    assert status == 400, (case, body)
    message = json.loads(body)["error"]
    assert fragment in message, (case, message)
    wait_until("the error recorded", lambda: len(sink.errors) > before)
    assert sink.errors[before:] == [("iris", 3, kind)], case


def test_non_json_bodies(client: RawClient, sink: RecordingTelemetrySink) -> None:
    for body in (b"", b"not json", b"[1, 2", b"\xff\xfe\x00garbage", b"[]", b"42", b"[" * 100_000):
        status, _, reply = client.request("POST", "/v2/models/iris/infer", body)
        assert status == 400 and "error" in json.loads(reply), body[:20]
    wait_until("the json error recorded", lambda: sink.error_kinds()[-1:] == ["json"])
    assert sink.error_kinds()[-7:] == ["json", "json", "json", "json", "request", "request", "json"]


def test_inference_reaches_telemetry(client: RawClient, sink: RecordingTelemetrySink) -> None:
    x = trained_model("iris").X_test[:3]
    before = len(sink.inferences)
    client.request("POST", "/v2/models/iris/infer", infer_body(x))
    wait_until("the inference recorded", lambda: len(sink.inferences) > before)
    record = sink.inferences[-1]
    assert record.model == "iris" and record.version == 3
    np.testing.assert_array_equal(record.X, x)
    assert record.predictions.shape == (3,) and len(record.prediction_ids) == 3
    assert record.latency_ms > 0


def test_feedback_round_trip(client: RawClient, sink: RecordingTelemetrySink) -> None:
    x = trained_model("iris").X_test[:2]
    _, _, body = client.request("POST", "/v2/models/iris/infer", infer_body(x))
    ids = next(o for o in json.loads(body)["outputs"] if o["name"] == "prediction_id")["data"]
    one = json.dumps({"prediction_id": ids[0], "label": 1}).encode()
    status, _, reply = client.request("POST", "/v2/models/iris/feedback", one)
    assert status == 200 and json.loads(reply) == {"accepted": 1, "unknown": []}
    many = {
        "feedback": [{"prediction_id": ids[1], "label": 2}, {"prediction_id": "zzz", "label": 0}]
    }
    status, _, reply = client.request("POST", "/v2/models/iris/feedback", json.dumps(many).encode())
    assert status == 200 and json.loads(reply) == {"accepted": 1, "unknown": ["zzz"]}
    assert sink.feedback[-2:] == [("iris", ids[0], 1), ("iris", ids[1], 2)]
    bad = json.dumps({"prediction_id": ids[0], "label": 7}).encode()
    status, _, reply = client.request("POST", "/v2/models/iris/feedback", bad)
    assert status == 400 and "not one of the model's labels" in json.loads(reply)["error"]


def test_big_answers_do_not_wait_for_their_telemetry_rows_and_feedback_waits_for_them(
    models: dict[str, LoadedModel],
) -> None:
    """An offloaded request is answered before its telemetry rows are computed; until they
    are, it keeps its budget charge, feedback for any id waits (the sink must know the ids
    first) and stop() waits too: nothing is lost."""
    sink = RecordingTelemetrySink()
    config = EndpointConfig(port=0, offload_body_bytes=1024)
    srv = EndpointServer(config, ServingSet(models), sink)
    gate = threading.Event()
    rows = srv.app._telemetry_rows.rows

    def slow_rows(*args: Any) -> Any:
        assert gate.wait(10)
        return rows(*args)

    srv.app._telemetry_rows.rows = slow_rows  # type: ignore[method-assign]
    srv.start()
    try:
        x = trained_model("iris").X_test[:30]
        body = infer_body(x)
        assert len(body) >= 1024
        answered, labels = RawClient(srv.port), RawClient(srv.port)
        status, _, reply = answered.request("POST", "/v2/models/iris/infer", body)
        assert status == 200 and not gate.is_set()  # answered, its rows not computed
        assert srv.budget.in_use > 0 and not sink.inferences
        ids = next(o for o in json.loads(reply)["outputs"] if o["name"] == "prediction_id")
        one = json.dumps({"prediction_id": ids["data"][0], "label": 1}).encode()
        labels.send(
            b"POST /v2/models/iris/feedback HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
            % (len(one), one)
        )
        wait_until("the feedback held", lambda: srv._held)
        gate.set()
        status, _, reply = labels.read_response()
        assert status == 200 and json.loads(reply) == {"accepted": 1, "unknown": []}
        record = sink.inferences[-1]
        assert record.prediction_ids == ids["data"] and len(record.X) == 30
        wait_until("the charge released", lambda: srv.budget.in_use == 0)
        # stop() while a summary runs: it waits for it.
        gate.clear()
        assert answered.request("POST", "/v2/models/iris/infer", body)[0] == 200
        threading.Timer(0.2, gate.set).start()
        srv.stop()
        assert len(sink.inferences) == 2
        for c in (answered, labels):
            c.close()
    finally:
        gate.set()
        srv.stop()


def test_answers_written_by_workers_stay_whole_in_order_and_counted(
    models: dict[str, LoadedModel],
) -> None:
    """A worker writes a big request's answer itself; what the socket does not take at once
    (three pipelined 1.5 MB answers to a client that reads nothing meanwhile) is finished
    by the loop, in order, and every request is counted before the one after it is
    answered. A client that leaves before its answer costs nothing but the work, which is
    still accounted."""
    sink = RecordingTelemetrySink()
    with EndpointServer(EndpointConfig(port=0), ServingSet(models), sink) as srv:
        x = np.tile(trained_model("iris").X_test, (700, 1))
        bodies = [infer_body(x, id=f"big{i}") for i in range(3)]
        assert all(64 * 1024 <= len(b) <= 4 * 1024 * 1024 for b in bodies)
        c = RawClient(srv.port)
        c.send(
            b"".join(
                b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
                for b in bodies
            )
            + b"GET /metrics HTTP/1.1\r\n\r\n"
        )
        wait_until("three answers written", lambda: sum(srv.metrics.http_responses.values()) >= 3)
        for i in range(3):
            status, _, reply = c.read_response()
            assert status == 200 and len(reply) > 1024 * 1024
            doc = json.loads(reply)
            assert doc["id"] == f"big{i}"
            ids = next(o for o in doc["outputs"] if o["name"] == "prediction_id")["data"]
            assert len(ids) == len(x)
        status, _, text = c.read_response()
        assert status == 200
        counted = 'edgefleet_agent_inference_requests_total{model="iris",version="3"} 3'
        assert counted in text.decode()
        c.close()
        gone = RawClient(srv.port)
        gone.send(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
            % (len(bodies[0]), bodies[0])
        )
        gone.close()
        wait_until("every inference recorded", lambda: len(sink.inferences) == 4)
        assert RawClient(srv.port).request("GET", "/v2/health/live")[0] == 200
    assert srv.metrics.sink_failures == 0


def test_metrics_are_prometheus_text(client: RawClient) -> None:
    client.request("POST", "/v2/models/iris/infer", infer_body(trained_model("iris").X_test[:1]))
    status, headers, body = client.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'edgefleet_agent_model_served{model="iris",version="3"} 1' in text
    assert 'edgefleet_agent_inference_requests_total{model="iris",version="3"}' in text
    assert (
        'edgefleet_agent_inference_latency_seconds_bucket{model="iris",version="3",le="+Inf"}'
        in text
    )
    assert "# TYPE edgefleet_agent_inference_latency_seconds histogram" in text


def test_pipelined_requests_answer_in_order(client: RawClient) -> None:
    x = trained_model("iris").X_test
    bodies = [infer_body(x[i : i + 1], id=f"p{i}") for i in range(5)]
    big = infer_body(np.tile(x, (20, 1)), id="big")  # over offload_body_bytes: a worker thread
    assert len(big) > 32 * 1024
    bodies.insert(2, big)
    raw = b"".join(
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
        % (len(b), b)
        for b in bodies
    )
    client.send(raw + b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    ids = [json.loads(client.read_response()[2])["id"] for _ in bodies]
    assert ids == ["p0", "p1", "big", "p2", "p3", "p4"]
    assert client.read_response()[0] == 200
    assert client.connects == 1


def test_big_bodies_go_to_a_buffer_of_their_own() -> None:
    """A body of DIRECT_BODY_BYTES or more is filled in place (recv_into), its tensor
    offset lands on a 64-byte boundary, and bytes pipelined after it are kept."""
    from edgefleet.agent.endpoint.http11 import DIRECT_BODY_BYTES, RequestParser

    body = bytes(range(256)) * (DIRECT_BODY_BYTES // 256 + 7)
    head = b"POST /v2/x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    after = b"GET /v2/health/live HTTP/1.1\r\n\r\n"
    for offset in (0, 1, 166, 1001):
        parser = RequestParser(max_header_bytes=4096, max_body_bytes=1 << 20)
        parser.feed(head + body[:100])
        assert parser.parse_head() is not None and parser.recv_target() is None
        assert parser.next_request(align=offset) is None  # the body's buffer starts
        pos = 100
        while (target := parser.recv_target()) is not None and pos < len(body) - 5000:
            n = min(len(target), 30_000)
            target[:n] = body[pos : pos + n]
            parser.received(n)
            pos += n
        assert parser.body_buffered == pos
        parser.feed(body[pos:] + after)  # the rest and the next request in one read
        req = parser.next_request()
        assert req is not None and req.body == body and isinstance(req.body, bytearray)
        address = np.frombuffer(req.body, np.uint8).ctypes.data
        assert (address + offset) % 64 == 0
        nxt = parser.next_request()
        assert nxt is not None and nxt.target == "/v2/health/live" and parser.idle


def test_big_json_bodies_in_pieces_and_pipelined(client: RawClient) -> None:
    x = trained_model("iris").X_test
    big = infer_body(np.tile(x, (60, 1)), id="big")
    assert 64 * 1024 <= len(big) <= 256 * 1024
    request = b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
    raw = request % (len(big), big)
    client.send(raw[:1000])
    client.send(raw[1000:70_000])
    client.send(raw[70_000:] + raw + request % (len(big), big.replace(b"big", b"end")))
    for want in ("big", "big", "end"):
        status, _, body = client.read_response()
        assert status == 200 and json.loads(body)["id"] == want
    assert client.connects == 1


def test_body_over_the_limit_is_413_before_upload(
    client: RawClient, server: EndpointServer
) -> None:
    limit = server.config.max_body_bytes
    client.send(
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
        % (limit + 1)
    )
    status, headers, body = client.read_response()  # answered without sending the body
    assert status == 413 and headers["connection"] == "close"
    assert "exceeds the limit" in json.loads(body)["error"]
    assert client.is_closed_by_peer()


def test_expect_continue(client: RawClient) -> None:
    body = infer_body(trained_model("iris").X_test[:1])
    client.send(
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    assert client.read_response()[0] == 100
    client.send(body)
    assert client.read_response()[0] == 200


def test_http10_closes_unless_keep_alive(client: RawClient) -> None:
    client.send(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    status, headers, _ = client.read_response()
    assert status == 200 and headers["connection"] == "close" and client.is_closed_by_peer()
    client.connect()
    client.send(b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = client.read_response()
    assert status == 200 and headers["connection"] == "keep-alive"
    assert client.request("GET", "/v2/health/live")[0] == 200


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v2 HTTP/2.0\r\n\r\n", 505),
        (b"GET v2 HTTP/1.1\r\n\r\n", 400),
        (b"GET /v2 HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (
            b"POST /v2/models/iris/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            411,
        ),
        (b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n", 400),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", 431),
    ],
)
def test_broken_http_gets_4xx_and_close(client: RawClient, raw: bytes, status: int) -> None:
    client.send(raw)
    got, headers, body = client.read_response()
    assert got == status and headers["connection"] == "close" and "error" in json.loads(body)
    client.connect()
    assert client.request("GET", "/v2/health/live")[0] == 200


def test_methods_and_unknown_routes(client: RawClient) -> None:
    status, headers, _ = client.request("GET", "/v2/models/iris/infer")
    assert status == 405 and headers["allow"] == "POST"
    assert client.request("POST", "/v2/health/live")[0] == 405
    assert client.request("DELETE", "/v2/models/iris")[0] == 405
    for path in (
        "/",
        "/v1/models/iris",
        "/v2/models/iris/explain",
        "/v2/models/iris/a/b/c",
        "/v2/models//infer",
    ):
        status, _, body = client.request("GET", path)
        assert status == 404 and "error" in json.loads(body), path


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({"Inference-Header-Content-Length": "100000"}, 400, "larger than the body"),
        ({"Inference-Header-Content-Length": "-3"}, 400, "non-negative integer"),
        ({"Content-Encoding": "gzip"}, 415, "Content-Encoding"),
        ({"Content-Type": "multipart/form-data"}, 415, "multipart"),
    ],
)
def test_bad_framing_and_encodings_are_refused_clearly(
    client: RawClient, headers: dict[str, str], status: int, words: str
) -> None:
    body = infer_body(trained_model("iris").X_test[:1])
    got, _, reply = client.request("POST", "/v2/models/iris/infer", body, headers)
    message = json.loads(reply)["error"]
    assert got == status and words in message, message
    client.close()


def test_binary_input_parameter_needs_the_header(client: RawClient) -> None:
    doc = {
        "inputs": [
            {
                "name": "X",
                "shape": [1, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 16},
            }
        ]
    }
    status, _, body = client.request("POST", "/v2/models/iris/infer", json.dumps(doc).encode())
    assert status == 400 and "Inference-Header-Content-Length" in json.loads(body)["error"]


def test_tritonclient_json_round_trip(server: EndpointServer) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    m = trained_model("iris")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("iris")
        assert not client.is_model_ready("nope")
        assert client.get_model_metadata("iris")["inputs"][0]["datatype"] == "FP32"
        x = m.X_test[:4]
        inp = httpclient.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=False)
            for name in ("label", "probabilities", "prediction_id")
        ]
        result = client.infer("iris", [inp], outputs=outputs, request_id="tc-1")
        np.testing.assert_array_equal(result.as_numpy("label"), m.expected[:4])
        assert m.expected_probabilities is not None
        np.testing.assert_array_equal(
            result.as_numpy("probabilities"), m.expected_probabilities[:4]
        )
        assert result.as_numpy("prediction_id").shape == (4,)
        assert result.get_response()["id"] == "tc-1"
        result = client.infer("iris", [inp], outputs=outputs[:1], model_version="3")
        assert result.as_numpy("probabilities") is None

        binary = httpclient.InferInput("X", list(x.shape), "FP32")
        binary.set_data_from_numpy(x, binary_data=True)
        result = client.infer("iris", [binary], outputs=outputs)
        np.testing.assert_array_equal(result.as_numpy("label"), m.expected[:4])
        result = client.infer("iris", [inp])  # no outputs named: every output comes binary
        np.testing.assert_array_equal(
            result.as_numpy("probabilities"), m.expected_probabilities[:4]
        )
        assert result.as_numpy("prediction_id").shape == (4,)
        with pytest.raises(InferenceServerException, match="not served"):
            client.infer("nope", [inp], outputs=outputs)
        assert client.is_server_live()
    finally:
        client.close()


def test_failing_sink_never_breaks_answers(models: dict[str, LoadedModel]) -> None:
    class BrokenSink(RecordingTelemetrySink):
        def record_inference(self, *args: Any) -> None:  # type: ignore[override]
            raise RuntimeError("disk full")

    with EndpointServer(EndpointConfig(port=0), ServingSet(models), BrokenSink()) as srv:
        c = RawClient(srv.port)
        for _ in range(3):
            status, _, _ = c.request(
                "POST", "/v2/models/iris/infer", infer_body(trained_model("iris").X_test[:1])
            )
            assert status == 200
        wait_until("three sink failures", lambda: srv.metrics.sink_failures == 3)
        c.close()


def test_token_is_required_when_configured(models: dict[str, LoadedModel]) -> None:
    with EndpointServer(EndpointConfig(port=0, token=TOKEN), ServingSet(models)) as srv:
        c = RawClient(srv.port)
        status, headers, body = c.request("GET", "/v2/health/live")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert "bearer token" in json.loads(body)["error"]
        assert (
            c.request("GET", "/v2/health/live", headers={"Authorization": "Bearer wrong"})[0] == 401
        )
        assert c.request("GET", "/v2/health/live", headers={"Authorization": TOKEN})[0] == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert c.request("GET", "/v2/health/live", headers=good)[0] == 200
        x = trained_model("iris").X_test[:1]
        assert c.request("POST", "/v2/models/iris/infer", infer_body(x), good)[0] == 200
        assert c.request("POST", "/v2/models/iris/infer", infer_body(x))[0] == 401
        c.close()


def test_non_loopback_bind_needs_a_token(models: dict[str, LoadedModel]) -> None:
    with pytest.raises(AgentConfigError, match="token"):
        EndpointConfig(host="0.0.0.0", port=0)
    with pytest.raises(AgentConfigError, match="token"):
        EndpointConfig(host="0.0.0.0", port=0, token="short")
    with EndpointServer(
        EndpointConfig(host="0.0.0.0", port=0, token=TOKEN), ServingSet(models)
    ) as srv:
        c = RawClient(srv.port)
        assert c.request("GET", "/v2/health/live")[0] == 401
        assert (
            c.request("GET", "/v2/health/live", headers={"Authorization": f"Bearer {TOKEN}"})[0]
            == 200
        )
        c.close()


def test_port_in_use_is_a_clear_error(
    server: EndpointServer, models: dict[str, LoadedModel]
) -> None:
    with pytest.raises(EndpointError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        EndpointServer(EndpointConfig(port=server.port), ServingSet(models)).start()
    assert issubclass(EndpointError, AgentError) and issubclass(EndpointError, OperationalError)


def test_not_ready_until_models_are_served() -> None:
    serving = ServingSet(ready=False)
    with EndpointServer(EndpointConfig(port=0), serving) as srv:
        c = RawClient(srv.port)
        assert c.request("GET", "/v2/health/live")[0] == 200
        status, _, body = c.request("GET", "/v2/health/ready")
        assert status == 503 and json.loads(body)["ready"] is False
        serving.ready = True
        assert c.request("GET", "/v2/health/ready")[0] == 503  # ready, but nothing to serve
        c.close()


def test_swapped_model_is_served_without_restart(
    tmp_path: Path, models: dict[str, LoadedModel]
) -> None:
    serving = ServingSet({"iris": models["iris"]})
    with EndpointServer(EndpointConfig(port=0), serving) as srv:
        c = RawClient(srv.port)
        x = infer_body(trained_model("iris").X_test[:1])
        assert json.loads(c.request("POST", "/v2/models/iris/infer", x)[2])["model_version"] == "3"
        signer = make_signer()
        newer = load_bundle(
            write_model_dir(tmp_path / "v5", "iris", signer, version=5), signer.trust, PROFILE
        )
        serving.swap("iris", newer)
        assert json.loads(c.request("POST", "/v2/models/iris/infer", x)[2])["model_version"] == "5"
        assert c.connects == 1
        c.close()


def test_connection_limit_idle_and_slow_requests(models: dict[str, LoadedModel]) -> None:
    config = EndpointConfig(
        port=0,
        max_connections=1,
        header_timeout_s=0.5,
        keepalive_timeout_s=30,
        request_timeout_s=0.5,
    )
    with EndpointServer(config, ServingSet(models)) as srv:
        idle, slow_body, extra, slow_head = (RawClient(srv.port) for _ in range(4))
        assert idle.request("GET", "/v2/health/live")[0] == 200
        # A request whose body never completes takes the one authenticated place ...
        slow_body.send(b"POST /v2/health/live HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        assert idle.is_closed_by_peer()  # ... which the idle keep-alive connection gives up
        status, _, body = extra.request("GET", "/v2/health/live")
        assert status == 503 and "too many connections" in json.loads(body)["error"]
        slow_head.send(b"GET /v2/health/live HTTP/1.1\r\n")  # a head that never completes
        assert slow_head.read_response()[0] == 408  # after header_timeout_s
        assert slow_body.read_response()[0] == 408  # after request_timeout_s
        wait_until("the refused connection", lambda: srv.metrics.connections_refused == 1)
        for c in (idle, slow_body, extra, slow_head):
            c.close()


def test_stop_closes_the_port(models: dict[str, LoadedModel]) -> None:
    srv = EndpointServer(EndpointConfig(port=0), ServingSet(models))
    srv.start()
    port = srv.port
    c = RawClient(port)
    assert c.request("GET", "/v2/health/live")[0] == 200
    srv.stop()
    assert c.is_closed_by_peer()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_requests_answered_together_reach_a_batch_sink_together(
    models: dict[str, LoadedModel],
) -> None:
    class BatchSink(RecordingTelemetrySink):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[tuple[str, int, np.ndarray, np.ndarray, list[float], list[str]]] = []

        def record_inferences(self, model, version, X, predictions, latencies_ms, prediction_ids):  # type: ignore[no-untyped-def]
            self.batches.append(
                (model, version, X, predictions, list(latencies_ms), list(prediction_ids))
            )

    sink = BatchSink()
    x = trained_model("iris").X_test
    with EndpointServer(EndpointConfig(port=0), ServingSet(models), sink) as srv:
        c = RawClient(srv.port)
        bodies = [infer_body(x[i : i + 1 + i % 2]) for i in range(6)]  # 1 or 2 rows each
        c.send(
            b"".join(
                b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
                for b in bodies
            )
        )
        ids = []
        for _ in bodies:
            outputs = json.loads(c.read_response()[2])["outputs"]
            ids += next(o for o in outputs if o["name"] == "prediction_id")["data"]
        wait_until(
            "every request recorded",
            lambda: sum(len(b[4]) for b in sink.batches) + len(sink.inferences) == len(bodies),
        )
        c.close()
    # Pipelined requests are answered in one loop pass: at least one batched call.
    assert sink.batches and max(len(b[4]) for b in sink.batches) > 1
    batched_ids = [pid for b in sink.batches for pid in b[5]]
    single_ids = [pid for r in sink.inferences for pid in r.prediction_ids]
    assert sorted(batched_ids + single_ids) == sorted(ids)
    for _, version, X, predictions, latencies, batch_ids in sink.batches:
        assert version == 3 and len(X) == len(predictions) == len(batch_ids)
        assert all(latency > 0 for latency in latencies)

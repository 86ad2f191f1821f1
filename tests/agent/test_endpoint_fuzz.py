"""Hypothesis fuzzing of the endpoint over real sockets.

Whatever arrives — arbitrary JSON, OIP-shaped requests with wrong names,
shapes, datatypes, NaN/inf and huge numbers, raw bytes, broken HTTP heads,
strange model names, payloads over the limit — the answer is a 2xx or a 4xx
with ``{"error": "..."}``, never a 5xx, the server keeps answering, and every
refused request for a served model is reported to the telemetry sink.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.agent.test_endpoint import RawClient
from tests.support.bundles import make_signer, trained_model, write_model_dir
from tests.support.waiting import wait_until

from edgefleet.agent.endpoint import EndpointConfig, EndpointServer
from edgefleet.agent.endpoint.metrics import ERROR_KINDS
from edgefleet.agent.model.runtime import load_bundle
from edgefleet.agent.model.serving import ServingSet
from edgefleet.agent.telemetry_sink import RecordingTelemetrySink
from edgefleet.core.profiles import load_profile

MAX_BODY = 64 * 1024
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def sink() -> RecordingTelemetrySink:
    return RecordingTelemetrySink()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, sink: RecordingTelemetrySink
) -> Iterator[EndpointServer]:
    root = tmp_path_factory.mktemp("fuzz")
    signer = make_signer()
    profile = load_profile("x86_64-gateway")
    models = {
        kind: load_bundle(
            write_model_dir(root / kind, kind, signer, version=3), signer.trust, profile
        )
        for kind in ("iris", "wine_str")
    }
    config = EndpointConfig(port=0, max_body_bytes=MAX_BODY, offload_body_bytes=8 * 1024)
    with EndpointServer(config, ServingSet(models), sink) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: EndpointServer) -> Iterator[RawClient]:
    c = RawClient(server.port)
    yield c
    c.close()


def exchange(client: RawClient, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request on the kept-alive connection, reconnecting if the server closed it."""
    for attempt in range(2):
        try:
            client.send(raw)
            return client.read_response()
        except (ConnectionError, OSError):
            if attempt:
                raise
            client.connect()
    raise AssertionError("unreachable")


def post(path: str, body: bytes, extra_headers: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: fuzz\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path.encode(),
        len(body),
        extra_headers,
        body,
    )


ITEM_BYTES = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2}
ITEM_BYTES |= {"INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8}


def binary_elements(datatype: str, raw: bytes) -> list[Any]:
    """The elements of one binary output (only their number is checked): fixed-size
    items, or BYTES as 4-byte little-endian lengths each followed by its bytes."""
    if datatype != "BYTES":
        assert len(raw) % ITEM_BYTES[datatype] == 0
        return [None] * (len(raw) // ITEM_BYTES[datatype])
    items, at = [], 0
    while at < len(raw):
        n = int.from_bytes(raw[at : at + 4], "little")
        items.append(raw[at + 4 : at + 4 + n])
        at += 4 + n
    assert at == len(raw)
    return items


def check_answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Any:
    """The answer's JSON document; with the binary tensor extension (a request may ask for
    ``binary_data_output``) the JSON header, each binary output's bytes checked against
    its declared ``binary_data_size`` and put back as ``data``."""
    assert status < 500, body[:300]
    if status >= 400:
        doc = json.loads(body)
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"]
        return doc
    header_length = (headers or {}).get("inference-header-content-length")
    if header_length is None:
        return json.loads(body) if body else None
    doc = json.loads(body[: int(header_length)])
    rest = memoryview(body)[int(header_length) :]
    for out in doc["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            assert "data" not in out
            assert len(rest) >= size
            out["data"] = binary_elements(out["datatype"], bytes(rest[:size]))
            rest = rest[size:]
    assert len(rest) == 0, "bytes past the binary outputs"
    return doc


def assert_alive(server: EndpointServer) -> None:
    fresh = RawClient(server.port)
    try:
        assert fresh.request("GET", "/v2/health/live")[0] == 200
    finally:
        fresh.close()


# --- strategies ------------------------------------------------------------------------
numbers = (
    st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=-10, max_value=10)
)
scalars = st.none() | st.booleans() | numbers | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=40,
)
datatypes = st.sampled_from(
    ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES", "fp32", "", "BF16"]
) | st.text(max_size=6)
shapes = st.lists(st.integers(min_value=-3, max_value=10), min_size=0, max_size=4) | st.just(
    [10**12, 10**12]
)
flat_data = st.lists(numbers | st.booleans() | st.text(max_size=3) | st.none(), max_size=40)
nested_data = st.lists(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6), max_size=6
)
parameters = st.dictionaries(
    st.sampled_from(["binary_data_size", "binary_data", "binary_data_output", "priority", "x"])
    | st.text(max_size=6),
    scalars,
    max_size=3,
)


@st.composite
def oip_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed OIP requests with one or more fields going wrong."""
    rows = draw(st.integers(min_value=0, max_value=4))
    features = draw(st.sampled_from([4, 4, 4, 3, 5, 13]))
    good_data = [draw(st.floats(min_value=-5, max_value=5)) for _ in range(rows * features)]
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["X", "X", "X", "x", "input", ""])),
        "shape": [rows, features],
        "datatype": "FP32",
        "data": good_data,
    }
    if good_data and draw(st.integers(0, 3)) == 0:
        good_data[draw(st.integers(0, len(good_data) - 1))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e39])
        )
    if draw(st.booleans()):
        tensor["datatype"] = draw(datatypes)
    if draw(st.booleans()):
        tensor["shape"] = draw(shapes)
    if draw(st.booleans()):
        tensor["data"] = draw(flat_data | nested_data | json_values)
    if draw(st.booleans()):
        tensor["parameters"] = draw(parameters)
    if draw(st.integers(0, 5)) == 0:
        tensor.pop(draw(st.sampled_from(["name", "shape", "datatype", "data"])))
    doc: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.integers(0, 4)) == 0:
        doc["inputs"].append(dict(tensor))
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["label", "probabilities", "prediction_id", "nope"])},
                    optional={"parameters": parameters},
                ),
                max_size=3,
            )
            | json_values
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters | json_values)
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=10) | json_values)
    return doc


# --- tests -----------------------------------------------------------------------------
@FUZZ
@given(doc=oip_requests(), model=st.sampled_from(["iris", "wine_str"]))
def test_oip_shaped_requests(
    server: EndpointServer,
    client: RawClient,
    sink: RecordingTelemetrySink,
    doc: dict[str, Any],
    model: str,
) -> None:
    body = json.dumps(doc).encode()  # NaN/Infinity literals included
    before = len(sink.errors)
    status, headers, reply = exchange(client, post(f"/v2/models/{model}/infer", body))
    answer = check_answer(status, reply, headers)
    if status == 200:
        outputs = {o["name"]: o for o in answer["outputs"]}
        rows = outputs["prediction_id"]["shape"][0] if "prediction_id" in outputs else None
        for out in outputs.values():
            assert len(out["data"]) == math.prod(out["shape"])
            if rows is not None:
                assert out["shape"][0] == rows
    elif len(body) <= MAX_BODY:
        # A refused request for a served model is counted, with a known kind.
        wait_until("the refusal in the telemetry sink", lambda: len(sink.errors) >= before + 1, 5.0)
        name, version, kind = sink.errors[before]
        assert (name, version) == (model, 3) and kind in ERROR_KINDS


@FUZZ
@given(value=json_values)
def test_arbitrary_json(server: EndpointServer, client: RawClient, value: Any) -> None:
    status, _, reply = exchange(client, post("/v2/models/iris/infer", json.dumps(value).encode()))
    check_answer(status, reply)
    assert status in (200, 400), reply


@FUZZ
@given(body=st.binary(max_size=3000))
def test_arbitrary_bytes(server: EndpointServer, client: RawClient, body: bytes) -> None:
    for path in ("/v2/models/iris/infer", "/v2/models/iris/feedback"):
        status, _, reply = exchange(client, post(path, body))
        check_answer(status, reply)


@FUZZ
@given(
    name=st.text(min_size=1, max_size=30),
    version=st.none() | st.text(max_size=5),
    action=st.sampled_from(["", "/ready", "/infer", "/feedback", "/x"]),
    method=st.sampled_from(["GET", "POST", "PUT"]),
)
def test_model_names_and_routes(
    server: EndpointServer,
    client: RawClient,
    name: str,
    version: str | None,
    action: str,
    method: str,
) -> None:
    path = "/v2/models/" + quote(name, safe="")
    if version is not None:
        path += "/versions/" + quote(version, safe="")
    path += action
    body = json.dumps(
        {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    ).encode()
    raw = b"%s %s HTTP/1.1\r\nHost: fuzz\r\nContent-Length: %d\r\n\r\n%s" % (
        method.encode(),
        path.encode(),
        len(body),
        body,
    )
    status, _, reply = exchange(client, raw)
    check_answer(status, reply)
    if name not in ("iris", "wine_str"):
        assert status in (404, 405), (path, status)


@FUZZ
@given(head=st.binary(max_size=400), tail=st.sampled_from([b"\r\n\r\n", b"\r\n\r\n{}", b"\r\n"]))
def test_broken_http_heads(server: EndpointServer, head: bytes, tail: bytes) -> None:
    c = RawClient(server.port, timeout=5.0)
    try:
        c.send(head + tail)
        assert c.sock is not None
        c.sock.shutdown(socket.SHUT_WR)  # end of stream: an incomplete head is dropped
        try:
            status, _, reply = c.read_response()
        except ConnectionError:
            return  # closed without an answer: an incomplete request at end of stream
        check_answer(status, reply)
    finally:
        c.close()


@pytest.mark.parametrize("size", [MAX_BODY + 1, 10 * MAX_BODY, 2**40])
def test_payloads_over_the_limit(server: EndpointServer, size: int) -> None:
    c = RawClient(server.port)
    try:
        c.send(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: f\r\nContent-Length: %d\r\n\r\n" % size
        )
        c.send(b"[" * 1000)  # the start of a body the server must not wait for
        status, _, reply = c.read_response()
        assert status == 413 and "exceeds the limit" in check_answer(status, reply)["error"]
    finally:
        c.close()
    assert_alive(server)


def test_large_batches_near_the_limit(server: EndpointServer, client: RawClient) -> None:
    x = trained_model("iris").X_test
    rows = []
    while len(json.dumps(rows)) < MAX_BODY - 2000:
        rows.extend(x.tolist())
    doc = {"inputs": [{"name": "X", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]}
    body = json.dumps(doc).encode()
    assert 8 * 1024 < len(body) <= MAX_BODY  # runs on a worker thread
    status, _, reply = exchange(client, post("/v2/models/iris/infer", body))
    assert status == 200 and json.loads(reply)["outputs"][0]["shape"] == [len(rows)]
    doc["inputs"][0]["data"] = rows[:-1]  # one row short: a clean 400
    status, _, reply = exchange(client, post("/v2/models/iris/infer", json.dumps(doc).encode()))
    assert status == 400 and "needs" in check_answer(status, reply)["error"]


@pytest.mark.parametrize(
    ("data", "shape", "kind"),
    [
        ([1.0, math.nan, 2.0, 3.0], [1, 4], "non_finite"),
        ([1.0, 2.0, 3.0], [1, 3], "features"),
        ([1.0, "2", 3.0, 4.0], [1, 4], "data"),
        ([1.0, 2.0, 3.0, 4.0], [1, 1, 4], "shape"),
    ],
)
def test_schema_violation_kinds_reach_telemetry(
    server: EndpointServer,
    client: RawClient,
    sink: RecordingTelemetrySink,
    data: list[Any],
    shape: list[int],
    kind: str,
) -> None:
    doc = {"inputs": [{"name": "X", "shape": shape, "datatype": "FP32", "data": data}]}
    before = len(sink.errors)
    status, _, reply = exchange(client, post("/v2/models/iris/infer", json.dumps(doc).encode()))
    assert status == 400, reply
    wait_until("the refusal in the telemetry sink", lambda: len(sink.errors) >= before + 1, 5.0)
    assert sink.errors[before] == ("iris", 3, kind)


def test_still_alive_after_fuzzing(server: EndpointServer) -> None:
    assert_alive(server)
    assert server.metrics.http_responses.get(500, 0) == 0
    assert server.metrics.sink_failures == 0

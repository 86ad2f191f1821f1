"""The binary tensor data extension against a real endpoint on loopback, with tritonclient.

Models are built with onnx.helper (tests/tensors/graphs.py), registered, packed
and signed with the real CLI, loaded from their bundles and served by a real
:class:`EndpointServer`; answers are compared with onnxruntime running the
registered file. Raw sockets check the framing errors and the budget order.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tests.agent.test_endpoint import RawClient
from tests.support.agents import PROFILE_NAME, make_env
from tests.tensors import graphs

from edgefleet.agent.endpoint import EndpointConfig, EndpointServer
from edgefleet.agent.errors import InputSchemaError
from edgefleet.agent.model.runtime import LoadedModel, ThreadSettings, load_bundle
from edgefleet.agent.model.serving import ServingSet
from edgefleet.agent.telemetry_sink import RecordingTelemetrySink
from edgefleet.core.cli.main import main

pytestmark = pytest.mark.subprocess  # pack records the source revision with git

CLASSES = "a,b,c,d,e,f,g,h,i,j"


def uint8_net() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """pixels uint8 [N, 4] -> float32 [N, 4] (x / 255)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["f", "scale"], ["scaled"]),
        ],
        "u8",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 4])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [255.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    samples = {"pixels": np.random.default_rng(0).integers(0, 256, (6, 4)).astype(np.uint8)}
    return model, samples


MODELS: dict[str, tuple[Any, list[str]]] = {
    "cnn": (graphs.conv_net, ["--task", "classifier", "--class-names", CLASSES]),
    "gru": (
        graphs.gru_with_state,
        ["--task", "sequence", "--state", "h_in=h_out", "--batch-axis", "x=1",
         "--batch-axis", "y=2"],
    ),
    "multi": (graphs.multi_io, ["--output-role", "mixed=score"]),
    "u8": (uint8_net, []),
}  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[LoadedModel, Path]]:
    tmp = tmp_path_factory.mktemp("binary")
    env = make_env(tmp / "agent")
    found = {}
    for name, (build, register) in MODELS.items():
        model, samples = graphs.save(tmp / "src", name, build())
        for args in (
            ["registry", "register", model, "--name", name, "--registry", tmp / "r",
             "--reference-data", samples, *register],
            ["pack", name, "--profile", PROFILE_NAME, "--key", env.signer.key_path,
             "--out", tmp / name, "--registry", tmp / "r", "--quantize", "none"],
        ):  # fmt: skip
            with pytest.raises(SystemExit) as info:
                main([str(a) for a in args])
            assert not info.value.code
        bundle = next((tmp / name).glob("*.efb"))
        found[name] = (load_bundle(bundle, env.signer.trust, ThreadSettings()), model)
    return found


@pytest.fixture(scope="module")
def server(served: dict[str, tuple[LoadedModel, Path]]) -> Iterator[EndpointServer]:
    models = {name: loaded for name, (loaded, _) in served.items()}
    with EndpointServer(
        EndpointConfig(port=0), ServingSet(models), RecordingTelemetrySink()
    ) as srv:
        yield srv


@pytest.fixture
def triton(server: EndpointServer) -> Iterator[Any]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


def _raw(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _input(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> Any:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


# --- tritonclient's default (binary) infer ------------------------------------------------


def test_tritonclient_default_infer_gives_the_raw_onnxruntime_outputs(
    served: dict[str, tuple[LoadedModel, Path]], triton: Any
) -> None:
    x = np.random.default_rng(7).random((3, 3, 32, 32)).astype(np.float32)
    result = triton.infer("cnn", [_input("image", x, "FP32")])
    want = _raw(served["cnn"][1], {"image": x})["scores"]
    got = result.as_numpy("scores")
    assert got.dtype == np.float32 and got.shape == (3, 10)
    assert np.max(np.abs(got - want)) <= 1e-6
    assert result.as_numpy("prediction_id").shape == (3,)
    # The answer really was binary: no "data" in its JSON header.
    assert all("data" not in o for o in result.get_response()["outputs"])


def test_every_typed_input_and_bytes_tensors_round_trip_binary(
    served: dict[str, tuple[LoadedModel, Path]], triton: Any
) -> None:
    import tritonclient.http as httpclient

    feeds: dict[str, np.ndarray] = {
        "half": np.array([[0.5, 1, 2], [3, 4, 5]], np.float16),
        "ids": np.array([[1, 2], [3, 9]], np.int64),
        "mask": np.array([[True, False, True, True], [False, False, True, False]]),
        "word": np.array(["héllo", ""], dtype=object),
        "gain": np.array(2.0, np.float32),
    }
    types = {"half": "FP16", "ids": "INT64", "mask": "BOOL", "word": "BYTES", "gain": "FP32"}
    inputs = [_input(k, v, types[k], binary=k != "ids") for k, v in feeds.items()]  # one JSON
    outputs = [
        httpclient.InferRequestedOutput("mixed", binary_data=True),
        httpclient.InferRequestedOutput("inverted", binary_data=False),
        httpclient.InferRequestedOutput("word_out", binary_data=True),
    ]
    result = triton.infer("multi", inputs, outputs=outputs)
    want = _raw(served["multi"][1], feeds)
    assert np.max(np.abs(result.as_numpy("mixed") - want["mixed"])) <= 1e-4
    np.testing.assert_array_equal(result.as_numpy("inverted"), want["inverted"])
    words = [w.decode() for w in result.as_numpy("word_out")]
    assert words == ["héllo", ""]


def test_state_streamed_in_100_chunks_equals_one_offline_pass(
    served: dict[str, tuple[LoadedModel, Path]], triton: Any
) -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(0, 1, (100, 2, 4)).astype(np.float32)
    offline = _raw(served["gru"][1], {"x": x, "h_in": np.zeros((1, 2, 6), np.float32)})
    h = np.zeros((1, 2, 6), np.float32)
    ys = []
    for t in range(100):
        result = triton.infer("gru", [_input("x", x[t : t + 1], "FP32"), _input("h_in", h, "FP32")])
        ys.append(result.as_numpy("y"))
        h = result.as_numpy("h_out")  # the client carries the state to the next chunk
    assert np.max(np.abs(np.concatenate(ys) - offline["y"])) <= 1e-5
    assert np.max(np.abs(h - offline["h_out"])) <= 1e-5


def test_metadata_and_the_classification_extension(
    served: dict[str, tuple[LoadedModel, Path]], triton: Any
) -> None:
    import tritonclient.http as httpclient

    meta = triton.get_model_metadata("cnn")
    params = meta["parameters"]
    assert params["task"] == "classifier" and params["class_count"] == 10
    assert params["class_names"] == CLASSES.split(",")
    assert [i["name"] for i in meta["inputs"]] == ["image"]
    assert "scores" in [o["name"] for o in meta["outputs"]]
    assert "classification" in triton.get_server_metadata()["extensions"]
    x = np.random.default_rng(8).random((2, 3, 32, 32)).astype(np.float32)
    scores = _raw(served["cnn"][1], {"image": x})["scores"]
    for binary in (True, False):
        out = httpclient.InferRequestedOutput("scores", binary_data=binary, class_count=3)
        got = triton.infer("cnn", [_input("image", x, "FP32")], outputs=[out]).as_numpy("scores")
        assert got.shape == (2, 3)
        for row, entries in zip(scores, got, strict=True):
            best = np.argsort(-row)[:3]
            parsed = [e.decode() if isinstance(e, bytes) else e for e in entries]
            assert [int(p.split(":")[1]) for p in parsed] == best.tolist()
            assert [p.split(":")[2] for p in parsed] == [CLASSES.split(",")[b] for b in best]
            assert abs(float(parsed[0].split(":")[0]) - row[best[0]]) < 1e-5
    # Not a classifier: refused by name.
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="declared as a classifier"):
        triton.infer(
            "u8",
            [_input("pixels", np.zeros((1, 4), np.uint8), "UINT8")],
            outputs=[httpclient.InferRequestedOutput("scaled", class_count=1)],
        )


# --- strict datatypes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "tensor", "words"),
    [
        ("multi", {"name": "gain", "datatype": "FP32", "shape": [], "data": [True]},
         "'gain': datatype FP32 needs numbers, got true/false"),
        ("multi", {"name": "half", "datatype": "FP16", "shape": [1, 3], "data": [1.5, True, 0]},
         "'half': datatype FP16 needs numbers, got true/false"),
        ("u8", {"name": "pixels", "datatype": "UINT8", "shape": [1, 4], "data": [1, 2, 3, 300]},
         "'pixels': 300 is out of range"),
        ("multi", {"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": [1, 2.5]},
         "'ids': datatype INT64 needs integers"),
        ("u8", {"name": "pixels", "datatype": "INT32", "shape": [1, 4], "data": [1, 2, 3, 4]},
         "'pixels': datatype INT32 does not match the model's UINT8"),
    ],
)  # fmt: skip
def test_json_datatypes_are_mapped_strictly(
    server: EndpointServer, model: str, tensor: dict[str, Any], words: str
) -> None:
    client = RawClient(server.port)
    body = json.dumps({"inputs": [tensor]}).encode()
    status, _, reply = client.request("POST", f"/v2/models/{model}/infer", body)
    assert status == 400 and words in json.loads(reply)["error"], reply
    client.close()


def _binary_request(
    header: dict[str, Any], blob: bytes, *, hlen: int | None = None, send_blob: bool = True
) -> bytes:
    text = json.dumps(header).encode()
    body_len = len(text) + len(blob)
    head = (
        "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: t\r\n"
        f"Inference-Header-Content-Length: {len(text) if hlen is None else hlen}\r\n"
        f"Content-Length: {body_len}\r\n\r\n"
    )
    return head.encode() + text + (blob if send_blob else b"")


def _send(server: EndpointServer, model: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    client = RawClient(server.port)
    client.send(raw.replace(b"{model}", model.encode(), 1))
    try:
        return client.read_response()
    finally:
        client.close()


def _pixels_header(size: int, datatype: str = "UINT8", shape: list[int] | None = None) -> Any:
    return {
        "inputs": [
            {
                "name": "pixels",
                "datatype": datatype,
                "shape": shape or [1, 4],
                "parameters": {"binary_data_size": size},
            }
        ],
        "parameters": {"binary_data_output": True},
    }


def test_binary_answer_layout_by_hand(server: EndpointServer) -> None:
    status, headers, body = _send(
        server, "u8", _binary_request(_pixels_header(4), bytes([0, 51, 255, 1]))
    )
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    hlen = int(headers["inference-header-content-length"])
    doc = json.loads(body[:hlen])
    scaled = doc["outputs"][0]
    assert scaled["name"] == "scaled" and scaled["parameters"]["binary_data_size"] == 16
    values = np.frombuffer(body[hlen : hlen + 16], "<f4")
    np.testing.assert_allclose(values, [0, 0.2, 1, 1 / 255], rtol=1e-6)
    ids = body[hlen + 16 :]
    (length,) = struct.unpack_from("<I", ids)
    assert len(ids) == 4 + length


@pytest.mark.parametrize(
    ("header", "blob", "words"),
    [
        (_pixels_header(5), bytes(5), "'pixels': binary_data_size is 5 bytes but UINT8"),
        (_pixels_header(4), bytes(6), "declare 4 bytes of binary data but the body carries 6"),
        (_pixels_header(16, "FP32"), bytes(16), "'pixels': datatype FP32 does not match"),
        (
            {"inputs": [{"name": "word", "datatype": "BYTES", "shape": [1],
                         "parameters": {"binary_data_size": 6}}]},
            struct.pack("<I", 9) + b"ab",
            "'word': BYTES element 0 runs past",
        ),
        (
            {"inputs": [{"name": "mask", "datatype": "BOOL", "shape": [1, 4],
                         "parameters": {"binary_data_size": 4}}]},
            bytes([0, 1, 2, 0]),
            "'mask': BOOL bytes must be 0 or 1",
        ),
    ],
)  # fmt: skip
def test_bad_binary_declarations_are_400_naming_the_input(
    server: EndpointServer, header: dict[str, Any], blob: bytes, words: str
) -> None:
    model = "multi" if header["inputs"][0]["name"] in ("word", "mask") else "u8"
    status, _, body = _send(server, model, _binary_request(header, blob))
    assert status == 400 and words in json.loads(body)["error"], body


def test_header_length_larger_than_the_body_is_400(server: EndpointServer) -> None:
    raw = _binary_request(_pixels_header(4), bytes(4), hlen=10_000)
    status, _, body = _send(server, "u8", raw)
    assert status == 400 and "larger than the body" in json.loads(body)["error"]


def test_declared_sizes_are_charged_before_the_binary_part_is_read(
    served: dict[str, tuple[LoadedModel, Path]],
) -> None:
    """The binary part fits one request's share (checked from the head), but what the
    header declares (inputs and the outputs of its batch) does not: 413 at once, though
    not one byte of the binary part was sent."""
    models = {"cnn": served["cnn"][0]}
    config = EndpointConfig(port=0, memory_budget_mb=96, max_bundle_bytes=1024 * 1024)
    with EndpointServer(config, ServingSet(models), RecordingTelemetrySink()) as srv:
        per_request = srv.limits.per_request
        sample = 3 * 32 * 32 * 4
        n = per_request // sample
        size = n * sample
        assert size <= per_request < size + 2 * n * (16 + 10 * 4)
        header = {
            "inputs": [
                {"name": "image", "datatype": "FP32", "shape": [n, 3, 32, 32],
                 "parameters": {"binary_data_size": size}},
            ]
        }  # fmt: skip
        text = json.dumps(header).encode()
        head = (
            "POST /v2/models/cnn/infer HTTP/1.1\r\nHost: t\r\n"
            f"Inference-Header-Content-Length: {len(text)}\r\n"
            f"Content-Length: {len(text) + size}\r\n\r\n"
        ).encode()
        client = RawClient(srv.port)
        client.send(head + text)
        status, _, body = client.read_response()
        assert status == 413 and "declares" in json.loads(body)["error"], body
        assert client.is_closed_by_peer()
        assert srv.budget.in_use == 0
        # One byte over the share in the binary part alone: refused from the head.
        client = RawClient(srv.port)
        client.send(
            head.replace(str(len(text) + size).encode(), str(len(text) + per_request + 1).encode())
        )
        status, _, body = client.read_response()
        assert status == 413 and "binary data of" in json.loads(body)["error"], body
        client.close()


def test_json_images_are_priced_per_sample_not_per_two_bytes(
    served: dict[str, tuple[LoadedModel, Path]],
) -> None:
    """A JSON body of tensors holds at most one sample per 2 x (values per sample) bytes;
    priced as if every two bytes could be a table row, two 32x32 images were a 413."""
    models = {"cnn": served["cnn"][0]}
    config = EndpointConfig(port=0, memory_budget_mb=96, max_bundle_bytes=1024 * 1024)
    x = np.random.default_rng(3).random((2, 3, 32, 32)).astype(np.float32)
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 3, 32, 32],
                     "data": x.ravel().tolist()}]}
    ).encode()  # fmt: skip
    with EndpointServer(config, ServingSet(models), RecordingTelemetrySink()) as srv:
        assert len(body) * 2 * 56 // 2 > srv.limits.per_request  # the old price
        client = RawClient(srv.port)
        status, _, reply = client.request("POST", "/v2/models/cnn/infer", body)
        client.close()
    assert status == 200, reply
    scores = {o["name"]: o for o in json.loads(reply)["outputs"]}["scores"]
    want = _raw(served["cnn"][1], {"image": x})["scores"]
    assert np.max(np.abs(np.array(scores["data"]).reshape(2, 10) - want)) <= 1e-6


def test_binary_tensors_at_odd_offsets_are_decoded_aligned(
    served: dict[str, tuple[LoadedModel, Path]],
) -> None:
    from edgefleet.agent.endpoint import binary

    model = served["cnn"][0]
    x = np.random.default_rng(9).random((1, 3, 32, 32)).astype(np.float32)
    header = json.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32],
                     "parameters": {"binary_data_size": x.nbytes}}]}
    ).encode()  # fmt: skip
    header += b" " * (1 - len(header) % 4 + 4)  # JSON allows trailing spaces: an odd offset
    assert len(header) % 4 == 1
    call, _ = binary.decode_request(header + x.tobytes(), len(header), model)
    image = call.feeds["image"]
    assert image.flags.aligned and image.dtype == np.float32
    np.testing.assert_array_equal(image, x)


def test_binary_tensors_view_the_received_body_without_a_copy(
    served: dict[str, tuple[LoadedModel, Path]],
) -> None:
    """The parser puts the tensors of a big body on a 64-byte boundary (the header's length
    is in the head), so the decoded input is a view of the very buffer the socket filled."""
    from edgefleet.agent.endpoint import binary
    from edgefleet.agent.endpoint.http11 import RequestParser

    model = served["cnn"][0]
    x = np.random.default_rng(10).random((8, 3, 32, 32)).astype(np.float32)
    header = json.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                     "parameters": {"binary_data_size": x.nbytes}}]}
    ).encode() + b"  "  # fmt: skip
    assert len(header) % 4 and x.nbytes >= 64 * 1024
    parser = RequestParser(max_header_bytes=4096, max_body_bytes=1 << 20)
    parser.feed(
        b"POST /v2/models/cnn/infer HTTP/1.1\r\nInference-Header-Content-Length: %d\r\n"
        b"Content-Length: %d\r\n\r\n%s%s"
        % (len(header), len(header) + x.nbytes, header, x.tobytes())
    )
    req = parser.next_request(align=len(header))
    assert req is not None
    call, _ = binary.decode_request(req.body, len(header), model)
    image = call.feeds["image"]
    assert image.flags.aligned and np.shares_memory(image, np.frombuffer(req.body, np.uint8))
    np.testing.assert_array_equal(image, x)


def test_a_header_sent_again_is_decoded_from_its_layout(
    served: dict[str, tuple[LoadedModel, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same JSON header again (what tritonclient sends for every request of one shape)
    is not parsed or checked again: its layout is reused, with this body's tensors. A body
    whose binary part does not match that layout is decoded, and refused, as ever."""
    from edgefleet.agent.endpoint import binary

    model = served["cnn"][0]
    header = json.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 3, 32, 32],
                     "parameters": {"binary_data_size": 2 * 3 * 32 * 32 * 4}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    rng = np.random.default_rng(11)
    first, second = (rng.random((2, 3, 32, 32)).astype(np.float32) for _ in range(2))
    call, wire = binary.decode_request(header + first.tobytes(), len(header), model)
    np.testing.assert_array_equal(call.feeds["image"], first)

    def no_parsing(body: bytes) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(binary, "parse_json_body", no_parsing)
    again, again_wire = binary.decode_request(header + second.tobytes(), len(header), model)
    np.testing.assert_array_equal(again.feeds["image"], second)
    assert again_wire == wire and again.outputs == call.outputs
    monkeypatch.undo()
    with pytest.raises(InputSchemaError, match="runs past the end of the body"):
        binary.decode_request(header + second.tobytes()[:-4], len(header), model)

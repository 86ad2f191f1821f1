"""ONNX graphs for the tensor tests, built with onnx.helper and seeded weights.

Each builder returns ``(model, samples)``: the model and a dict of reference
arrays, one per input name (what ``--reference-data samples.npz`` holds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def conv_net(batch: int | str | None = "N") -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """[N,3,32,32] -> Conv(8) -> Relu -> GlobalAveragePool -> Gemm(10) -> Softmax."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 10)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    n = 1 if batch == 1 else 12
    samples = {"image": rng.random((n if batch != 1 else 6, 3, 32, 32)).astype(np.float32)}
    return _model(graph), samples


def wide_conv_net() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """[N,3,16,16] -> Conv(16) -> Relu -> Conv(32) -> Relu -> GAP -> Gemm(10): weights worth int8."""
    rng = np.random.default_rng(8)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.05, 16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (32, 16, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.05, 32).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (32, 10)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _model(graph), {"image": rng.random((24, 3, 16, 16)).astype(np.float32)}


def sequence_mlp() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [N, 8, 64] -> MatMul(64x256) -> Relu -> MatMul(256x32): a per-step encoder, no Conv."""
    rng = np.random.default_rng(9)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["embedding"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 64])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8, 32])],
        [
            numpy_helper.from_array(rng.normal(0, 0.15, (64, 256)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(0, 0.1, (256, 32)).astype(np.float32), "w2"),
        ],
    )
    return _model(graph), {"x": rng.normal(0, 1, (24, 8, 64)).astype(np.float32)}


def tiny_segmenter() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """image [N,3,8,8] -> Conv 1x1 (4 classes) -> Softmax over the classes: [N,4,8,8]."""
    rng = np.random.default_rng(12)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w", "b"], ["logits"], kernel_shape=[1, 1]),
            helper.make_node("Softmax", ["logits"], ["mask_scores"], axis=1),
        ],
        "segmenter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("mask_scores", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [
            numpy_helper.from_array(rng.normal(0, 2.0, (4, 3, 1, 1)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([0.5, 0, -0.2, 0], np.float32), "b"),
        ],
    )
    return _model(graph), {"image": rng.random((40, 3, 8, 8)).astype(np.float32)}


def tiny_sequence() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [N,T,6] -> MatMul(6x5) -> Softmax per step: [N,T,5] (a per-frame tagger)."""
    rng = np.random.default_rng(13)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["step_probs"], axis=-1),
        ],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 6])],
        [helper.make_tensor_value_info("step_probs", TensorProto.FLOAT, ["N", "T", 5])],
        [numpy_helper.from_array(rng.normal(0, 1.0, (6, 5)).astype(np.float32), "w")],
    )
    return _model(graph), {"x": rng.normal(0, 1, (40, 7, 6)).astype(np.float32)}


def big_input_net() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """[N,3,224,224] -> ReduceMean over H,W -> [N,3]: a large input, a tiny model."""
    rng = np.random.default_rng(2)
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0)],
        "big",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 3])],
        [axes],
    )
    return _model(graph, 18), {"image": rng.normal(0, 1, (3, 3, 224, 224)).astype(np.float32)}


def gru_with_state() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [T, N, 4] and h_in [1, N, 6] -> y [T, 1, N, 6], h_out [1, N, 6] (a GRU)."""
    rng = np.random.default_rng(3)
    hidden, features = 6, 4
    inits = [
        numpy_helper.from_array(
            rng.normal(0, 0.4, (1, 3 * hidden, features)).astype(np.float32), "W"
        ),
        numpy_helper.from_array(
            rng.normal(0, 0.4, (1, 3 * hidden, hidden)).astype(np.float32), "R"
        ),
        numpy_helper.from_array(rng.normal(0, 0.1, (1, 6 * hidden)).astype(np.float32), "B"),
    ]
    node = helper.make_node(
        "GRU", ["x", "W", "R", "B", "", "h_in"], ["y", "h_out"], hidden_size=hidden
    )
    graph = helper.make_graph(
        [node],
        "gru",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", features]),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, "N", hidden]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 1, "N", hidden]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, "N", hidden]),
        ],
        inits,
    )
    samples = {
        "x": rng.normal(0, 1, (5, 2, features)).astype(np.float32),
        "h_in": np.zeros((1, 2, hidden), np.float32),
    }
    return _model(graph), samples


def multi_io() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Typed inputs (float16, int64, bool, string, a float32 scalar) -> four outputs."""
    rng = np.random.default_rng(4)
    table = numpy_helper.from_array(rng.normal(0, 1, (10, 3)).astype(np.float32), "table")
    nodes = [
        helper.make_node("Cast", ["half"], ["half32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["half32", "gain"], ["scaled"]),
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),  # [N, K, 3]
        helper.make_node("ReduceSum", ["emb", "one"], ["emb_sum"], keepdims=0),  # [N, 3]
        helper.make_node("Add", ["scaled", "emb_sum"], ["mixed"]),
        helper.make_node("Not", ["mask"], ["inverted"]),
        helper.make_node("Identity", ["word"], ["word_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi",
        [
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["N", 3]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 2]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4]),
            helper.make_tensor_value_info("word", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("mixed", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("inverted", TensorProto.BOOL, ["N", 4]),
            helper.make_tensor_value_info("word_out", TensorProto.STRING, ["N"]),
        ],
        [table, numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    n = 7
    samples = {
        "half": rng.normal(0, 1, (n, 3)).astype(np.float16),
        "ids": rng.integers(0, 10, (n, 2)).astype(np.int64),
        "mask": rng.random((n, 4)) > 0.5,
        "word": np.array([f"w{i}" for i in range(n)]),
        "gain": np.array(2.5, np.float32),
    }
    return _model(graph), samples


def linear_10_to_8() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A plain 10 -> 8 linear layer (no role anybody can know)."""
    rng = np.random.default_rng(5)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(rng.normal(0, 1, (10, 8)).astype(np.float32), "w")],
    )
    return _model(graph), {"x": rng.normal(0, 1, (20, 10)).astype(np.float32)}


def with_if_subgraph() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = x * 2 if flag else x - 1 (an If node with two subgraphs)."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one_f")
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Sub", ["x", "one_f"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then_g, else_branch=else_g)],
        "if",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [two, one],
    )
    rng = np.random.default_rng(6)
    return _model(graph), {
        "x": rng.normal(0, 1, (4, 5)).astype(np.float32),
        "flag": np.array(True),
    }


def with_loop() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """acc = x; repeat ``trips`` times: acc = acc * 0.5 + 1 (a Loop node with a body graph)."""
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["acc_in", "half"], ["scaled"]),
            helper.make_node("Add", ["scaled", "one"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 3]),
        ],
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)],
        "loop",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("trips", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    rng = np.random.default_rng(7)
    return _model(graph), {
        "x": rng.normal(0, 1, (5, 3)).astype(np.float32),
        "trips": np.array(4, np.int64),
    }


def with_external_data(folder: Path, location: str, data_file: Path | None = None) -> Path:
    """``folder/model.onnx`` = x + w where ``w`` (4 floats) lives in external data ``location``.

    The weights are written to ``data_file`` (default ``folder/location``).
    """
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")],
    )
    model = _model(graph)
    tensor = model.graph.initializer[0]
    target = data_file or folder / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "model.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def save(
    folder: Path, name: str, built: tuple[onnx.ModelProto, dict[str, np.ndarray]]
) -> tuple[Path, Path]:
    """Write ``name.onnx`` and ``name-samples.npz``; return both paths."""
    model, samples = built
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    npz = folder / f"{name}-samples.npz"
    np.savez(npz, **samples)
    return path, npz

"""Quantization of tensor models: calibration chosen by measurement, Softmax left in float,
fp16 for GPU profiles, the graph optimised offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tests.support.agents import PROFILE_NAME, make_env
from tests.tensors.conftest import Cli
from tests.tensors.digits_cnn import digits_conv_net

from edgefleet.core.io_schema import IoSchema, TensorSpec
from edgefleet.packager.tensor_quantize import (
    CALIBRATION_METHODS,
    HISTOGRAM_MAX_SAMPLES,
    calibration_batches,
    choose_variant,
)


@pytest.fixture(scope="module")
def digits() -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    return digits_conv_net()


def test_histogram_calibration_gets_equal_batches_of_a_bounded_subsample() -> None:
    """onnxruntime's histogram collector fails on batches of different sizes."""
    index = np.arange(135)
    minmax = calibration_batches(index, "MinMax", one_at_a_time=False)
    assert sum(len(b) for b in minmax) == 135 and len(minmax[-1]) == 7
    for method in ("Entropy", "Percentile"):
        batches = calibration_batches(index, method, one_at_a_time=False)
        assert {len(b) for b in batches} == {8}
        assert sum(len(b) for b in batches) <= HISTOGRAM_MAX_SAMPLES
    few = calibration_batches(np.arange(5), "Entropy", one_at_a_time=False)
    assert [len(b) for b in few] == [5]
    assert {len(b) for b in calibration_batches(index, "Entropy", one_at_a_time=True)} == {1}


def _schema(classes: int, shape: tuple[int, ...]) -> IoSchema:
    return IoSchema(
        inputs=(TensorSpec("image", "float32", ("N", *shape)),),
        outputs=(TensorSpec("probabilities", "float32", ("N", classes), role="probabilities"),),
    )


def _choose(model: Any, x: np.ndarray, schema: IoSchema, **kw: Any) -> Any:
    sessions: dict[int, Any] = {}

    def outputs_of(data: bytes, index: np.ndarray) -> list[Any]:
        if id(data) not in sessions:
            sessions[id(data)] = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return list(sessions[id(data)].run(None, {"image": x[index]}))

    return choose_variant(
        model, model.SerializeToString(), schema, len(x), int8_format="U8S8", min_cosine=0.99,
        feeds_for=lambda index: {"image": x[index]}, outputs_of=outputs_of, **kw,
    )  # fmt: skip


def test_trained_conv_net_gets_static_int8_with_the_calibration_measured(digits: Any) -> None:
    model, samples, _ = digits
    choice = _choose(model, samples["image"], _schema(10, (1, 8, 8)), requested="auto")
    q = choice.quantization
    static = [r for r in q["variants"] if r["variant"] == "static"]
    assert [r["calibration"] for r in static] == list(CALIBRATION_METHODS)
    assert q["method"] == "static", q["reason"]
    chosen = next(r for r in static if r["status"] == "chosen")
    assert chosen["worst_cosine"] == max(r["worst_cosine"] for r in static)
    assert chosen["outputs"]["probabilities"]["top1_agreement"] >= 0.98
    assert len(choice.model) <= 0.30 * len(model.SerializeToString())
    assert "Softmax" not in chosen["settings"]["op_types"]


def test_max_abs_diff_refuses_a_variant_the_cosine_would_pass(digits: Any) -> None:
    """``--max-abs-diff``: a bound on every element of every float output, besides the
    cosine; the reason names it."""
    model, samples, _ = digits
    x = samples["image"][:96]
    loose = _choose(model, x, _schema(10, (1, 8, 8)), requested="auto", max_abs_diff=1.0)
    assert loose.quantization["method"] == "static"
    assert loose.quantization["criteria"]["max_abs_diff"] == 1.0
    tight = _choose(model, x, _schema(10, (1, 8, 8)), requested="auto", max_abs_diff=0.0)
    static = [r for r in tight.quantization["variants"] if r["variant"] == "static"]
    assert static and all(r["status"] == "rejected" for r in static)
    assert all(r["worst_cosine"] >= 0.99 for r in static)  # the cosine alone would pass
    assert all("max abs diff" in r["reason"] for r in static)
    assert tight.quantization["method"] != "static"


def test_softmax_over_many_classes_stays_faithful(digits: Any) -> None:
    """A quantized Softmax has its output range pinned to [0, 1]: with 300 classes every
    probability is below one uint8 step (1/256) and the cosine fell to about 0.6."""
    from onnx import numpy_helper

    model, samples, _ = digits
    rng = np.random.default_rng(3)
    fc = next(t for t in model.graph.initializer if t.name == "fc_w")
    fc.CopyFrom(
        numpy_helper.from_array(rng.normal(0, 0.02, (1024, 300)).astype(np.float32), "fc_w")
    )
    bias = next(t for t in model.graph.initializer if t.name == "fc_b")
    bias.CopyFrom(numpy_helper.from_array(np.zeros(300, np.float32), "fc_b"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 300
    x = samples["image"][:64]
    choice = _choose(model, x, _schema(300, (1, 8, 8)), requested="auto")
    static = [r for r in choice.quantization["variants"] if r["variant"] == "static"]
    assert len(static) == len(CALIBRATION_METHODS)
    # Near-uniform random logits may swap their top class; the probabilities survive.
    assert all(r["outputs"]["probabilities"]["cosine"] >= 0.99 for r in static), static


def test_fp16_profile_packs_float16_weights_with_float32_io(
    cli: Cli, tmp_path: Path, digits: Any
) -> None:
    model, samples, _ = digits
    (tmp_path / "src").mkdir()
    path, npz = tmp_path / "src" / "digits.onnx", tmp_path / "src" / "digits.npz"
    path.write_bytes(model.SerializeToString())
    np.savez(npz, image=samples["image"][:48])
    env = make_env(tmp_path / "agent")
    registry = tmp_path / "registry"
    code, _, err = cli(
        "registry", "register", path, "--name", "d", "--reference-data", npz,
        "--registry", registry, "--task", "classifier",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli(
        "pack", "d", "--profile", "jetson-orin-nano", "--key", env.signer.key_path,
        "--out", tmp_path / "out", "--registry", registry, "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    q = report["quantization"]
    assert q["method"] == "fp16" and q["format"] == "float16", q["reason"]
    assert [r["variant"] for r in q["variants"]] == ["float32", "fp16"]
    assert [i["dtype"] for i in report["io_schema"]["inputs"]] == ["float32"]
    assert [o["dtype"] for o in report["io_schema"]["outputs"]] == ["float32"]
    assert report["validation"]["size_bytes"] < 0.6 * report["validation"]["float32_size_bytes"]


def test_graph_is_optimised_offline_and_checked(cli: Cli, tmp_path: Path) -> None:
    """A Conv followed by a constant Add: the basic level folds the Add into the bias."""
    from onnx import TensorProto, helper, numpy_helper
    from tests.tensors.graphs import _model

    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.3, (1, 4, 1, 1)).astype(np.float32), "shift"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], kernel_shape=[3, 3]),
            helper.make_node("Add", ["c", "shift"], ["a"]),
            helper.make_node("Identity", ["a"], ["y"]),
        ],
        "conv_add",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        inits,
    )
    src = tmp_path / "m.onnx"
    src.write_bytes(_model(graph).SerializeToString())
    np.savez(tmp_path / "m.npz", image=rng.random((12, 1, 8, 8)).astype(np.float32))
    env = make_env(tmp_path / "agent")
    code, _, err = cli(
        "registry", "register", src, "--name", "m", "--reference-data", tmp_path / "m.npz",
        "--registry", tmp_path / "reg", "--task", "raw",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli(
        "pack", "m", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
        "--out", tmp_path / "out", "--registry", tmp_path / "reg", "--quantize", "none",
    )  # fmt: skip
    assert code == 0, err
    assert "optimised offline at onnxruntime's basic level" in out and "3 -> 1 nodes" in out, out
    assert "fidelity      packaged vs the registered ONNX file" in out


def test_a_negative_max_abs_diff_is_refused(tmp_path: Path) -> None:
    from edgefleet.packager.build import PackRequest
    from edgefleet.packager.errors import DataFileError
    from edgefleet.packager.registry.refs import parse_ref

    with pytest.raises(DataFileError, match="--max-abs-diff must be a number >= 0"):
        PackRequest(
            ref=parse_ref("m:1"), profile="p", key_paths=(tmp_path / "k",), out_dir=tmp_path,
            max_abs_diff=-0.5,
        )  # fmt: skip

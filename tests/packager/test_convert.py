"""Conversion for a profile's onnxruntime, opset clean-up, graph rewrites and the fidelity check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.core.errors import ProfileError
from edgefleet.packager.convert import (
    check_fidelity,
    compare_outputs,
    convert_estimator,
    prepare_onnx,
    sklearn_outputs,
)
from edgefleet.packager.errors import FidelityError, UnsupportedModelError
from edgefleet.packager.graph import (
    ML_DOMAIN,
    describe_io,
    gemm_to_matmul,
    op_counts,
    target_for,
)
from edgefleet.packager.validate import Outputs, run_onnx


@pytest.mark.parametrize(
    ("ort", "opset", "ml", "ir"),
    [("1.17", 20, 4, 9), ("1.17.3", 20, 4, 9), ("1.20", 21, 4, 10), ("1.14", 18, 3, 8)],
)
def test_target_follows_the_onnxruntime_matrix(ort: str, opset: int, ml: int, ir: int) -> None:
    target = target_for(ort)
    assert (target.opset, target.ml_opset, target.ir_version) == (opset, ml, ir)


def test_target_refuses_too_old_runtime() -> None:
    with pytest.raises(ProfileError, match="too old"):
        target_for("1.10")


def test_newer_runtime_than_the_table_uses_its_last_row() -> None:
    assert target_for("9.0").opset == target_for("1.23").opset


def _opset_entries(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [(o.domain, o.version) for o in model.opset_import]


def test_conversion_dedupes_opsets_and_fits_the_target(models: dict[str, Any]) -> None:
    forest = models["iris_forest"].estimator
    converted = convert_estimator(forest, 4, target_for("1.17"))
    entries = _opset_entries(converted.model)
    domains = [d for d, _ in entries]
    assert len(domains) == len(set(domains)), entries  # skl2onnx alone writes '' twice
    assert dict(entries)[""] <= 20 and dict(entries)[ML_DOMAIN] <= 4
    assert converted.model.ir_version <= 9
    outputs = {o.role: o for o in converted.signature.outputs}
    assert outputs["label"].dtype == "int64" and outputs["probabilities"].shape == [-1, 3]
    assert converted.signature.input.to_dict() == {
        "name": "input",
        "dtype": "float32",
        "shape": [-1, 4],
    }


def test_duplicate_opset_breaks_the_quantizer_and_normalising_fixes_it(
    models: dict[str, Any], tmp_path: Path
) -> None:
    """The reason for the clean-up: onnxruntime's quantizer chokes on a doubled ai.onnx import."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    converted = convert_estimator(models["digits_mlp"].estimator, 64, target_for("1.17"))
    doubled = onnx.ModelProto()
    doubled.CopyFrom(converted.model)
    doubled.opset_import.append(helper.make_opsetid("", dict(_opset_entries(doubled))[""]))
    with pytest.raises(Exception, match="ai.onnx"):
        quantize_dynamic(doubled, tmp_path / "a.onnx", weight_type=QuantType.QInt8)
    fixed = prepare_onnx(doubled, target_for("1.17"))
    quantize_dynamic(fixed.model, tmp_path / "b.onnx", weight_type=QuantType.QInt8)
    assert (tmp_path / "b.onnx").stat().st_size < len(fixed.to_bytes())


def test_fidelity_passes_for_a_faithful_conversion(models: dict[str, Any]) -> None:
    files = models["wine_pipeline"]
    x32 = files.x_test.astype(np.float32)
    converted = convert_estimator(files.estimator, x32.shape[1], target_for("1.17"))
    report = check_fidelity(sklearn_outputs(files.estimator, x32), converted, x32, "sklearn")
    assert report.passed and report.label_agreement == 1.0
    assert report.max_probability_diff is not None and report.max_probability_diff < 1e-4


def test_fidelity_refuses_with_the_numbers(models: dict[str, Any]) -> None:
    files = models["wine_pipeline"]
    x32 = files.x_test.astype(np.float32)
    converted = convert_estimator(files.estimator, x32.shape[1], target_for("1.17"))
    truth = sklearn_outputs(files.estimator, x32)
    assert truth.probabilities is not None and truth.labels is not None
    shifted = Outputs(labels=truth.labels, probabilities=truth.probabilities + 3e-3)
    with pytest.raises(FidelityError, match=r"max probability difference 0\.003"):
        check_fidelity(shifted, converted, x32, "sklearn")
    flipped = truth.labels.copy()
    flipped[0] = (flipped[0] + 1) % 3
    with pytest.raises(FidelityError, match=r"labels agree on 9\d\.\d\d% of 54 rows"):
        check_fidelity(
            Outputs(labels=flipped, probabilities=truth.probabilities), converted, x32, "x"
        )


def test_regression_fidelity_is_relative() -> None:
    ref = Outputs(values=np.array([1000.0, 2.0]))
    assert compare_outputs(ref, Outputs(values=np.array([1000.05, 2.0])), "x").passed
    assert not compare_outputs(ref, Outputs(values=np.array([1000.5, 2.0])), "x").passed


def _gemm_model(trans_b: bool) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    stored = w.T.copy() if trans_b else w
    node = helper.make_node("Gemm", ["input", "W", "B"], ["logits"], transB=int(trans_b))
    soft = helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)
    graph = helper.make_graph(
        [node, soft],
        "gemm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(stored, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, w, b


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_rewrite_keeps_outputs(trans_b: bool) -> None:
    model, _, _ = _gemm_model(trans_b)
    rewritten, count = gemm_to_matmul(model)
    assert count == 1
    ops = {op for _, op in op_counts(rewritten)}
    assert "Gemm" not in ops and {"MatMul", "Add"} <= ops
    assert len(rewritten.graph.initializer) == 2  # the transposed copy replaced the original
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    signature = describe_io(model)
    a = run_onnx(model.SerializeToString(), signature, x).probabilities
    b = run_onnx(rewritten.SerializeToString(), signature, x).probabilities
    assert a is not None and b is not None and np.allclose(a, b, atol=1e-6)


def test_probabilities_only_classifier_gets_a_label_output() -> None:
    model, _, _ = _gemm_model(False)
    converted = prepare_onnx(model, target_for("1.17"))
    roles = {o.role: o for o in converted.signature.outputs}
    assert roles["label"].dtype == "int64" and roles["label"].shape == [-1]
    x = np.random.default_rng(2).normal(size=(7, 6)).astype(np.float32)
    out = run_onnx(converted.to_bytes(), converted.signature, x)
    assert out.probabilities is not None and out.labels is not None
    assert np.array_equal(out.labels, out.probabilities.argmax(axis=1))


def _bad_graph(kind: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    inputs = [x]
    if kind == "two_inputs":
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 3]))
    if kind == "double_input":
        inputs = [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 3])]
        y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 3])
    if kind == "three_d":
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 3])]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 3])
    graph = helper.make_graph(nodes, "bad", inputs, [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize(
    ("kind", "message"),
    [("two_inputs", "one input"), ("double_input", "float32"), ("three_d", "float32 of shape")],
)
def test_unpackable_onnx_signatures(kind: str, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message):
        describe_io(_bad_graph(kind))

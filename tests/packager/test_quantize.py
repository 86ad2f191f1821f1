"""Which variants apply, how each is built, and the auto choice rule."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from edgefleet.packager.convert import convert_estimator
from edgefleet.packager.errors import QuantizationNotApplicableError
from edgefleet.packager.graph import describe_io, op_counts, target_for
from edgefleet.packager.quantize import (
    build_dynamic,
    build_fp16,
    build_variant,
    plan_variants,
)
from edgefleet.packager.selection import VariantRow, choose_variant
from edgefleet.packager.validate import run_onnx

MLP_OPS = Counter({("ai.onnx", "MatMul"): 2, ("ai.onnx", "Add"): 2, ("ai.onnx", "Relu"): 1})
FOREST_OPS = Counter({("ai.onnx.ml", "TreeEnsembleClassifier"): 1})
LINEAR_OPS = Counter({("ai.onnx.ml", "LinearClassifier"): 1, ("ai.onnx.ml", "Normalizer"): 1})
CONV_OPS = Counter({("ai.onnx", "Conv"): 1, ("ai.onnx", "Relu"): 1, ("ai.onnx", "Gemm"): 1})


@pytest.mark.parametrize(
    ("name", "requested", "profile_q", "ops", "candidates", "skipped"),
    [
        ("mlp_int8", "auto", "int8", MLP_OPS, ("float32", "static", "dynamic"), set()),
        ("conv_int8", "auto", "int8", CONV_OPS, ("float32", "static", "dynamic"), set()),
        ("forest_int8", "auto", "int8", FOREST_OPS, ("float32",), {"dynamic", "static"}),
        ("linear_int8", "auto", "int8", LINEAR_OPS, ("float32",), {"dynamic", "static"}),
        ("mlp_fp16", "auto", "fp16", MLP_OPS, ("float32", "fp16"), set()),
        ("forest_fp16", "auto", "fp16", FOREST_OPS, ("float32",), {"fp16"}),
        ("mlp_profile_none", "auto", "none", MLP_OPS, ("float32",), set()),
        ("mlp_forced_none", "none", "int8", MLP_OPS, ("float32",), set()),
        ("explicit_static", "static", "int8", CONV_OPS, ("float32", "static"), set()),
        ("explicit_fp16_cpu", "fp16", "int8", MLP_OPS, ("float32", "fp16"), set()),
    ],
)
def test_plan_variants(
    name: str,
    requested: str,
    profile_q: str,
    ops: Counter[tuple[str, str]],
    candidates: tuple[str, ...],
    skipped: set[str],
) -> None:
    plan = plan_variants(requested, profile_q, "p", ops)
    assert plan.candidates == candidates
    assert set(plan.not_applicable) == skipped


def test_ml_only_graph_is_not_applicable_with_the_reason() -> None:
    plan = plan_variants("auto", "int8", "rpi4-arm64", FOREST_OPS)
    assert "ai.onnx.ml operators (TreeEnsembleClassifier)" in plan.reason
    assert "int8 quantization does not cover" in plan.not_applicable["dynamic"]


@pytest.mark.parametrize("requested", ["dynamic", "static", "fp16"])
def test_explicit_variant_on_a_tree_graph_is_refused(requested: str) -> None:
    with pytest.raises(QuantizationNotApplicableError, match=f"--quantize {requested}"):
        plan_variants(requested, "int8", "p", FOREST_OPS)


def test_profile_without_quantization_says_so() -> None:
    assert "turns quantization off" in plan_variants("auto", "none", "x", MLP_OPS).reason


# -- the auto rule (pure) ---------------------------------------------------------------


def _row(name: str, size: int, drop: float, p50: float) -> VariantRow:
    return VariantRow(
        name, "measured", size_bytes=size, metric=0.9 - drop, metric_drop=drop, p50_ms=p50
    )


@pytest.mark.parametrize(
    ("case", "rows", "gate", "expected"),
    [
        (
            "smallest_qualifying",
            [_row("float32", 100, 0, 1.0), _row("dynamic", 27, 0.002, 1.0)],
            True,
            "dynamic",
        ),
        (
            "accuracy_too_low",
            [_row("float32", 100, 0, 1.0), _row("dynamic", 27, 0.02, 0.9)],
            True,
            "float32",
        ),
        (
            "too_slow",
            [_row("float32", 100, 0, 1.0), _row("dynamic", 27, 0.0, 1.2)],
            True,
            "float32",
        ),
        (
            "slow_but_not_gated",
            [_row("float32", 100, 0, 1.0), _row("fp16", 50, 0.0, 1.5)],
            False,
            "fp16",
        ),
        (
            "just_within_10pct",
            [_row("float32", 100, 0, 1.0), _row("dynamic", 27, 0.0, 1.099)],
            True,
            "dynamic",
        ),
        (
            "smaller_of_two",
            [
                _row("float32", 100, 0, 1.0),
                _row("dynamic", 30, 0.0, 1.0),
                _row("static", 28, 0.001, 0.8),
            ],
            True,
            "static",
        ),
        (
            "skip_the_bad_smallest",
            [
                _row("float32", 100, 0, 1.0),
                _row("dynamic", 30, 0.0, 1.0),
                _row("static", 28, 0.5, 0.8),
            ],
            True,
            "dynamic",
        ),
    ],
)
def test_choose_variant(case: str, rows: list[VariantRow], gate: bool, expected: str) -> None:
    marked, chosen, reason = choose_variant(rows, max_drop=0.01, gate_latency=gate)
    assert chosen == expected, reason
    assert [r.name for r in marked if r.status == "chosen"] == [expected]
    assert reason.startswith(expected)


def test_dynamic_is_used_only_where_no_static_variant_qualifies() -> None:
    rows = [_row("float32", 100, 0, 1.0), _row("static", 29, 0.0, 1.0), _row("dynamic", 27, 0, 1.0)]
    marked, chosen, _ = choose_variant(rows, max_drop=0.01)
    assert chosen == "static"
    assert "dynamic int8 is used only where no static variant does" in marked[2].reason
    rows[1] = _row("static", 29, 0.5, 1.0)
    assert choose_variant(rows, max_drop=0.01)[1] == "dynamic"


def test_batch_dependent_variant_needs_the_flag() -> None:
    dependent = replace(_row("dynamic", 27, 0.0, 1.0), batch_dependence=0.0855)
    rows = [_row("float32", 100, 0, 1.0), dependent]
    marked, chosen, _ = choose_variant(rows, max_drop=0.01)
    assert chosen == "float32" and marked[1].reason.startswith("batch-dependent: a row scored")
    assert choose_variant(rows, max_drop=0.01, allow_batch_dependent=True)[1] == "dynamic"


def test_latency_is_not_gated_off_the_target_architecture() -> None:
    from edgefleet.core.profiles import load_profile
    from edgefleet.packager.selection import latency_not_gated_because

    pi, gateway = load_profile("rpi4-arm64"), load_profile("x86_64-gateway")
    cpu = ["CPUExecutionProvider"]
    assert latency_not_gated_because(gateway, cpu, machine="x86_64") is None
    assert "architecture is aarch64" in str(latency_not_gated_because(pi, cpu, machine="x86_64"))
    assert latency_not_gated_because(pi, cpu, machine="aarch64") is None
    jetson = load_profile("jetson-orin-nano")
    assert "CUDAExecutionProvider is not available" in str(
        latency_not_gated_because(jetson, cpu, machine="aarch64")
    )


def test_failed_variant_is_listed_not_chosen() -> None:
    rows = [_row("float32", 100, 0, 1.0), VariantRow("static", "failed", "calibration exploded")]
    marked, chosen, _ = choose_variant(rows, max_drop=0.01)
    assert chosen == "float32"
    assert marked[1].status == "failed" and marked[1].reason == "calibration exploded"


def test_preferred_variant_wins_when_eligible() -> None:
    rows = [
        _row("float32", 100, 0, 1.0),
        _row("dynamic", 30, 0.0, 1.0),
        _row("static", 28, 0.0, 1.0),
    ]
    assert choose_variant(rows, max_drop=0.01, prefer="dynamic")[1] == "dynamic"


# -- builders on real graphs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "zero_point_type"), [("S8S8", TensorProto.INT8), ("U8S8", TensorProto.UINT8)]
)
def test_static_qdq_follows_the_int8_format(
    fmt: str, zero_point_type: int, conv_model: onnx.ModelProto
) -> None:
    model = conv_model
    calibration = np.random.default_rng(3).uniform(0, 1, (64, 64)).astype(np.float32)
    before = model.SerializeToString()
    built = build_variant(
        "static", model, input_name="input", calibration=calibration, int8_format=fmt
    )
    assert model.SerializeToString() == before  # the caller's graph is untouched
    quantized = onnx.load_model_from_string(built.model)
    ops = {op for _, op in op_counts(quantized)}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    activation_zero_points = [
        init.data_type
        for node in quantized.graph.node
        if node.op_type == "QuantizeLinear"
        for init in quantized.graph.initializer
        if init.name == node.input[2]
    ]
    assert activation_zero_points and set(activation_zero_points) == {zero_point_type}
    assert built.format == fmt and built.settings["calibration_rows"] == 64
    out = run_onnx(built.model, describe_io(model), calibration[:5])
    assert out.probabilities is not None and out.probabilities.shape == (5, 10)


def test_dynamic_quantizes_an_mlp_to_about_a_quarter(models: dict[str, Any]) -> None:
    converted = convert_estimator(models["digits_mlp"].estimator, 64, target_for("1.17"))
    built = build_dynamic(converted.model)
    ratio = len(built.model) / len(converted.to_bytes())
    assert ratio < 0.35
    assert "MatMulInteger" in {op for _, op in op_counts(onnx.load_model_from_string(built.model))}


def test_dynamic_on_gemm_graph_quantizes_after_the_rewrite(conv_model: onnx.ModelProto) -> None:
    built = build_variant(
        "dynamic", conv_model, input_name="input", calibration=np.zeros((1, 64)), int8_format="S8S8"
    )
    assert built.settings["gemm_rewritten_as_matmul"] == 1


def test_fp16_halves_weights_and_keeps_float32_io(models: dict[str, Any]) -> None:
    converted = convert_estimator(models["digits_mlp"].estimator, 64, target_for("1.17"))
    built = build_fp16(converted.model)
    # Weights halve; names, casts and graph structure do not.
    assert len(built.model) < 0.7 * len(converted.to_bytes())
    signature = describe_io(onnx.load_model_from_string(built.model))
    assert signature.input.dtype == "float32"
    x = models["digits_mlp"].x_test[:20].astype(np.float32)
    a = run_onnx(converted.to_bytes(), converted.signature, x)
    b = run_onnx(built.model, signature, x)
    assert a.probabilities is not None and b.probabilities is not None
    assert np.max(np.abs(a.probabilities - b.probabilities)) < 1e-2


def test_builder_refuses_a_graph_it_would_not_change(models: dict[str, Any]) -> None:
    converted = convert_estimator(models["iris_forest"].estimator, 4, target_for("1.17"))
    with pytest.raises(QuantizationNotApplicableError, match="nothing to quantize"):
        build_dynamic(converted.model)

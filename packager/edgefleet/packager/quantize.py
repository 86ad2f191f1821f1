"""Quantization variants: which apply to a graph and profile, and how each is built.

Variants (names as ``--quantize`` spells them):

- ``float32``: the converted model unchanged; always a candidate and the baseline;
- ``dynamic``: int8 weights, activations quantized at run time (uint8, so the
  format is U8S8) for MatMul/Gemm/LSTM/GRU/Attention graphs. Gemm nodes with
  constant weights are first rewritten as MatMul + Add because onnxruntime's
  dynamic quantizer skips Gemm;
- ``static``: QDQ int8 with activation ranges calibrated (MinMax) on the
  reference data, for Conv, MatMul and Gemm graphs; S8S8 or U8S8 as the
  profile's ``int8_format`` says, weights per channel. Only the compute
  operators (:data:`STATIC_OP_TYPES`) are quantized: onnxruntime pins a
  quantized Softmax's output range to [0, 1] (a uint8 step of 1/256), which
  erased every probability below 0.004 of a 1000-class net (cosine 0.65 against
  float32; 0.99995 with Softmax left in float);
- ``fp16``: float16 weights and compute with float32 inputs and outputs, for
  profiles whose ``quantization`` is ``fp16`` (GPU providers).

Invariants: a graph with nothing to quantize (e.g. only ``ai.onnx.ml``
operators: trees, linear classifiers, SVMs) is reported ``not_applicable``
with the reason, never quantized into a no-op; a builder whose output contains
no quantized operator raises :class:`QuantizationNotApplicableError` rather
than returning a copy of the float32 model.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.packager.errors import QuantizationError, QuantizationNotApplicableError
from edgefleet.packager.graph import ML_DOMAIN, gemm_to_matmul, op_counts

QUANTIZE_CHOICES = ("auto", "none", "dynamic", "static", "fp16")
VARIANTS = ("float32", "dynamic", "static", "fp16")

DYNAMIC_OPS = frozenset({"MatMul", "Gemm", "LSTM", "GRU", "Attention"})
STATIC_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# What static QDQ quantizes: the operators that hold the weights (see the docstring).
STATIC_OP_TYPES = sorted(STATIC_OPS)
FLOAT_COMPUTE_OPS = DYNAMIC_OPS | STATIC_OPS
_QUANTIZED_MARKERS = frozenset(
    {
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "DynamicQuantizeLSTM",
        "QAttention",
        "DynamicQuantizeMatMul",
        "QuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
    }
)
CALIBRATION_MAX_ROWS = 512
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class VariantPlan:
    """Variants to build and measure, and why the others are left out."""

    candidates: tuple[str, ...]
    not_applicable: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # why only float32 remains, when that is the case


def graph_reason(counts: Counter[tuple[str, str]], variant: str) -> str | None:
    """Why ``variant`` cannot apply to a graph with these operators (``None``: it can)."""
    default_ops = {op for domain, op in counts if domain == "ai.onnx"}
    ml_ops = sorted({op for domain, op in counts if domain == ML_DOMAIN})
    wanted = {"dynamic": DYNAMIC_OPS, "static": STATIC_OPS, "fp16": FLOAT_COMPUTE_OPS}[variant]
    if default_ops & wanted:
        return None
    if ml_ops and not default_ops & FLOAT_COMPUTE_OPS:
        return (
            f"the graph is made of ai.onnx.ml operators ({', '.join(ml_ops)}), "
            f"which {'float16' if variant == 'fp16' else 'int8'} quantization does not cover"
        )
    names = {
        "dynamic": "MatMul, Gemm, LSTM or GRU",
        "static": "Conv, MatMul or Gemm",
        "fp16": "MatMul, Gemm or Conv",
    }
    return f"the graph has no {names[variant]} operators to quantize"


def plan_variants(
    requested: str, profile_quantization: str, profile_name: str, counts: Counter[tuple[str, str]]
) -> VariantPlan:
    """Pure: the candidate list for ``--quantize requested`` on this graph and profile.

    An explicit variant that cannot apply raises :class:`QuantizationNotApplicableError`.
    """
    if requested not in QUANTIZE_CHOICES:
        raise QuantizationNotApplicableError(
            f"unknown --quantize {requested!r} (choose from {', '.join(QUANTIZE_CHOICES)})"
        )
    if requested == "none":
        return VariantPlan(("float32",), {}, "quantization turned off (--quantize none)")
    if requested != "auto":
        why = graph_reason(counts, requested)
        if why is not None:
            raise QuantizationNotApplicableError(f"--quantize {requested} does not apply: {why}")
        return VariantPlan(("float32", requested))
    if profile_quantization == "none":
        reason = f"profile {profile_name} turns quantization off"
        return VariantPlan(("float32",), {}, reason)
    # Static first: dynamic int8 is kept only where no static variant qualifies.
    wanted = ("static", "dynamic") if profile_quantization == "int8" else ("fp16",)
    candidates = ["float32"]
    skipped: dict[str, str] = {}
    for variant in wanted:
        why = graph_reason(counts, variant)
        if why is None:
            candidates.append(variant)
        else:
            skipped[variant] = why
    reason = ""
    if len(candidates) == 1:
        reasons = sorted(set(skipped.values()))
        reason = "; ".join(reasons)
    return VariantPlan(tuple(candidates), skipped, reason)


@dataclass(frozen=True)
class BuiltVariant:
    """One variant's model bytes and how it was made."""

    name: str
    model: bytes
    format: str
    settings: dict[str, Any]


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # The quantizer logs advice ("consider pre-processing") on the root logger,
    # which would land on stderr through logging's last-resort handler; its
    # histogram calibrators print progress on stdout, where `pack --json` writes JSON.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _check_quantized(name: str, data: bytes) -> None:
    ops = {op for _, op in op_counts(onnx.load_model_from_string(data))}
    if not ops & _QUANTIZED_MARKERS:
        raise QuantizationNotApplicableError(
            f"{name} quantization found nothing to quantize in this graph"
        )


def build_dynamic(model: onnx.ModelProto) -> BuiltVariant:
    """Dynamic int8 (weights QInt8, activations uint8 at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared, rewritten = gemm_to_matmul(model)
    op_types = sorted(DYNAMIC_OPS - {"Gemm"})
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        out = Path(tmp) / "dynamic.onnx"
        try:
            quantize_dynamic(
                prepared, out, weight_type=QuantType.QInt8, op_types_to_quantize=op_types
            )
            data = out.read_bytes()
        except Exception as e:
            raise QuantizationError(f"dynamic int8 quantization failed: {e}") from e
    _check_quantized("dynamic int8", data)
    settings = {
        "weight_type": "int8",
        "activation_type": "uint8 (dynamic)",
        "per_channel": False,
        "op_types": op_types,
        "gemm_rewritten_as_matmul": rewritten,
    }
    return BuiltVariant("dynamic", data, "U8S8", settings)


def _calibration_reader(input_name: str, x32: np.ndarray) -> Any:
    """Reference rows handed to onnxruntime's calibrator in small batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(
                [
                    {input_name: x32[i : i + CALIBRATION_BATCH]}
                    for i in range(0, len(x32), CALIBRATION_BATCH)
                ]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return Batches()


def calibration_rows(x32: np.ndarray) -> np.ndarray:
    """Every fourth reference row (at most 512): the rows static calibration sees."""
    return x32[::4][:CALIBRATION_MAX_ROWS]


def static_qdq(model: onnx.ModelProto, reader: Any, int8_format: str, method: str) -> bytes:
    """QDQ int8 bytes of ``model`` (weights per channel, :data:`STATIC_OP_TYPES` only),
    activation ranges from ``reader`` by ``method`` (``MinMax``, ``Entropy`` or
    ``Percentile``). Raises :class:`QuantizationError` with the quantizer's first line."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    activation = QuantType.QInt8 if int8_format == "S8S8" else QuantType.QUInt8
    # The quantizer may move the initializers of the ModelProto it is given to external
    # data in a temporary folder it then deletes: it only ever sees a private copy.
    own = onnx.ModelProto()
    own.CopyFrom(model)
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        out = Path(tmp) / "static.onnx"
        try:
            quantize_static(
                own,
                out,
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=getattr(CalibrationMethod, method),
                op_types_to_quantize=STATIC_OP_TYPES,
            )
            data = out.read_bytes()
        except Exception as e:  # the quantizer raises many types with long texts
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise QuantizationError(f"static int8 quantization failed: {first}") from e
    _check_quantized("static int8", data)
    return data


def build_static(
    model: onnx.ModelProto, input_name: str, calibration: np.ndarray, int8_format: str
) -> BuiltVariant:
    """Static QDQ int8 calibrated (MinMax) on ``calibration`` rows."""
    if not np.all(np.isfinite(calibration)):
        raise QuantizationError("calibration data holds NaN or infinite values")
    reader = _calibration_reader(input_name, calibration.astype(np.float32))
    data = static_qdq(model, reader, int8_format, "MinMax")
    settings = {
        "quant_format": "QDQ",
        "activation_type": "int8" if int8_format == "S8S8" else "uint8",
        "weight_type": "int8",
        "per_channel": True,
        "op_types": STATIC_OP_TYPES,
        "calibration": "MinMax",
        "calibration_rows": int(len(calibration)),
    }
    return BuiltVariant("static", data, int8_format, settings)


def build_fp16(model: onnx.ModelProto) -> BuiltVariant:
    """float16 weights and compute, float32 inputs and outputs."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as e:  # pragma: no cover - shipped with onnxruntime
        raise QuantizationError(f"float16 conversion is unavailable: {e}") from e
    try:
        with _quiet_quantizer():
            converted = convert_float_to_float16(model, keep_io_types=True)
    except Exception as e:
        raise QuantizationError(f"float16 conversion failed: {e}") from e
    if not any(i.data_type == onnx.TensorProto.FLOAT16 for i in converted.graph.initializer):
        raise QuantizationNotApplicableError("float16 conversion found no float weights")
    settings = {"keep_io_types": True, "converter": "onnxruntime.transformers.float16"}
    return BuiltVariant("fp16", converted.SerializeToString(), "float16", settings)


def build_variant(
    name: str, model: onnx.ModelProto, *, input_name: str, calibration: np.ndarray, int8_format: str
) -> BuiltVariant:
    if name == "float32":
        return BuiltVariant("float32", model.SerializeToString(), "float32", {})
    # onnxruntime's quantizers may rewrite the ModelProto they are given (large
    # initializers moved to external data); they only ever see a private copy.
    private = onnx.ModelProto()
    private.CopyFrom(model)
    model = private
    if name == "dynamic":
        return build_dynamic(model)
    if name == "static":
        return build_static(model, input_name, calibration, int8_format)
    if name == "fp16":
        return build_fp16(model)
    raise QuantizationNotApplicableError(f"unknown variant {name!r}")

"""int8 for tensor models: static QDQ for conv nets, dynamic where no static variant qualifies.

A format-2 model whose graph has Conv layers and whose data inputs are
float32 gets one candidate besides its float graph: static QDQ int8 (weights
int8 per channel, activations int8 or uint8 as the profile's ``int8_format``
says, MinMax ranges) calibrated on every fourth reference sample (at most
:data:`CALIBRATION_MAX_SAMPLES`; all samples when there are fewer than 8),
fed by input name along the declared batch axes.

It qualifies when, on the other (held-out) samples, every float output keeps
a cosine similarity of at least ``min_cosine`` (default 0.99) with the float
graph's, every other output is identical, and it is smaller. ``--quantize
auto`` keeps it when it qualifies and says why otherwise; ``--quantize
static`` refuses a graph it does not apply to (exit 2) and a variant that
does not qualify (exit 1).

Dynamic int8 (MatMul/Gemm/LSTM/GRU/Attention) is measured by ``auto`` only
when no static variant qualifies, under the same criteria plus one: its
activation scales are computed per batch, so a sample scored alone must give
what it gives inside a batch (:func:`batch_dependence`), unless the user
passes ``--allow-batch-dependent``. fp16 is not offered for tensor models in
this version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.core.io_schema import IoSchema
from edgefleet.packager.errors import QuantizationError, QuantizationNotApplicableError
from edgefleet.packager.graph import op_counts
from edgefleet.packager.quantize import _check_quantized, _quiet_quantizer, graph_reason

CALIBRATION_MAX_SAMPLES = 256
CALIBRATION_BATCH = 8
MIN_COSINE = 0.99


@dataclass(frozen=True)
class TensorVariant:
    """One measured variant of a tensor model."""

    name: str  # "float32" | "static"
    model: bytes
    format: str  # "float32" | "U8S8" | "S8S8"
    settings: dict[str, Any]


def static_reason(model: onnx.ModelProto, schema: IoSchema) -> str | None:
    """Why static int8 cannot apply (None: it can)."""
    why = graph_reason(op_counts(model), "static")
    if why is not None:
        return why
    data = [s for s in schema.inputs if s.role == "data"]
    odd = [s.name for s in data if s.dtype != "float32"]
    if odd:
        return f"static int8 calibrates float32 inputs; {', '.join(odd)} are not"
    return None


def split_samples(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, evaluation) sample indexes: every fourth sample calibrates."""
    index = np.arange(n)
    if n < 8:
        return index, index
    return index[::4][:CALIBRATION_MAX_SAMPLES], index[index % 4 != 0]


def _reader(batches: Iterator[dict[str, np.ndarray]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Samples(CalibrationDataReader):  # type: ignore[misc]
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    return Samples()


def build_static(
    model: onnx.ModelProto,
    schema: IoSchema,
    feeds_for: Callable[[np.ndarray], dict[str, np.ndarray]],
    calibration: np.ndarray,
    int8_format: str,
) -> TensorVariant:
    """Static QDQ int8 of ``model`` calibrated on the samples ``calibration`` indexes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    one_at_a_time = any(s.fixed_batch == 1 for s in schema.inputs)
    size = 1 if one_at_a_time else CALIBRATION_BATCH
    chunks = [calibration[i : i + size] for i in range(0, len(calibration), size)]
    batches = (feeds_for(chunk) for chunk in chunks)
    activation = QuantType.QInt8 if int8_format == "S8S8" else QuantType.QUInt8
    # onnxruntime's quantizer moves the initializers of the ModelProto it is given to
    # external data in a temporary folder it then deletes: quantizing the caller's
    # model left it pointing at missing files (the dynamic variant built next failed).
    own = onnx.ModelProto()
    own.CopyFrom(model)
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        out = Path(tmp) / "static.onnx"
        try:
            quantize_static(
                own,
                out,
                _reader(batches),
                quant_format=QuantFormat.QDQ,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
            data = out.read_bytes()
        except Exception as e:  # the quantizer raises many types with long texts
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise QuantizationError(f"static int8 quantization failed: {first}") from e
    try:
        _check_quantized("static int8", data)
    except QuantizationNotApplicableError:
        raise
    settings = {
        "quant_format": "QDQ",
        "activation_type": "int8" if int8_format == "S8S8" else "uint8",
        "weight_type": "int8",
        "per_channel": True,
        "calibration": "MinMax",
        "calibration_samples": int(len(calibration)),
    }
    return TensorVariant("static", data, int8_format, settings)


def agreement(
    schema: IoSchema, base: list[Any], other: list[Any], min_cosine: float
) -> tuple[bool, dict[str, Any]]:
    """Whether ``other`` outputs stay faithful to ``base`` (see the module docstring)."""
    rows: dict[str, Any] = {}
    ok = True
    for spec, a, b in zip(schema.outputs, base, other, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            rows[spec.name] = {"shape_differs": True}
            ok = False
            continue
        if a.dtype.kind == "f":
            x, y = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
            norms = float(np.linalg.norm(x) * np.linalg.norm(y))
            diff = float(np.max(np.abs(x - y))) if x.size else 0.0
            cosine = float(np.dot(x, y) / norms) if norms > 0 else (1.0 if diff == 0 else 0.0)
            rows[spec.name] = {"cosine": cosine, "max_abs_diff": diff}
            ok &= cosine >= min_cosine
        else:
            same = bool(np.array_equal(a.astype(str), b.astype(str)))
            rows[spec.name] = {"equal": same}
            ok &= same
    return ok, rows


@dataclass(frozen=True)
class Choice:
    """The variant that goes into the bundle, the manifest's ``quantization`` and smoke atol."""

    model: bytes
    quantization: dict[str, Any]
    smoke_atol: float


FLOAT_SMOKE_ATOL = 1e-3  # relative to max(1, |expected|): float kernels differ across CPUs
INT8_SMOKE_FLOOR, INT8_SMOKE_CAP = 0.02, 0.1


def batch_dependence(
    schema: IoSchema, data: bytes, index: np.ndarray, outputs_of: Outputs
) -> float:
    """Largest difference (scaled by max(1, |value|)) between a sample run alone and the
    same sample inside a batch; 0 for graphs fed one sample at a time anyway."""
    if len(index) < 2 or any(s.fixed_batch == 1 for s in schema.inputs):
        return 0.0
    together = outputs_of(data, index)
    worst = 0.0
    for i, sample in enumerate(index):
        alone = outputs_of(data, np.asarray([sample]))
        for spec, batch_out, one_out in zip(schema.outputs, together, alone, strict=True):
            if spec.batch_axis is None or np.asarray(batch_out).dtype.kind != "f":
                continue
            a = np.take(np.asarray(batch_out), [i], axis=spec.batch_axis).astype(np.float64)
            b = np.asarray(one_out, dtype=np.float64)
            if a.shape == b.shape and a.size:
                scale = max(1.0, float(np.max(np.abs(a))))
                worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


Outputs = Callable[[bytes, np.ndarray], list[Any]]
BATCH_DEPENDENCE_TOL = 1e-5


def _build(
    name: str,
    model: onnx.ModelProto,
    schema: IoSchema,
    feeds_for: Callable[[np.ndarray], dict[str, np.ndarray]],
    calibration: np.ndarray,
    int8_format: str,
) -> TensorVariant:
    if name == "static":
        return build_static(model, schema, feeds_for, calibration, int8_format)
    from edgefleet.packager.quantize import build_dynamic

    built = build_dynamic(model)
    return TensorVariant("dynamic", built.model, built.format, dict(built.settings))


def choose_variant(
    model: onnx.ModelProto,
    packaged: bytes,
    schema: IoSchema,
    n: int,
    *,
    requested: str,
    int8_format: str,
    min_cosine: float,
    allow_batch_dependent: bool = False,
    feeds_for: Callable[[np.ndarray], dict[str, np.ndarray]],
    outputs_of: Outputs,
) -> Choice:
    """float32, or the first int8 variant that qualifies (module docstring): static for
    Conv graphs, then dynamic (MatMul/Gemm/LSTM/GRU/Attention) only where no static
    variant qualifies, and only when batch-independent or ``allow_batch_dependent``."""
    float_row: dict[str, Any] = {
        "variant": "float32",
        "size_bytes": len(packaged),
        "status": "chosen",
    }
    rows: list[dict[str, Any]] = [float_row]
    not_applicable: dict[str, str] = {}
    base: dict[str, Any] = {
        "requested": requested,
        "method": "none",
        "variant": "float32",
        "format": "float32",
        "settings": {},
        "not_applicable": not_applicable,
        "criteria": {
            "min_cosine": min_cosine,
            "non_float_outputs": "identical",
            "allow_batch_dependent": allow_batch_dependent,
        },
        "variants": rows,
    }
    if requested == "none":
        return Choice(packaged, {**base, "reason": "--quantize none"}, FLOAT_SMOKE_ATOL)
    wanted = ["static", "dynamic"] if requested == "auto" else [requested]
    reasons: list[str] = []
    calibration, evaluation = split_samples(n)
    evaluation = evaluation[:64]
    float_out: list[Any] | None = None
    for name in wanted:
        why = (
            static_reason(model, schema)
            if name == "static"
            else graph_reason(op_counts(model), "dynamic")
        )
        if why is not None:
            if requested == name:
                raise QuantizationNotApplicableError(f"--quantize {name} does not apply: {why}")
            not_applicable[name] = why
            reasons.append(f"{name} int8: {why}")
            continue
        try:
            variant = _build(name, model, schema, feeds_for, calibration, int8_format)
        except (QuantizationError, QuantizationNotApplicableError) as e:
            if requested == name:
                raise
            rows.append({"variant": name, "status": "failed", "reason": str(e)})
            reasons.append(f"{name} int8 failed: {e}")
            continue
        if float_out is None:
            float_out = outputs_of(packaged, evaluation)
        ok, per_output = agreement(
            schema, float_out, outputs_of(variant.model, evaluation), min_cosine
        )
        worst = min((r["cosine"] for r in per_output.values() if "cosine" in r), default=1.0)
        dependence = batch_dependence(schema, variant.model, evaluation[:16], outputs_of)
        row: dict[str, Any] = {
            "variant": name,
            "size_bytes": len(variant.model),
            "format": variant.format,
            "settings": variant.settings,
            "evaluation_samples": int(len(evaluation)),
            "outputs": per_output,
            "batch_dependence": dependence,
        }
        problem = None
        if not ok:
            problem = f"{name} int8 keeps a cosine of {worst:.4f} (< {min_cosine})"
        elif len(variant.model) >= len(packaged):
            problem = f"{name} int8 is not smaller ({len(variant.model)} >= {len(packaged)} bytes)"
        elif dependence > BATCH_DEPENDENCE_TOL and not allow_batch_dependent:
            problem = (
                f"{name} int8 is batch-dependent: a sample scored alone differs by "
                f"{dependence:.3g} from the same sample in a batch (--allow-batch-dependent)"
            )
        if problem is not None:
            if requested == name:
                from edgefleet.packager.errors import AccuracyDropError

                raise AccuracyDropError(f"--quantize {name} refused: {problem}")
            rows.append({**row, "status": "rejected", "reason": problem})
            reasons.append(problem)
            continue
        float_row["status"] = "eligible"
        rows.append({**row, "status": "chosen", "reason": ""})
        scale = [max(1.0, float(np.max(np.abs(np.asarray(a, np.float64))))) for a in float_out]
        observed = max(
            (
                r.get("max_abs_diff", 0.0) / sc
                for r, sc in zip(per_output.values(), scale, strict=True)
            ),
            default=0.0,
        )
        atol = min(max(INT8_SMOKE_FLOOR, 2.0 * observed), INT8_SMOKE_CAP)
        ratio = len(variant.model) / len(packaged)
        quantization = {
            **base,
            "method": name,
            "variant": name,
            "format": variant.format,
            "settings": variant.settings,
            "reason": f"{name} int8 is {ratio:.2f}x the float32 size with cosine >= {worst:.4f}",
        }
        return Choice(variant.model, quantization, atol)
    return Choice(packaged, {**base, "reason": "; ".join(reasons)}, FLOAT_SMOKE_ATOL)

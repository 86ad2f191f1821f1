"""Quantization of tensor models: static QDQ int8, dynamic int8 where no static variant
qualifies, float16 for GPU profiles.

Candidates besides the float graph, in families measured in this order (the
first family with a qualifying member wins; within it the most faithful):

- **static** (``int8`` profiles; graphs with Conv, MatMul or Gemm and float32
  data inputs): QDQ int8, weights per channel, only the compute operators
  quantized (:data:`edgefleet.packager.quantize.STATIC_OP_TYPES`), activations
  int8 or uint8 as the profile's ``int8_format`` says. One candidate per
  calibration method (:data:`CALIBRATION_METHODS`), calibrated on every fourth
  reference sample: MinMax on at most :data:`CALIBRATION_MAX_SAMPLES`, the
  histogram methods (Entropy, Percentile) on at most
  :data:`HISTOGRAM_MAX_SAMPLES` evenly spread ones in equal batches (their
  histograms cost memory per activation, and onnxruntime's histogram collector
  fails on batches of different sizes). The qualifying one with the highest
  worst-output cosine is kept (MinMax on a tie): the method is chosen by
  measurement, not fixed.
- **dynamic** (``int8`` profiles; MatMul/Gemm/LSTM/GRU/Attention), only when
  no static candidate qualifies: its activation scales are computed per batch,
  so a sample scored alone must give what it gives inside a batch
  (:func:`batch_dependence`), unless ``--allow-batch-dependent``.
- **fp16** (``fp16`` profiles, i.e. with a GPU provider): float16 weights and
  compute, float32 inputs and outputs (``keep_io_types``), so the io schema is
  unchanged.

A candidate qualifies when, on the held-out samples (every sample not used for
calibration, at most 64), every float output keeps a cosine similarity of at
least ``min_cosine`` (default 0.99) with the float graph's (and, with
``--max-abs-diff``, no element further from it than that), every other output
is identical, the variant is smaller, and it is batch-independent (or allowed
not to be); and for a classifier:

- registered with ``--labels``: its accuracy on those held-out samples drops by
  at most ``max_accuracy_drop`` (``--max-accuracy-drop``, default 0.01) against
  the float graph's (:func:`edgefleet.packager.validate.drop_problem`, the rule
  of table models); top-1 agreement with float32 is then reported, not gated;
- without labels: every ``probabilities`` output keeps its top-1 class on at
  least :data:`MIN_TOP1_AGREEMENT` of the samples.

``--quantize auto`` keeps the first qualifying family's best and says why
otherwise; an explicit ``--quantize static|dynamic|fp16`` refuses a graph it
does not apply to (exit 2) and a variant that does not qualify (exit 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgefleet.core.io_schema import IoSchema
from edgefleet.packager.errors import (
    AccuracyDropError,
    QuantizationError,
    QuantizationNotApplicableError,
)
from edgefleet.packager.graph import op_counts
from edgefleet.packager.quantize import STATIC_OP_TYPES, graph_reason, static_qdq
from edgefleet.packager.tensor_accuracy import tensor_accuracy
from edgefleet.packager.validate import drop_problem, metric_drop

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
CALIBRATION_MAX_SAMPLES = 256
HISTOGRAM_MAX_SAMPLES = 64
CALIBRATION_BATCH = 8
MIN_COSINE = 0.99
MIN_TOP1_AGREEMENT = 0.98
EVALUATION_MAX_SAMPLES = 64


@dataclass(frozen=True)
class TensorVariant:
    """One measured variant of a tensor model."""

    name: str  # "float32" | "static" | "dynamic" | "fp16"
    model: bytes
    format: str  # "float32" | "U8S8" | "S8S8" | "float16"
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


def calibration_batches(calibration: np.ndarray, method: str, one_at_a_time: bool) -> list[Any]:
    """The sample index batches a calibration method sees (see the module docstring)."""
    size = 1 if one_at_a_time else CALIBRATION_BATCH
    if method == "MinMax":
        return [calibration[i : i + size] for i in range(0, len(calibration), size)]
    if len(calibration) > HISTOGRAM_MAX_SAMPLES:
        spread = np.linspace(0, len(calibration) - 1, HISTOGRAM_MAX_SAMPLES).round().astype(int)
        calibration = calibration[spread]
    if len(calibration) >= size:  # equal batches: drop the remainder
        calibration = calibration[: len(calibration) // size * size]
    else:
        size = len(calibration)
    return [calibration[i : i + size] for i in range(0, len(calibration), size)]


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
    method: str = "MinMax",
) -> TensorVariant:
    """Static QDQ int8 of ``model`` calibrated by ``method`` on the ``calibration`` samples."""
    one_at_a_time = any(s.fixed_batch == 1 for s in schema.inputs)
    chunks = calibration_batches(calibration, method, one_at_a_time)
    data = static_qdq(model, _reader(feeds_for(c) for c in chunks), int8_format, method)
    settings = {
        "quant_format": "QDQ",
        "activation_type": "int8" if int8_format == "S8S8" else "uint8",
        "weight_type": "int8",
        "per_channel": True,
        "op_types": STATIC_OP_TYPES,
        "calibration": method,
        "calibration_samples": int(sum(len(c) for c in chunks)),
    }
    return TensorVariant("static", data, int8_format, settings)


def _top1(spec: Any, a: np.ndarray, b: np.ndarray) -> float | None:
    """Share of samples whose top-1 class agrees, for a batched ``probabilities`` output."""
    if spec.role != "probabilities" or spec.batch_axis is None or a.ndim < 2 or not a.size:
        return None
    x, y = np.moveaxis(a, spec.batch_axis, 0), np.moveaxis(b, spec.batch_axis, 0)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    return float(np.mean(np.argmax(x, axis=1) == np.argmax(y, axis=1)))


def agreement(
    schema: IoSchema,
    base: list[Any],
    other: list[Any],
    min_cosine: float,
    gate_top1: bool = True,
    max_abs_diff: float | None = None,
) -> tuple[bool, dict[str, Any]]:
    """Whether ``other`` outputs stay faithful to ``base`` (see the module docstring);
    top-1 agreement is measured always, gated only with ``gate_top1`` (no labels)."""
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
            ok &= max_abs_diff is None or diff <= max_abs_diff
            top1 = _top1(spec, a, b)
            if top1 is not None:
                rows[spec.name]["top1_agreement"] = top1
                ok &= top1 >= MIN_TOP1_AGREEMENT or not gate_top1
        else:
            same = bool(np.array_equal(a.astype(str), b.astype(str)))
            rows[spec.name] = {"equal": same}
            ok &= same
    return ok, rows


@dataclass(frozen=True)
class Accuracy:
    """A labelled classifier's held-out labels and float32's accuracy on them."""

    schema: IoSchema
    truth: np.ndarray
    class_names: list[Any] | None
    float32: float
    max_drop: float

    def of(self, outputs: list[Any]) -> float:
        value = tensor_accuracy(self.schema, outputs, self.truth, self.class_names)
        assert value is not None  # the float graph's outputs gave one
        return value


def labelled(
    schema: IoSchema,
    labels: np.ndarray | None,
    class_names: list[Any] | None,
    evaluation: np.ndarray,
    float_out: list[Any],
    max_drop: float,
) -> Accuracy | None:
    """The accuracy rule when ``labels`` are given and the model predicts a class."""
    if labels is None:
        return None
    truth = np.asarray(labels)[evaluation]
    base = tensor_accuracy(schema, float_out, truth, class_names)
    if base is None:
        return None
    return Accuracy(schema, truth, class_names, base, max_drop)


@dataclass(frozen=True)
class Choice:
    """The variant that goes into the bundle, the manifest's ``quantization`` and smoke atol."""

    model: bytes
    quantization: dict[str, Any]
    smoke_atol: float


FLOAT_SMOKE_ATOL = 1e-3  # relative to max(1, |expected|): float kernels differ across CPUs
INT8_SMOKE_FLOOR, INT8_SMOKE_CAP = 0.02, 0.1
FP16_SMOKE_FLOOR = 0.01


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


def _candidates(
    family: str,
    model: onnx.ModelProto,
    schema: IoSchema,
    feeds_for: Callable[[np.ndarray], dict[str, np.ndarray]],
    calibration: np.ndarray,
    int8_format: str,
) -> Iterator[Callable[[], TensorVariant]]:
    """Builders of a family's candidates (one per calibration method for static)."""
    if family == "static":
        for method in CALIBRATION_METHODS:
            yield lambda m=method: build_static(  # type: ignore[misc]
                model, schema, feeds_for, calibration, int8_format, m
            )
        return
    from edgefleet.packager.quantize import build_dynamic, build_fp16

    def private() -> onnx.ModelProto:
        own = onnx.ModelProto()
        own.CopyFrom(model)
        return own

    build = build_dynamic if family == "dynamic" else build_fp16
    yield lambda: _tensor_variant(build(private()))


def _tensor_variant(built: Any) -> TensorVariant:
    return TensorVariant(built.name, built.model, built.format, dict(built.settings))


def _family_reason(family: str, model: onnx.ModelProto, schema: IoSchema) -> str | None:
    if family == "static":
        return static_reason(model, schema)
    return graph_reason(op_counts(model), family)


def _label(name: str, variant: TensorVariant | None) -> str:
    kind = {"static": "static int8", "dynamic": "dynamic int8", "fp16": "fp16"}[name]
    method = variant.settings.get("calibration") if variant is not None else None  # static only
    return f"{kind} ({method})" if method else kind


def families_for(requested: str, profile_quantization: str) -> list[str]:
    """The variant families ``--quantize requested`` measures, in order."""
    if requested == "none":
        return []
    if requested != "auto":
        return [requested]
    return {"int8": ["static", "dynamic"], "fp16": ["fp16"]}.get(profile_quantization, [])


def choose_variant(
    model: onnx.ModelProto,
    packaged: bytes,
    schema: IoSchema,
    n: int,
    *,
    requested: str,
    int8_format: str,
    min_cosine: float,
    max_abs_diff: float | None = None,
    allow_batch_dependent: bool = False,
    profile_quantization: str = "int8",
    feeds_for: Callable[[np.ndarray], dict[str, np.ndarray]],
    outputs_of: Outputs,
    labels: np.ndarray | None = None,
    class_names: list[Any] | None = None,
    max_accuracy_drop: float = 0.01,
) -> Choice:
    """float32, or the best candidate of the first family that qualifies (module docstring).

    ``labels`` (one per reference sample) switch a classifier to the accuracy rule.
    """
    float_row: dict[str, Any] = {
        "variant": "float32",
        "size_bytes": len(packaged),
        "status": "chosen",
    }
    calibration, evaluation = split_samples(n)
    evaluation = evaluation[:EVALUATION_MAX_SAMPLES]
    float_out: list[Any] | None = None
    rule: Accuracy | None = None
    if labels is not None:
        float_out = outputs_of(packaged, evaluation)
        rule = labelled(schema, labels, class_names, evaluation, float_out, max_accuracy_drop)
    if rule is not None:
        float_row["accuracy"] = rule.float32
        float_row["evaluation_samples"] = int(len(evaluation))
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
            "max_abs_diff": max_abs_diff,
            "min_top1_agreement": MIN_TOP1_AGREEMENT if rule is None else None,
            "max_accuracy_drop": None if rule is None else max_accuracy_drop,
            "non_float_outputs": "identical",
            "allow_batch_dependent": allow_batch_dependent,
        },
        "profile_quantization": profile_quantization,
        "variants": rows,
    }
    families = families_for(requested, profile_quantization)
    if not families:
        why: str | None = (
            "--quantize none"
            if requested == "none"
            else f"the profile's quantization is {profile_quantization!r}"
        )
        return Choice(packaged, {**base, "reason": why}, FLOAT_SMOKE_ATOL)
    reasons: list[str] = []
    explicit = requested != "auto"
    for family in families:
        why = _family_reason(family, model, schema)
        if why is not None:
            if explicit:
                raise QuantizationNotApplicableError(f"--quantize {family} does not apply: {why}")
            not_applicable[family] = why
            reasons.append(f"{_label(family, None)}: {why}")
            continue
        if float_out is None:
            float_out = outputs_of(packaged, evaluation)
        measured: list[tuple[dict[str, Any], TensorVariant]] = []
        problems: list[str] = []
        for build in _candidates(family, model, schema, feeds_for, calibration, int8_format):
            try:
                variant = build()
            except (QuantizationError, QuantizationNotApplicableError) as e:
                if explicit and family != "static":
                    raise
                rows.append({"variant": family, "status": "failed", "reason": str(e)})
                problems.append(f"{_label(family, None)} failed: {e}")
                continue
            row, problem = _measure(
                family, variant, packaged, schema, evaluation, float_out,
                min_cosine, allow_batch_dependent, outputs_of, rule, max_abs_diff,
            )  # fmt: skip
            if problem is not None:
                rows.append({**row, "status": "rejected", "reason": problem})
                problems.append(problem)
                continue
            row = {**row, "status": "eligible", "reason": ""}
            rows.append(row)
            measured.append((row, variant))
        if not measured:
            if explicit:
                raise AccuracyDropError(f"--quantize {family} refused: {problems[0]}")
            reasons.extend(problems)
            continue
        row, variant = max(measured, key=lambda m: (m[0]["worst_cosine"], -measured.index(m)))
        row["status"] = "chosen"
        float_row["status"] = "eligible"
        return _chosen(base, family, variant, row, float_out, len(packaged), rule)
    return Choice(packaged, {**base, "reason": "; ".join(reasons)}, FLOAT_SMOKE_ATOL)


def _measure(
    family: str,
    variant: TensorVariant,
    packaged: bytes,
    schema: IoSchema,
    evaluation: np.ndarray,
    float_out: list[Any],
    min_cosine: float,
    allow_batch_dependent: bool,
    outputs_of: Outputs,
    rule: Accuracy | None = None,
    max_abs_diff: float | None = None,
) -> tuple[dict[str, Any], str | None]:
    """A candidate's row (size, per-output agreement, accuracy, batch dependence) and its
    problem."""
    out = outputs_of(variant.model, evaluation)
    ok, per_output = agreement(
        schema, float_out, out, min_cosine, gate_top1=rule is None, max_abs_diff=max_abs_diff
    )
    worst = min((r["cosine"] for r in per_output.values() if "cosine" in r), default=1.0)
    largest = max((r["max_abs_diff"] for r in per_output.values() if "cosine" in r), default=0.0)
    top1 = [r["top1_agreement"] for r in per_output.values() if "top1_agreement" in r]
    dependence = batch_dependence(schema, variant.model, evaluation[:16], outputs_of)
    row: dict[str, Any] = {
        "variant": family,
        "size_bytes": len(variant.model),
        "format": variant.format,
        "settings": variant.settings,
        "evaluation_samples": int(len(evaluation)),
        "outputs": per_output,
        "worst_cosine": worst,
        "batch_dependence": dependence,
    }
    if "calibration" in variant.settings:
        row["calibration"] = variant.settings["calibration"]
    label = _label(family, variant)
    lost: str | None = None
    if rule is not None:
        row["accuracy"] = rule.of(out)
        row["accuracy_drop"] = metric_drop(rule.float32, row["accuracy"])
        too_much = drop_problem(row["accuracy_drop"], rule.max_drop, "accuracy")
        if too_much is not None:
            lost = (
                f"{label} loses accuracy: {too_much} (float32 {rule.float32:.4f}, "
                f"{family} {row['accuracy']:.4f} on {len(evaluation)} labelled samples)"
            )
    problem: str | None = None
    if not ok:
        low_top1 = [t for t in top1 if t < MIN_TOP1_AGREEMENT and rule is None]
        parts = [f"a cosine of {worst:.4f} (< {min_cosine})"] if worst < min_cosine else []
        if max_abs_diff is not None and largest > max_abs_diff:
            parts.append(f"a max abs diff of {largest:.4g} (> {max_abs_diff})")
        if low_top1:
            parts.append(f"a top-1 agreement of {min(low_top1):.3f} (< {MIN_TOP1_AGREEMENT})")
        problem = (
            f"{label} keeps " + " and ".join(parts)
            if parts
            else f"{label} changes a non-float output"
        )
        if lost is not None:
            problem += f"; {lost}"
    elif lost is not None:
        problem = lost
    elif len(variant.model) >= len(packaged):
        problem = f"{label} is not smaller ({len(variant.model)} >= {len(packaged)} bytes)"
    elif dependence > BATCH_DEPENDENCE_TOL and not allow_batch_dependent:
        problem = (
            f"{label} is batch-dependent: a sample scored alone differs by "
            f"{dependence:.3g} from the same sample in a batch (--allow-batch-dependent)"
        )
    return row, problem


def _chosen(
    base: dict[str, Any],
    family: str,
    variant: TensorVariant,
    row: dict[str, Any],
    float_out: list[Any],
    float_size: int,
    rule: Accuracy | None = None,
) -> Choice:
    scale = [max(1.0, float(np.max(np.abs(np.asarray(a, np.float64))))) for a in float_out]
    observed = max(
        (
            r.get("max_abs_diff", 0.0) / sc
            for r, sc in zip(row["outputs"].values(), scale, strict=True)
        ),
        default=0.0,
    )
    floor = FP16_SMOKE_FLOOR if family == "fp16" else INT8_SMOKE_FLOOR
    atol = min(max(floor, 2.0 * observed), INT8_SMOKE_CAP)
    ratio = len(variant.model) / float_size
    label = _label(family, variant)
    top1 = [r["top1_agreement"] for r in row["outputs"].values() if "top1_agreement" in r]
    agree = f", top-1 agreement {min(top1):.3f}" if top1 else ""
    if rule is not None:
        agree += (
            f", accuracy {row['accuracy']:.4f} vs float32 {rule.float32:.4f} (drop "
            f"{row['accuracy_drop']:.4f} <= {rule.max_drop:g})"
        )
    quantization = {
        **base,
        "method": family,
        "variant": family,
        "format": variant.format,
        "settings": variant.settings,
        "reason": f"{label} is {ratio:.3f}x the float32 size with cosine >= "
        f"{row['worst_cosine']:.4f}{agree}",
    }
    return Choice(variant.model, quantization, atol)

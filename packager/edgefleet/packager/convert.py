"""From a registered model to the float32 ONNX graph every variant starts from.

scikit-learn models go through skl2onnx with ZipMap off (plain tensors, not
lists of dicts), one float32 input named ``input`` and the opsets the target
onnxruntime implements; ONNX files pass through after ``onnx.checker``. In
both cases :func:`edgefleet.packager.graph.normalise_opsets` then leaves one
``opset_import`` per domain and an IR version the target can read.

The fidelity check (:func:`check_fidelity`) proves the conversion on the
reference data: labels must agree on every row and probabilities within
``1e-4`` absolute (regression values and decision scores within ``1e-4``
relative to ``max(1, |value|)``). The original is evaluated on the float32-
rounded inputs, because that is what the ONNX model receives; a failure is
refused with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgefleet.packager.errors import ConversionError, FidelityError, UnsupportedModelError
from edgefleet.packager.graph import (
    OnnxSignature,
    OnnxTarget,
    add_argmax_label,
    describe_io,
    normalise_opsets,
)
from edgefleet.packager.validate import Outputs, as_values, run_onnx, same_labels

INPUT_NAME = "input"
PROBABILITY_ATOL = 1e-4
VALUE_RTOL = 1e-4


@dataclass(frozen=True)
class Converted:
    """The float32 ONNX model and its signature."""

    model: onnx.ModelProto
    signature: OnnxSignature

    def to_bytes(self) -> bytes:
        return self.model.SerializeToString()


def convert_estimator(est: Any, n_features: int, target: OnnxTarget) -> Converted:
    """Convert a fitted scikit-learn estimator with skl2onnx for ``target``."""
    from skl2onnx.common.data_types import FloatTensorType

    model = run_skl2onnx(est, [(INPUT_NAME, FloatTensorType([None, n_features]))], target)
    return _finish(model, target)


def run_skl2onnx(est: Any, initial_types: list[Any], target: OnnxTarget) -> onnx.ModelProto:
    """skl2onnx on ``est`` with edgefleet's checks, fixes, options and one-line errors."""
    from edgefleet.packager.estimators import (
        _components,
        calibrated_pipeline_options,
        check_libraries,
        converter_opsets,
        libraries_of,
        one_line,
        register_boosters,
        tree_fixes,
    )
    from edgefleet.packager.function_transformers import (
        check_function_transformers,
        register_function_transformer,
    )

    check_libraries(est)
    check_function_transformers(_components(est))
    import skl2onnx
    from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator
    from sklearn.base import is_classifier, is_outlier_detector

    register_boosters(libraries_of(est))
    register_function_transformer()

    options: dict[Any, Any] = {}
    if is_classifier(est):
        # Keyed by the final estimator's id so pipelines get the option where it applies.
        final = est.steps[-1][1] if getattr(est, "steps", None) else est
        options[id(final)] = {"zipmap": False}
        options.update(calibrated_pipeline_options(est))
    ceiling = int(skl2onnx.get_latest_tested_opset_version())
    try:
        with tree_fixes(libraries_of(est)):
            model = skl2onnx.convert_sklearn(
                est,
                initial_types=initial_types,
                options=options,
                target_opset=converter_opsets(est, target.converter_opsets(ceiling)),
            )
    except (MissingConverter, MissingShapeCalculator) as e:
        # skl2onnx's message is a paragraph; its first line names the missing class.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(
            one_line(f"{_name(est)} has no ONNX converter ({first})")
        ) from e
    except Exception as e:
        # Converter errors can embed whole node dumps: one line, details under --debug.
        raise ConversionError(
            one_line(f"skl2onnx failed on {_name(est)}: {type(e).__name__}: {e}")
        ) from e
    if is_outlier_detector(est):
        return anomaly_outputs(model)
    if not is_classifier(est):
        return name_value_output(model)
    return model


def anomaly_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """An outlier detector's ``label`` [N, 1] and ``scores`` [N, 1] as ``label`` [N], ``score`` [N].

    ``label`` is +1 (inlier) / -1 (outlier) as in scikit-learn's ``predict``;
    ``score`` is ``decision_function`` (negative for outliers). 1-D, they have
    the roles ``label`` and ``value`` every table bundle uses.
    """
    from onnx import TensorProto, helper, numpy_helper

    names = [o.name for o in model.graph.output]
    if len(names) != 2:
        raise ConversionError(f"an outlier detector converted to {len(names)} outputs, not 2")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    renamed = {names[0]: "label_2d", names[1]: "score_2d"}
    for node in out.graph.node:
        for i, name in enumerate(node.output):
            node.output[i] = renamed.get(name, name)
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    out.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "flat_1d"))
    out.graph.node.extend(
        [
            helper.make_node("Reshape", ["label_2d", "flat_1d"], ["label"], name="label_1d"),
            helper.make_node("Reshape", ["score_2d", "flat_1d"], ["score"], name="score_1d"),
        ]
    )
    del out.graph.output[:]
    out.graph.output.extend(
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [None]),
        ]
    )
    return out


def _name(est: Any) -> str:
    steps = getattr(est, "steps", None)
    return type(steps[-1][1]).__name__ if steps else type(est).__name__


def name_value_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """Call a multi-output regressor's [N, k] output ``value``.

    skl2onnx calls it ``variable``; a [N, k] float output named ``value`` is a
    regression value to :func:`describe_io`, not class probabilities. Single-
    target regressors keep the converter's name (deployed clients use it).
    """
    if len(model.graph.output) != 1 or model.graph.output[0].name == "value":
        return model
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2 or dims[1].dim_value in (0, 1):
        return model
    old = model.graph.output[0].name
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output[0].name = "value"
    for node in out.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = "value"
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = "value"
    return out


def prepare_onnx(model: onnx.ModelProto, target: OnnxTarget) -> Converted:
    """Check an ONNX file for ``target`` and normalise it (pass-through otherwise)."""
    return _finish(model, target)


def _finish(model: onnx.ModelProto, target: OnnxTarget) -> Converted:
    model = normalise_opsets(model, target)
    signature = describe_io(model)
    if signature.output("probabilities") and not signature.output("label"):
        model = add_argmax_label(model, signature.output("probabilities").name)  # type: ignore[union-attr]
        signature = describe_io(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConversionError(f"converted model fails onnx.checker: {e}") from e
    return Converted(model, signature)


def sklearn_outputs(est: Any, x32: np.ndarray) -> Outputs:
    """The original estimator's outputs on float32-rounded inputs."""
    from sklearn.base import is_classifier, is_outlier_detector

    x = x32.astype(np.float64)
    if is_outlier_detector(est):
        return Outputs(
            labels=np.asarray(est.predict(x)).astype(np.int64),
            values=as_values(est.decision_function(x)),
        )
    if not is_classifier(est):
        return Outputs(values=as_values(est.predict(x)))
    labels = np.asarray(est.predict(x))
    scores = None
    if hasattr(est, "predict_proba"):
        try:
            scores = np.asarray(est.predict_proba(x), dtype=np.float64)
        except AttributeError:  # e.g. SVC(probability=False) exposes the method but refuses
            scores = None
    if scores is None and hasattr(est, "decision_function"):
        scores = np.asarray(est.decision_function(x), dtype=np.float64)
        if scores.ndim == 1:
            scores = np.stack([-scores, scores], axis=1)
    return Outputs(labels=labels, probabilities=scores)


@dataclass(frozen=True)
class FidelityReport:
    """How closely the converted model reproduces the original."""

    rows: int
    label_agreement: float | None
    max_probability_diff: float | None
    max_value_diff: float | None
    passed: bool
    compared_with: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "label_agreement": self.label_agreement,
            "max_probability_diff": self.max_probability_diff,
            "max_value_diff": self.max_value_diff,
            "probability_atol": PROBABILITY_ATOL,
            "value_rtol": VALUE_RTOL,
            "passed": self.passed,
            "compared_with": self.compared_with,
        }

    def describe(self) -> str:
        parts = []
        if self.label_agreement is not None:
            parts.append(f"labels agree on {self.label_agreement:.2%} of {self.rows} rows")
        if self.max_probability_diff is not None:
            parts.append(f"max probability difference {self.max_probability_diff:.3g}")
        if self.max_value_diff is not None:
            parts.append(f"max value difference {self.max_value_diff:.3g}")
        return ", ".join(parts)


def compare_outputs(reference: Outputs, converted: Outputs, compared_with: str) -> FidelityReport:
    """Pure comparison of two output sets under the module's tolerances."""
    rows = 0
    agreement = prob_diff = value_diff = None
    passed = True
    if reference.labels is not None and converted.labels is not None:
        rows = len(reference.labels)
        agreement = float(np.mean(same_labels(reference.labels, converted.labels)))
        passed &= agreement == 1.0
    if reference.probabilities is not None and converted.probabilities is not None:
        a, b = reference.probabilities, converted.probabilities
        if a.shape != b.shape:
            raise FidelityError(f"probability shapes differ: {list(a.shape)} vs {list(b.shape)}")
        rows = rows or a.shape[0]
        prob_diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        # Decision scores (no predict_proba) are unbounded: compare them relatively.
        scale = 1.0 if np.all((a >= 0) & (a <= 1)) else np.maximum(1.0, np.abs(a))
        passed &= bool(np.all(np.abs(a - b) <= PROBABILITY_ATOL * scale))
    if reference.values is not None and converted.values is not None:
        a, b = reference.values.reshape(-1), converted.values.reshape(-1)
        rows = len(a)
        value_diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        passed &= bool(np.all(np.abs(a - b) <= VALUE_RTOL * np.maximum(1.0, np.abs(a))))
    return FidelityReport(rows, agreement, prob_diff, value_diff, passed, compared_with)


def check_fidelity(
    original: Outputs, converted: Converted, x32: np.ndarray, compared_with: str
) -> FidelityReport:
    """Run the converted model on ``x32`` and refuse it unless it matches ``original``."""
    outputs = run_onnx(converted.to_bytes(), converted.signature, x32)
    report = compare_outputs(original, outputs, compared_with)
    if not report.passed:
        raise FidelityError(
            f"conversion changed the model's outputs ({report.describe()}; need 100% label "
            f"agreement and differences within {PROBABILITY_ATOL:g})"
        )
    return report

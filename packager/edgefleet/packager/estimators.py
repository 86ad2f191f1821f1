"""Which estimators and library versions the packager converts, and the converter set-up.

Supported families (docs/packager.md lists them with the versions):

- scikit-learn classifiers and regressors that skl2onnx converts, pipelines
  included (HistGradientBoosting, CalibratedClassifierCV, multi-output
  regressors, string class labels);
- LightGBM and XGBoost scikit-learn models (``LGBMClassifier``,
  ``LGBMRegressor``, ``XGBClassifier``, ``XGBRegressor``), converted by
  onnxmltools' converters registered with skl2onnx so they also work as the
  last step of a pipeline (optional extra ``edgefleet[boost]``).

The version ranges below are the ones pyproject declares (a test keeps the two
equal): lower bound inclusive, upper bound exclusive. A library outside its
range is refused with one line naming it and the range, before conversion
starts, because a converter from another release fails in ways that say
nothing about the cause (skl2onnx 1.20 with onnx 1.23 used to print a
191,177-character node dump for HistGradientBoosting).

Every conversion error is cut to one line of at most :data:`MAX_MESSAGE`
characters; the full exception stays chained for ``--debug``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgefleet.packager.errors import UnsupportedModelError

MAX_MESSAGE = 300

# library (distribution name) -> (lowest supported, first unsupported); see pyproject.toml.
SUPPORTED_VERSIONS: dict[str, tuple[str, str]] = {
    "scikit-learn": ("1.3", "1.10"),
    "skl2onnx": ("1.16", "1.21"),
    "onnxmltools": ("1.12", "1.17"),
    "lightgbm": ("4.0", "5"),
    "xgboost": ("2.0", "4"),
}
_MODULES = {
    "scikit-learn": "sklearn",
    "skl2onnx": "skl2onnx",
    "onnxmltools": "onnxmltools",
    "lightgbm": "lightgbm",
    "xgboost": "xgboost",
}
SUPPORTED_FAMILIES = (
    "scikit-learn classifiers and regressors skl2onnx converts (pipelines included), "
    "LightGBM and XGBoost scikit-learn models"
)


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """Whitespace collapsed to single spaces, cut to ``limit`` characters."""
    text = " ".join(message.split()) or "unknown error"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.9.1"`` -> ``(1, 9, 1)``; stops at the first non-numeric part (``"2.1rc1"`` -> (2,))."""
    out: list[int] = []
    for part in version.split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(out)


def range_text(library: str) -> str:
    low, high = SUPPORTED_VERSIONS[library]
    return f">={low},<{high}"


def in_range(library: str, version: str) -> bool:
    low, high = SUPPORTED_VERSIONS[library]
    v = version_tuple(version)
    return version_tuple(low) <= v < version_tuple(high)


def check_version(library: str, version: str) -> None:
    """Refuse ``library`` at ``version`` outside its supported range (one line)."""
    if not in_range(library, version):
        raise UnsupportedModelError(
            f"{library} {version} is not supported: edgefleet converts with "
            f"{library} {range_text(library)}"
        )


def installed_version(library: str) -> str | None:
    if importlib.util.find_spec(_MODULES[library]) is None:
        return None
    module = importlib.import_module(_MODULES[library])
    return str(getattr(module, "__version__", "0"))


def _components(est: Any) -> list[Any]:
    """The estimator and every estimator nested in it (pipeline steps, wrapped models)."""
    found = [est]
    get_params = getattr(est, "get_params", None)
    if get_params is not None:
        with contextlib.suppress(Exception):
            found.extend(v for v in get_params(deep=True).values() if hasattr(v, "fit"))
    # Fitted wrappers keep their fitted copies outside get_params.
    for attr in ("calibrated_classifiers_", "estimators_"):
        for inner in getattr(est, attr, None) or []:
            if hasattr(inner, "fit"):
                found.extend(_components(inner))
    return found


def calibrated_pipeline_options(est: Any) -> dict[int, dict[str, Any]]:
    """skl2onnx options that make a ``CalibratedClassifierCV`` over a Pipeline exact.

    scikit-learn calibrates the base model's ``decision_function`` when it has
    one. skl2onnx asks a bare base classifier for its raw scores, but a
    Pipeline base gives its probabilities instead, and the sigmoid or isotonic
    map is then applied to the wrong numbers (82% of labels flipped on the
    breast-cancer data). So the final step of each fitted base Pipeline that
    has ``decision_function`` is told to output raw scores.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import Pipeline

    options: dict[int, dict[str, Any]] = {}
    for part in _components(est):
        if not isinstance(part, CalibratedClassifierCV):
            continue
        for calibrated in getattr(part, "calibrated_classifiers_", None) or []:
            base = getattr(calibrated, "estimator", None)
            if not isinstance(base, Pipeline):
                continue
            final = base.steps[-1][1]
            if not hasattr(final, "predict_proba"):
                # skl2onnx gives such a step a ZipMap option it then rejects.
                name = type(final).__name__
                raise UnsupportedModelError(
                    f"CalibratedClassifierCV over a Pipeline ending in {name} (no "
                    f"predict_proba) does not convert: calibrate the bare {name} inside "
                    f"the Pipeline instead (Pipeline(..., CalibratedClassifierCV({name}())))"
                )
            if hasattr(final, "decision_function"):
                options[id(final)] = {"raw_scores": True}
    return options


def libraries_of(est: Any) -> set[str]:
    """Libraries (distribution names) whose estimators ``est`` contains."""
    out = {"scikit-learn", "skl2onnx"}
    for part in _components(est):
        root = type(part).__module__.split(".")[0]
        if root in ("lightgbm", "xgboost"):
            out |= {root, "onnxmltools"}
    return out


def check_libraries(est: Any) -> None:
    """Every library the conversion of ``est`` needs is installed and within its range."""
    for library in sorted(libraries_of(est)):
        version = installed_version(library)
        if version is None:
            raise UnsupportedModelError(
                f"converting {type(est).__name__} needs {library} {range_text(library)}: "
                "install it with pip install 'edgefleet[boost]'"
            )
        check_version(library, version)


# Converters that write ai.onnx.ml opset 3 at most (they refuse a higher target):
# onnxmltools' tree converters (1.16) and skl2onnx's IsolationForest (1.20).
ML_OPSET_3 = 3
_ML_OPSET_3_ESTIMATORS = frozenset({"IsolationForest"})


def converter_opsets(est: Any, opsets: dict[str, int]) -> dict[str, int]:
    """``opsets`` lowered to what every converter ``est`` needs can write."""
    out = dict(opsets)
    capped = "onnxmltools" in libraries_of(est) or any(
        type(part).__name__ in _ML_OPSET_3_ESTIMATORS for part in _components(est)
    )
    if capped and "ai.onnx.ml" in out:
        out["ai.onnx.ml"] = min(out["ai.onnx.ml"], ML_OPSET_3)
    return out


_REGISTERED: set[str] = set()


def register_boosters(libraries: set[str]) -> None:
    """Register onnxmltools' LightGBM/XGBoost converters with skl2onnx (once per process)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    if "lightgbm" in libraries and "lightgbm" not in _REGISTERED:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=classifier_options,
        )
        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
            options={"split": None},
        )
        _REGISTERED.add("lightgbm")
    if "xgboost" in libraries and "xgboost" not in _REGISTERED:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(
            XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=classifier_options,
        )
        update_registered_converter(
            XGBRegressor,
            "XGBoostXGBRegressor",
            calculate_linear_regressor_output_shapes,
            convert_xgboost,
        )
        _REGISTERED.add("xgboost")


def _float32_floor(value: float) -> float:
    """The largest float32 <= ``value``."""
    v32 = np.float32(value)
    if float(v32) > value:
        v32 = np.nextafter(v32, np.float32(-np.inf))
    return float(v32)


def _float32_ceil(value: float) -> float:
    """The smallest float32 >= ``value``."""
    v32 = np.float32(value)
    if float(v32) < value:
        v32 = np.nextafter(v32, np.float32(np.inf))
    return float(v32)


# For a float32 input x and a float64 threshold t, each comparison keeps its
# outcome with a float32 threshold rounded this way (x <= t iff x <= floor32(t),
# x < t iff x < ceil32(t), ...); rounding to nearest flips the rows in between.
_ROUNDING = {
    "BRANCH_LEQ": _float32_floor,
    "BRANCH_GT": _float32_floor,
    "BRANCH_LT": _float32_ceil,
    "BRANCH_GTE": _float32_ceil,
}


def exact_thresholds(modes: Any, values: Any) -> list[float]:
    """Tree thresholds rounded to float32 so float32 inputs take the original's branch."""
    out = []
    for mode, value in zip(modes, values, strict=True):
        name = mode.decode() if isinstance(mode, bytes) else str(mode)
        rounding = _ROUNDING.get(name)
        out.append(rounding(float(value)) if rounding else float(value))
    return out


@contextlib.contextmanager
def tree_fixes(libraries: set[str]) -> Iterator[None]:
    """Two patches of skl2onnx, for the conversion only.

    - skl2onnx <= 1.20 passes a Python ``bool`` for a leaf's missing-value
      direction, which onnx >= 1.19 refuses in an integer attribute (the long
      HistGradientBoosting error);
    - tree-ensemble thresholds (scikit-learn's and LightGBM's are float64) are
      rounded by :func:`exact_thresholds` instead of to nearest, so no
      float32 input falls on the other side of a threshold: in skl2onnx's
      node builder (scikit-learn trees) and, for LightGBM, in the container.
      XGBoost's thresholds are float32 already (printed as decimals that
      round back to them), so they are left alone.
    """
    from skl2onnx.common import tree_ensemble
    from skl2onnx.common._container import ModelComponentContainer

    original_add_node = tree_ensemble.add_node
    original_container_add = ModelComponentContainer.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        key = "nodes_missing_value_tracks_true"
        if key in kwargs:
            kwargs[key] = int(bool(kwargs[key]))
        # add_node(attr_pairs, is_classifier, tree_id, tree_weight, node_id, feature_id,
        #          mode, value, ...): skl2onnx casts the list to float32 before the
        # container sees it, so its thresholds are rounded here, one by one.
        if len(args) > 7 and not kwargs.get("adjust_threshold_for_sklearn", False):
            args = (*args[:7], *exact_thresholds([args[6]], [args[7]]), *args[8:])
        return original_add_node(*args, **kwargs)

    def container_add(self: Any, op_type: Any, *args: Any, **kwargs: Any) -> Any:
        modes, values = kwargs.get("nodes_modes"), kwargs.get("nodes_values")
        if (
            "lightgbm" in libraries
            and str(op_type).startswith("TreeEnsemble")
            and modes is not None
            and values is not None
        ):
            kwargs["nodes_values"] = exact_thresholds(modes, values)
        return original_container_add(self, op_type, *args, **kwargs)

    tree_ensemble.add_node = add_node
    ModelComponentContainer.add_node = container_add  # type: ignore[method-assign]
    try:
        yield
    finally:
        tree_ensemble.add_node = original_add_node
        ModelComponentContainer.add_node = original_container_add  # type: ignore[method-assign]

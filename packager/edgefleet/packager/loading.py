"""Loading model files for registration: scikit-learn pickles/joblib and ONNX.

Security: unpickling runs arbitrary code from the file. :func:`load_model_file`
is only ever called on paths given on the local command line (``registry
register PATH``); nothing in edgefleet unpickles bytes that came over a
network, and bundles never contain pickles (they carry ONNX only). The registry
keeps the original pickle so it can be converted again later, which means the
registry folder must be trusted like the code that produced it.

Invariants: a returned :class:`LoadedModel` is either a fitted scikit-learn
classifier/regressor/outlier detector (possibly a pipeline) or an ONNX model that passed
``onnx.checker``; anything else is refused with a one-line error saying what
the file holds.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.packager.errors import ModelLoadError, UnsupportedModelError
from edgefleet.packager.registry.records import FeatureSpec

PICKLE_SUFFIXES = {".pkl": "pickle", ".pickle": "pickle", ".joblib": "joblib"}
ONNX_SUFFIXES = (".onnx",)


@dataclass(frozen=True)
class LoadedModel:
    """A model file, loaded and recognised."""

    kind: str  # "sklearn" | "onnx"
    artifact_format: str  # "pickle" | "joblib" | "onnx"
    data: bytes  # the file's bytes, stored as-is in the registry
    obj: Any  # the estimator or the onnx.ModelProto
    trained_with: str | None = None  # scikit-learn version recorded in the pickle, if older


def artifact_format_for(path: Path) -> str:
    """``pickle``/``joblib``/``onnx`` from the file name, or :class:`UnsupportedModelError`."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return PICKLE_SUFFIXES[suffix]
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    raise UnsupportedModelError(
        f"unknown model type {suffix or '(no extension)'!r} for {path}: expected a "
        "scikit-learn estimator saved as .pkl, .pickle or .joblib, or an .onnx file"
    )


def load_model_file(path: Path) -> LoadedModel:
    """Load and recognise a model file (see the module docstring about pickles)."""
    artifact_format = artifact_format_for(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnsupportedModelError(f"cannot read model file {path}: {e.strerror or e}") from e
    if artifact_format == "onnx":
        from edgefleet.packager.onnx_io import inline_external_data

        model = parse_onnx_bytes(data, str(path))
        # External data is checked (inside the model's folder only) and folded in, so
        # the registry and every bundle hold one self-contained model file.
        if inline_external_data(model, path.parent, str(path)):
            data = model.SerializeToString()
        _check_onnx(model, str(path))
        return LoadedModel("onnx", "onnx", data, model)
    return _load_sklearn(path, artifact_format, data)


def load_sklearn_bytes(data: bytes, label: str) -> Any:
    """Unpickle registry bytes that :func:`load_model_file` accepted earlier."""
    return _unpickle(data, label)[0]


def parse_onnx_bytes(data: bytes, label: str) -> Any:
    """Parse an ONNX model (no checks yet)."""
    import onnx

    try:
        return onnx.load_model_from_string(data)
    except Exception as e:  # protobuf DecodeError, ...
        raise UnsupportedModelError(f"{label} is not a valid ONNX model: {_first(e)}") from e


def _first(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _check_onnx(model: Any, label: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as e:  # ValidationError, ...
        raise UnsupportedModelError(f"{label} is not a valid ONNX model: {_first(e)}") from e


def load_onnx_bytes(data: bytes, label: str) -> Any:
    """Parse and check an ONNX model."""
    model = parse_onnx_bytes(data, label)
    _check_onnx(model, label)
    return model


def _unpickle(data: bytes, label: str) -> tuple[Any, str | None]:
    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    trained_with: str | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = joblib.load(io.BytesIO(data))
        except (ModuleNotFoundError, ImportError, AttributeError) as e:
            # The pickle names code this Python does not have (another library or version).
            raise ModelLoadError(f"cannot unpickle {label}: {e}") from e
        except Exception as e:
            raise UnsupportedModelError(
                f"{label} is not a pickle or joblib file ({type(e).__name__}: {e})"
            ) from e
    for warning in caught:
        if isinstance(warning.message, InconsistentVersionWarning):
            trained_with = str(warning.message.original_sklearn_version)
    return obj, trained_with


def _load_sklearn(path: Path, artifact_format: str, data: bytes) -> LoadedModel:
    obj, trained_with = _unpickle(data, str(path))
    if trained_with is not None:
        from edgefleet.packager.estimators import in_range, range_text

        if not in_range("scikit-learn", trained_with):
            # Unpickled across releases the estimator's internals may not match this
            # scikit-learn's, and the converter reads those internals.
            raise UnsupportedModelError(
                f"{path} was saved with scikit-learn {trained_with}, outside the supported "
                f"scikit-learn {range_text('scikit-learn')}: re-save it with a supported version"
            )
    check_estimator_object(obj, str(path))
    return LoadedModel("sklearn", artifact_format, data, obj, trained_with)


def check_estimator_object(obj: Any, label: str) -> None:
    """Refuse anything that is not a fitted scikit-learn classifier or regressor."""
    from sklearn.base import BaseEstimator, is_classifier, is_outlier_detector, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(obj, BaseEstimator):
        raise UnsupportedModelError(
            f"{label} holds a {type(obj).__module__}.{type(obj).__qualname__}, "
            "not a scikit-learn estimator"
        )
    if not (is_classifier(obj) or is_regressor(obj) or is_outlier_detector(obj)):
        from edgefleet.packager.estimators import SUPPORTED_FAMILIES, one_line

        raise UnsupportedModelError(
            one_line(
                f"{label} holds a {type(obj).__name__}, which edgefleet cannot pack "
                f"(supported: {SUPPORTED_FAMILIES})"
            )
        )
    try:
        check_is_fitted(obj)
    except NotFittedError as e:
        raise UnsupportedModelError(f"{label} holds an unfitted {type(obj).__name__}") from e
    if getattr(obj, "n_features_in_", None) is None:
        raise UnsupportedModelError(f"{label}: {type(obj).__name__} does not say its input width")


@dataclass(frozen=True)
class EstimatorInfo:
    """What registration records about a scikit-learn estimator."""

    task: str
    labels: list[Any] | None
    n_features: int
    features: tuple[FeatureSpec, ...]
    estimator: str


def describe_estimator(est: Any) -> EstimatorInfo:
    """Task, class labels, input width, feature specs and a readable class name."""
    from sklearn.base import is_classifier

    n_features = int(est.n_features_in_)
    names = getattr(est, "feature_names_in_", None)
    feature_names = (
        [str(n) for n in names] if names is not None else [f"f{i}" for i in range(n_features)]
    )
    levels = _categorical_levels(est, feature_names)
    features = tuple(
        FeatureSpec(name, "categorical", levels[i]) if i in levels else FeatureSpec(name)
        for i, name in enumerate(feature_names)
    )
    from sklearn.base import is_outlier_detector

    labels = None
    task = "regression"
    if is_outlier_detector(est):
        task = "anomaly"  # label +1 inlier / -1 outlier, value = decision_function
    elif is_classifier(est):
        task = "classification"
        labels = [_plain(c) for c in est.classes_]
    return EstimatorInfo(task, labels, n_features, features, _estimator_name(est))


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars so labels serialise to JSON."""
    return value.item() if hasattr(value, "item") else value


def _estimator_name(est: Any) -> str:
    steps = getattr(est, "steps", None)
    if steps:
        return f"Pipeline({', '.join(type(step).__name__ for _, step in steps)})"
    return type(est).__name__


def _categorical_levels(est: Any, feature_names: list[str]) -> dict[int, tuple[Any, ...]]:
    """Columns a leading ColumnTransformer one-hot encodes, with their numeric levels.

    The input is one float32 matrix, so categorical columns arrive integer-coded;
    their levels let the drift reference count categories instead of binning.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    first = est.steps[0][1] if getattr(est, "steps", None) else est
    if not isinstance(first, ColumnTransformer):
        return {}
    out: dict[int, tuple[Any, ...]] = {}
    for _, transformer, columns in getattr(first, "transformers_", []):
        if not isinstance(transformer, OneHotEncoder):
            continue
        indexes = _column_indexes(columns, feature_names)
        for index, categories in zip(indexes, transformer.categories_, strict=False):
            values = [_plain(c) for c in categories]
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                out[index] = tuple(values)
    return out


def _column_indexes(columns: Any, feature_names: list[str]) -> list[int]:
    if isinstance(columns, slice):
        return list(range(len(feature_names)))[columns]
    items = [columns] if isinstance(columns, str | int) else list(columns)
    if items and all(type(c).__name__ in ("bool", "bool_") for c in items):
        return [i for i, keep in enumerate(items) if keep]
    out = []
    for column in items:
        if isinstance(column, str):
            if column in feature_names:
                out.append(feature_names.index(column))
        else:
            out.append(int(column))
    return out

"""Estimator families beyond the basics: boosted trees, calibration, string labels,
multi-output regression; supported version ranges and one-line conversion errors.

Each family is trained here on scikit-learn's bundled data, registered with
held-out reference rows, packed, and the bundle's model is run with
onnxruntime against the original library's own outputs on those rows.
"""

from __future__ import annotations

import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.agent.model.runtime import load_bundle
from edgefleet.agent.model.tables import prediction_rows
from edgefleet.core.bundle_verifier import BundleVerifier
from edgefleet.core.keys import load_public_key
from edgefleet.core.profiles import load_profile
from edgefleet.core.trust import TrustStore
from edgefleet.packager import estimators
from edgefleet.packager.errors import UnsupportedModelError

ROOT = Path(__file__).resolve().parents[2]


def _data(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
    from sklearn.model_selection import train_test_split

    loader = {"cancer": load_breast_cancer, "diabetes": load_diabetes, "iris": load_iris}[kind]
    x, y = loader(return_X_y=True)
    return tuple(train_test_split(x, y, test_size=0.3, random_state=0))  # type: ignore[return-value]


def _family(name: str) -> tuple[Any, str]:
    """(fitted estimator, dataset kind)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "histgb_classifier":
        return HistGradientBoostingClassifier(max_iter=30, random_state=0), "cancer"
    if name == "histgb_regressor":
        return HistGradientBoostingRegressor(max_iter=30, random_state=0), "diabetes"
    if name == "lightgbm_classifier":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(n_estimators=30, verbose=-1, random_state=0), "iris"
    if name == "lightgbm_regressor":
        from lightgbm import LGBMRegressor

        return LGBMRegressor(n_estimators=30, verbose=-1, random_state=0), "diabetes"
    if name == "xgboost_classifier":
        from xgboost import XGBClassifier

        return XGBClassifier(n_estimators=30, max_depth=3, random_state=0), "cancer"
    if name == "xgboost_regressor":
        from xgboost import XGBRegressor

        return XGBRegressor(n_estimators=30, max_depth=3, random_state=0), "diabetes"
    if name == "calibrated":
        return CalibratedClassifierCV(LogisticRegression(max_iter=1000), cv=3), "iris"
    if name == "string_labels":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), "iris"
    if name == "multi_output":
        return MultiOutputRegressor(Ridge(alpha=0.5)), "diabetes"
    if name == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=40, random_state=0), "cancer"
    if name == "one_class_svm":
        from sklearn.svm import OneClassSVM

        return make_pipeline(StandardScaler(), OneClassSVM(nu=0.1)), "iris"
    raise AssertionError(name)


FAMILIES = [
    "histgb_classifier",
    "histgb_regressor",
    "lightgbm_classifier",
    "lightgbm_regressor",
    "xgboost_classifier",
    "xgboost_regressor",
    "calibrated",
    "string_labels",
    "multi_output",
    "isolation_forest",
    "one_class_svm",
]
ANOMALY = ("isolation_forest", "one_class_svm")


def _fit(name: str, folder: Path) -> tuple[Any, Path, Path, np.ndarray]:
    est, kind = _family(name)
    x_tr, x_te, y_tr, _ = _data(kind)
    if name in ANOMALY:
        y_tr = None
    if name == "string_labels":
        y_tr = np.asarray(["setosa", "versicolor", "virginica"])[y_tr]
    if name == "multi_output":
        y_tr = np.stack([y_tr, np.log(y_tr)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(x_tr, y_tr)
    model = folder / f"{name}.joblib"
    joblib.dump(est, model)
    reference = folder / f"{name}.npz"
    np.savez(reference, X=x_te)
    return est, model, reference, x_te


@pytest.mark.subprocess
@pytest.mark.parametrize("name", FAMILIES)
def test_family_registers_packs_and_serves_like_the_original(
    name: str,
    cli: Callable[..., Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    est, model, reference, x_te = _fit(name, tmp_path)
    task = ("--task", "anomaly") if name in ANOMALY else ()
    registered = cli(
        "registry", "register", model, "--name", "m", "--reference-data", reference,
        "--registry", registry_dir, "--json", *task,
    )  # fmt: skip
    assert registered.code == 0, registered.err
    assert registered.json()["task"] == (
        "anomaly" if name in ANOMALY else registered.json()["task"]
    )
    packed = cli(
        "pack", "m:1", "--profile", "rpi4-arm64", "--key", signing_key[0],
        "--out", tmp_path / "out", "--registry", registry_dir, "--json",
    )  # fmt: skip
    assert packed.code == 0, packed.err
    trust = TrustStore.from_keys([load_public_key(signing_key[1])])
    BundleVerifier(trust).verify_and_extract(Path(packed.json()["bundle"]), tmp_path / "x")
    session = ort.InferenceSession(str(tmp_path / "x" / "model.onnx"))
    x32 = x_te.astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"input": x32}), strict=True))
    original_x = x32.astype(np.float64)
    if name in ANOMALY:
        assert names == ["label", "score"]
        assert list(got["label"]) == list(est.predict(original_x))
        score = est.decision_function(original_x)
        assert np.max(np.abs(got["score"] - score) / np.maximum(1.0, np.abs(score))) <= 1e-5
    elif hasattr(est, "classes_"):
        labels = got[names[0]]
        assert list(labels) == list(est.predict(original_x))
        probabilities = got["probabilities"]
        assert np.max(np.abs(probabilities - est.predict_proba(original_x))) <= 1e-5
    else:
        expected = np.asarray(est.predict(original_x), dtype=np.float64)
        (values,) = got.values()
        values = values.reshape(expected.shape)
        assert np.max(np.abs(values - expected) / np.maximum(1.0, np.abs(expected))) <= 1e-5
    # The agent serves the bundle with the same outputs.
    served = load_bundle(Path(packed.json()["bundle"]), trust, load_profile("rpi4-arm64"))
    prediction = served.predict(x32)
    if name in ANOMALY:
        assert prediction.labels is not None and prediction.values is not None
        assert list(prediction.labels) == list(est.predict(original_x))
        assert np.allclose(prediction.values, est.decision_function(original_x), atol=1e-4)
    elif hasattr(est, "classes_"):
        assert [str(v) for v in prediction.labels] == [str(v) for v in est.predict(original_x)]
    else:
        assert prediction.values is not None and prediction.values.shape == expected.shape
        rows = list(prediction_rows(served, served.predict(x32[:2]), 0))
        assert np.shape(rows[0]["value"]) == expected.shape[1:]


def test_histgb_thresholds_are_exact_for_float32_inputs(tmp_path: Path) -> None:
    """Rounding thresholds to nearest flips rows of diabetes; flooring them does not."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import HistGradientBoostingRegressor

    from edgefleet.packager.convert import convert_estimator
    from edgefleet.packager.graph import target_for

    x, y = load_diabetes(return_X_y=True)
    est = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(x, y)
    converted = convert_estimator(est, x.shape[1], target_for("1.17"))
    session = ort.InferenceSession(converted.to_bytes())
    x32 = x.astype(np.float32)
    (got,) = session.run(None, {"input": x32})
    expected = est.predict(x32.astype(np.float64))
    assert np.max(np.abs(got.reshape(-1) - expected)) <= 1e-3


def test_float32_floor_is_the_largest_float32_not_above() -> None:
    for value in (0.1, -0.1, 1 / 3, 1e-8, 152.133, 0.0):
        floor = estimators._float32_floor(value)
        assert floor <= value
        assert float(np.nextafter(np.float32(floor), np.float32(np.inf))) > value


def test_pyproject_declares_the_supported_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["optional-dependencies"]["packager"]]
    declared += project["optional-dependencies"]["boost"]
    for library in estimators.SUPPORTED_VERSIONS:
        assert f"{library}{estimators.range_text(library)}" in declared, library
    dev = " ".join(project["optional-dependencies"]["dev"])
    assert "edgefleet[boost" in dev and "parquet" in dev


@pytest.mark.parametrize("library", sorted(estimators.SUPPORTED_VERSIONS))
def test_installed_versions_are_inside_the_declared_ranges(library: str) -> None:
    version = estimators.installed_version(library)
    assert version is not None and estimators.in_range(library, version)


def test_version_outside_the_range_is_one_line_with_the_range() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        estimators.check_version("skl2onnx", "1.21.0")
    message = str(info.value)
    assert message == (
        "skl2onnx 1.21.0 is not supported: edgefleet converts with skl2onnx >=1.16,<1.21"
    )
    estimators.check_version("scikit-learn", "1.9.1")
    with pytest.raises(UnsupportedModelError, match=r"scikit-learn >=1\.3,<1\.10"):
        estimators.check_version("scikit-learn", "1.2.2")
    assert estimators.version_tuple("2.1rc1") == (2, 1)


def test_registering_with_an_unsupported_library_version_names_the_range(
    cli: Callable[..., Any], registry_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model, reference, _ = _fit("lightgbm_regressor", tmp_path)
    import lightgbm

    monkeypatch.setattr(lightgbm, "__version__", "5.1.0")
    result = cli("registry", "register", model, "--name", "m", "--registry", registry_dir)
    assert result.code == 2
    line = result.err.strip()
    assert line == (
        "error: lightgbm 5.1.0 is not supported: edgefleet converts with lightgbm >=4.0,<5"
    )


def test_conversion_errors_are_one_short_line_with_details_under_debug(
    cli: Callable[..., Any], registry_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skl2onnx

    _, model, _, _ = _fit("histgb_regressor", tmp_path)

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("Unable to create node\n" + "  'nodes_falsenodeids': [1,\n" * 20000)

    monkeypatch.setattr(skl2onnx, "convert_sklearn", explode)
    result = cli("registry", "register", model, "--name", "m", "--registry", registry_dir)
    assert result.code == 1
    assert len(result.err.strip().splitlines()) == 1
    assert len(result.err.strip()) <= len("error: ") + estimators.MAX_MESSAGE
    assert "HistGradientBoostingRegressor" in result.err
    with pytest.raises(Exception) as info:
        cli("--debug", "registry", "register", model, "--name", "m", "--registry", registry_dir)
    assert isinstance(info.value.__cause__, ValueError)


def test_unsupported_estimator_is_named_with_what_is_supported(
    cli: Callable[..., Any], registry_dir: Path, tmp_path: Path
) -> None:
    from sklearn.cluster import KMeans

    x, _, _, _ = _data("iris")
    path = tmp_path / "kmeans.joblib"
    joblib.dump(KMeans(n_clusters=3, n_init=2, random_state=0).fit(x), path)
    result = cli("registry", "register", path, "--name", "m", "--registry", registry_dir)
    assert result.code == 2
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and len(line) <= 300 + len("error: ")
    assert "KMeans" in line and "LightGBM" in line


def test_a_pickle_from_an_unsupported_scikit_learn_is_one_line(
    cli: Callable[..., Any], registry_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sklearn.base
    from sklearn.linear_model import LogisticRegression

    x, _, y, _ = _data("iris")
    est = LogisticRegression(max_iter=500).fit(x, y)
    monkeypatch.setattr(sklearn.base, "__version__", "1.2.2")  # what __getstate__ records
    path = tmp_path / "old.joblib"
    joblib.dump(est, path)
    monkeypatch.undo()
    result = cli("registry", "register", path, "--name", "m", "--registry", registry_dir)
    assert result.code == 2
    assert "saved with scikit-learn 1.2.2" in result.err and ">=1.3,<1.10" in result.err
    assert len(result.err.strip().splitlines()) == 1

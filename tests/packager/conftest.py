"""Fixtures for packager tests: models trained here on scikit-learn's bundled datasets.

Every model is trained once per test session (seconds) and saved with joblib;
reference data is the held-out split saved as ``.npz`` (``X``, ``y``). The
``cli`` fixture runs the real ``edgefleet`` entry point in-process (the same
error-to-exit-code mapping as the console script) and returns exit code,
stdout and stderr.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.core.cli.main import main
from edgefleet.core.keys import generate_keypair


@dataclass(frozen=True)
class TrainedFiles:
    """A saved model and its held-out reference data."""

    model: Path
    reference: Path
    x_test: np.ndarray
    y_test: np.ndarray
    estimator: Any


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _split(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    return tuple(train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y))


def _save(
    folder: Path, name: str, est: Any, x_test: np.ndarray, y_test: np.ndarray
) -> TrainedFiles:
    model = folder / f"{name}.joblib"
    joblib.dump(est, model)
    reference = folder / f"{name}-reference.npz"
    np.savez(reference, X=x_test, y=y_test)
    return TrainedFiles(model, reference, x_test, y_test, est)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedFiles]:
    """digits_mlp, cancer_lr, iris_forest, wine_pipeline, diabetes_ridge."""
    from sklearn.datasets import (
        load_breast_cancer,
        load_diabetes,
        load_digits,
        load_iris,
        load_wine,
    )
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder = tmp_path_factory.mktemp("models")
    out: dict[str, TrainedFiles] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        x, y = load_digits(return_X_y=True)
        x_tr, x_te, y_tr, y_te = _split(x / 16.0, y)
        mlp = MLPClassifier(hidden_layer_sizes=(128,), max_iter=60, random_state=0).fit(x_tr, y_tr)
        out["digits_mlp"] = _save(folder, "digits_mlp", mlp, x_te, y_te)

        x, y = load_breast_cancer(return_X_y=True)
        x_tr, x_te, y_tr, y_te = _split(x, y)
        lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x_tr, y_tr)
        out["cancer_lr"] = _save(folder, "cancer_lr", lr, x_te, y_te)

        x, y = load_iris(return_X_y=True)
        x_tr, x_te, y_tr, y_te = _split(x, y)
        forest = RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0).fit(
            x_tr, y_tr
        )
        out["iris_forest"] = _save(folder, "iris_forest", forest, x_te, y_te)

        x, y = load_wine(return_X_y=True)
        x_tr, x_te, y_tr, y_te = _split(x, y)
        pipe = make_pipeline(
            StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0)
        ).fit(x_tr, y_tr)
        out["wine_pipeline"] = _save(folder, "wine_pipeline", pipe, x_te, y_te)

        x, y = load_diabetes(return_X_y=True)
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0)
        ridge = Ridge(alpha=0.5).fit(x_tr, y_tr)
        out["diabetes_ridge"] = _save(folder, "diabetes_ridge", ridge, x_te, y_te)
    return out


@pytest.fixture(scope="session")
def conv_model() -> onnx.ModelProto:
    """A tiny CNN on 8x8 digits-like images, flattened input [N, 64] (made with onnx.helper)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "shape"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.1, (144, 10)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["img"]),
        helper.make_node("Conv", ["img", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["act"]),
        helper.make_node("Flatten", ["act"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private key path, public key path) made with the project's own key generator."""
    pair = generate_keypair("publisher", tmp_path_factory.mktemp("keys"))
    return pair.private, pair.public


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``edgefleet ARGS...`` in-process through the real entry point."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        code = exit_info.value.code
        return CliResult(int(code) if code is not None else 0, captured.out, captured.err)

    return run

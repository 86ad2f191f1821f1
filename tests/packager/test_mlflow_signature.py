"""The MLflow signature of an imported model: checked against the model, carried into it.

Models are saved here with MLflow's own ``save_model`` (sklearn flavor): a
DataFrame pipeline with string columns and a model fitted on a numpy array.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.packager.errors import UnsupportedModelError
from edgefleet.packager.registry.mlflow_signature import parse_signature

mlflow = pytest.importorskip("mlflow")
# MLflow runs `git` when it saves a model, and registration runs it too.
pytestmark = pytest.mark.subprocess

CITIES = ["Lyon", "Paris", "Nice"]


def _frame(n: int, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "income": rng.normal(50, 10, n).round(3),
            "city": rng.choice(CITIES, n),
            "member": rng.random(n) > 0.5,
        }
    )


def _schema(**types: str) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec(t, n) for n, t in types.items()]))


def _assert_refused(result: Any, expected: str, registry_dir: Path) -> None:
    assert result.code == 2
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and expected in line, line
    assert not registry_dir.exists()


@pytest.fixture(scope="module")
def frame_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    folder = tmp_path_factory.mktemp("mlflow-sig")
    train, test = _frame(300, 0), _frame(40, 1)
    y = ((train.age > 45) ^ (train.city == "Paris")).astype(int)
    columns = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income"]),
            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
            ("member", "passthrough", ["member"]),
        ]
    )
    pipe = Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=500))])
    signatures = {
        "inferred": infer_signature(train, pipe.fit(train, y).predict(train)),
        # Ages come as decimals in production: the signature says double.
        "age_double": _schema(age="double", income="double", city="string", member="boolean"),
        "lacks_city": infer_signature(train.drop(columns="city")),
        "city_double": _schema(age="long", income="double", city="double", member="boolean"),
        "extra": _schema(
            age="long", income="double", city="string", member="boolean", zip="string"
        ),
    }
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, sig in signatures.items():
            paths[name] = folder / name
            mlflow.sklearn.save_model(pipe, str(paths[name]), signature=sig, input_example=test)
    return {"paths": paths, "pipe": pipe, "test": test}


def test_dataframe_signature_names_and_types_become_the_io_schema(
    frame_models: dict[str, Any], cli: Callable[..., Any], registry_dir: Path
) -> None:
    result = cli(
        "registry", "import", frame_models["paths"]["inferred"], "--name", "churn",
        "--registry", registry_dir, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    inputs = {i["name"]: i["dtype"] for i in result.json()["io_schema"]["inputs"]}
    assert inputs == {"age": "int64", "income": "float32", "city": "string", "member": "bool"}


def test_the_signature_type_wins_over_the_example_rows(
    frame_models: dict[str, Any], cli: Callable[..., Any], registry_dir: Path
) -> None:
    # The input example holds whole ages (int64 if guessed); the signature says double.
    result = cli(
        "registry", "import", frame_models["paths"]["age_double"], "--name", "churn",
        "--registry", registry_dir, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    inputs = {i["name"]: i["dtype"] for i in result.json()["io_schema"]["inputs"]}
    assert inputs == {"age": "float32", "income": "float32", "city": "string", "member": "bool"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("lacks_city", "lacks column 'city', which the model reads"),
        ("city_double", "column 'city' is double, the model reads it as text"),
        ("extra", "column 'zip' is not a column of the model"),
    ],
)
def test_a_signature_that_disagrees_is_refused_naming_the_column(
    frame_models: dict[str, Any],
    cli: Callable[..., Any],
    registry_dir: Path,
    case: str,
    expected: str,
) -> None:
    result = cli(
        "registry", "import", frame_models["paths"][case], "--name", "churn",
        "--registry", registry_dir,
    )  # fmt: skip
    _assert_refused(result, expected, registry_dir)


@pytest.fixture(scope="module")
def numpy_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("mlflow-np")
    data = load_breast_cancer()
    x, y = data.data, data.target
    est = LogisticRegression(max_iter=3000).fit(x, y)
    named = pd.DataFrame(x, columns=[str(n).replace(" ", "_") for n in data.feature_names])
    signatures = {
        "tensor": infer_signature(x[:20]),
        "narrow": infer_signature(x[:20, :29]),
        "named": infer_signature(named[:20]),
        "text": _schema(**{f"c{i}": "string" for i in range(30)}),
    }
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, sig in signatures.items():
            paths[name] = folder / name
            mlflow.sklearn.save_model(est, str(paths[name]), signature=sig, input_example=x[:20])
    return paths


def test_numpy_tensor_signature_that_fits_imports(
    numpy_models: dict[str, Path], cli: Callable[..., Any], registry_dir: Path
) -> None:
    result = cli(
        "registry", "import", numpy_models["tensor"], "--name", "cancer", "--registry",
        registry_dir, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert len(result.json()["features"]) == 30


def test_column_signature_names_a_numpy_models_features(
    numpy_models: dict[str, Path], cli: Callable[..., Any], registry_dir: Path
) -> None:
    result = cli(
        "registry", "import", numpy_models["named"], "--name", "cancer", "--registry",
        registry_dir, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    names = [f["name"] for f in result.json()["features"]]
    assert names[:2] == ["mean_radius", "mean_texture"] and len(names) == 30


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("narrow", "tensor input has shape [-1, 29]; the model takes [-1, 30]"),
        ("text", "column 'c0' is string; the model takes numbers only"),
    ],
)
def test_numpy_signature_that_disagrees_is_refused(
    numpy_models: dict[str, Path],
    cli: Callable[..., Any],
    registry_dir: Path,
    case: str,
    expected: str,
) -> None:
    result = cli(
        "registry", "import", numpy_models[case], "--name", "c", "--registry", registry_dir
    )
    _assert_refused(result, expected, registry_dir)


def test_unfeedable_mlflow_types_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedModelError, match="column 'when' has type datetime"):
        parse_signature([{"type": "datetime", "name": "when"}])
    sig = parse_signature(
        [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]
    )
    assert sig.tensors[0].shape == (-1, 4) and not sig.columns

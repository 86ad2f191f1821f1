"""``FunctionTransformer`` in a DataFrame pipeline: numpy functions convert, others are refused.

skl2onnx alone refuses every FunctionTransformer with a function; registration
used to fail with its paragraph. ``np.log1p`` on a numeric column now
converts (registration checks the graph against scikit-learn on every
reference row); a custom function is refused in one line naming it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from edgefleet.packager.errors import UnsupportedModelError
from edgefleet.packager.function_transformers import check_function_transformers


def _frame(n: int, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"income": rng.gamma(2.0, 20.0, n).round(3), "city": rng.choice(["Lyon", "Nice"], n)}
    )


def _double(values: Any) -> Any:
    return values * 2.0


def _saved(func: Any, folder: Path) -> tuple[Any, Path]:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    train = _frame(300, 0)
    y = ((train.income > 40) ^ (train.city == "Nice")).astype(int)
    columns = ColumnTransformer(
        [("log", FunctionTransformer(func), ["income"]), ("city", OneHotEncoder(), ["city"])]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(train, y)
    path = folder / "model.joblib"
    joblib.dump(pipe, path)
    return pipe, path


@pytest.mark.subprocess  # registration runs `git` for lineage
def test_log1p_on_a_column_converts_and_matches_scikit_learn(
    cli: Callable[..., Any], registry_dir: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    pipe, path = _saved(np.log1p, tmp_path)
    held_out = _frame(60, 1)
    reference = tmp_path / "reference.csv"
    held_out.to_csv(reference, index=False)
    result = cli(
        "registry", "register", path, "--name", "log", "--reference-data", reference,
        "--registry", registry_dir, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["io_schema"]["inputs"][0]["name"] == "income"
    # The stored graph on the held-out rows, next to scikit-learn's own answer.
    from edgefleet.packager.frame_convert import convert_frame_model
    from edgefleet.packager.graph import target_for

    model = convert_frame_model(pipe, {"income": "float32", "city": "string"}, target_for("99.0"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {
        "income": held_out.income.to_numpy(np.float32),
        "city": held_out.city.to_numpy(object),
    }
    labels, probabilities = session.run(None, feeds)
    assert list(labels) == list(pipe.predict(held_out))
    assert np.max(np.abs(probabilities - pipe.predict_proba(held_out))) < 1e-5


@pytest.mark.subprocess  # registration runs `git` for lineage
def test_a_custom_function_is_refused_in_one_line_naming_it(
    cli: Callable[..., Any], registry_dir: Path, tmp_path: Path
) -> None:
    _, path = _saved(_double, tmp_path)
    reference = tmp_path / "reference.csv"
    _frame(20, 1).to_csv(reference, index=False)
    result = cli(
        "registry", "register", path, "--name", "lam", "--reference-data", reference,
        "--registry", registry_dir,
    )  # fmt: skip
    assert result.code == 2, result.err
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and len(line) <= 300
    assert "FunctionTransformer(func=_double) has no ONNX form" in line
    assert not registry_dir.exists()


def test_kw_args_are_refused() -> None:
    from sklearn.preprocessing import FunctionTransformer

    with pytest.raises(UnsupportedModelError, match=r"func=log1p\) has no ONNX form"):
        check_function_transformers([FunctionTransformer(np.log1p, kw_args={"out": None})])
    check_function_transformers([FunctionTransformer(np.sqrt), FunctionTransformer()])

"""``registry import`` against a real MLflow tracking store (SQLite in tmp_path).

The store, the experiment, the run (params, metrics, git tag, dataset input),
the logged model with its input example and signature, the registered model
and its alias are all made here with MLflow's own client.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
# MLflow itself runs `git` (source tagging, registration) and registration runs it too.
pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mlflow.models import infer_signature
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, _ = train_test_split(x, y, test_size=0.3, random_state=0)
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x_tr, y_tr)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        experiment = mlflow.create_experiment(
            "churn", artifact_location=(folder / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_params({"C": 1.0, "scaler": "standard"})
            mlflow.log_metric("accuracy", 0.957)
            mlflow.set_tag("mlflow.source.git.commit", "0123abcd")
            mlflow.log_input(mlflow.data.from_numpy(x_tr, targets=y_tr, name="cancer-train"))
            mlflow.sklearn.log_model(
                est,
                name="model",
                input_example=x_te[:40],
                signature=infer_signature(x_te, est.predict(x_te)),
                registered_model_name="cancer",
            )
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("cancer", "champion", "1")
        local = folder / "local-model"
        mlflow.sklearn.save_model(est, str(local), input_example=x_te[:30])

        class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
            def predict(self, context: Any, model_input: Any) -> Any:
                return model_input

        pyfunc = folder / "pyfunc-model"
        mlflow.pyfunc.save_model(str(pyfunc), python_model=Echo())
    return {
        "uri": uri,
        "run_id": run.info.run_id,
        "local": local,
        "pyfunc": pyfunc,
        "est": est,
        "x_te": x_te,
    }


@pytest.mark.parametrize("kind", ["runs", "models_version", "models_alias"])
def test_import_from_the_tracking_store_takes_run_metrics_params_and_lineage(
    store: dict[str, Any], cli: Callable[..., Any], registry_dir: Path, kind: str
) -> None:
    source = {
        "runs": f"runs:/{store['run_id']}/model",
        "models_version": "models:/cancer/1",
        "models_alias": "models:/cancer@champion",
    }[kind]
    result = cli(
        "registry", "import", source, "--name", "cancer", "--tracking-uri", store["uri"],
        "--registry", registry_dir, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    mv = result.json()
    assert mv["metrics"] == {"accuracy": 0.957}
    assert mv["params"] == {"C": "1.0", "scaler": "standard"}
    tags = mv["tags"]
    assert tags["mlflow_run_id"] == store["run_id"]
    assert tags["mlflow_experiment"] == "churn"
    assert tags["git_commit"] == "0123abcd"
    assert tags["mlflow_datasets"].startswith("cancer-train@")
    assert tags["mlflow_flavor"] == "sklearn"
    assert mv["task"] == "classification" and mv["labels"] == [0, 1]
    assert mv["reference"]["rows"] == 40  # the input example became the reference rows


def test_import_with_the_env_tracking_uri(
    store: dict[str, Any],
    cli: Callable[..., Any],
    registry_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    result = cli(
        "registry", "import", "models:/cancer/1", "--name", "c", "--registry", registry_dir,
        "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["tags"]["mlflow_run_id"] == store["run_id"]


def test_imported_local_model_packs_and_matches_scikit_learn(
    store: dict[str, Any],
    cli: Callable[..., Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    import onnxruntime as ort

    from edgefleet.core.bundle_verifier import BundleVerifier
    from edgefleet.core.keys import load_public_key
    from edgefleet.core.trust import TrustStore

    result = cli(
        "registry", "import", store["local"], "--name", "local", "--registry", registry_dir,
        "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["reference"]["rows"] == 30
    packed = cli(
        "pack", "local:1", "--profile", "rpi4-arm64", "--key", signing_key[0], "--out",
        tmp_path / "out", "--registry", registry_dir, "--json",
    )  # fmt: skip
    assert packed.code == 0, packed.err
    trust = TrustStore.from_keys([load_public_key(signing_key[1])])
    BundleVerifier(trust).verify_and_extract(Path(packed.json()["bundle"]), tmp_path / "x")
    session = ort.InferenceSession(str(tmp_path / "x" / "model.onnx"))
    x32 = store["x_te"].astype(np.float32)
    labels, probabilities = session.run(None, {"input": x32})
    assert list(labels) == list(store["est"].predict(x32.astype(np.float64)))
    assert np.max(np.abs(probabilities - store["est"].predict_proba(x32.astype(np.float64)))) < 1e-5


def test_unconvertible_flavor_is_one_line_naming_the_flavors(
    store: dict[str, Any], cli: Callable[..., Any], registry_dir: Path
) -> None:
    result = cli("registry", "import", store["pyfunc"], "--name", "p", "--registry", registry_dir)
    assert result.code == 2
    line = result.err.strip()
    assert len(line.splitlines()) == 1
    assert "has flavors python_function" in line and "sklearn, lightgbm, xgboost, onnx" in line
    assert not registry_dir.exists()


def test_a_folder_without_mlmodel_is_refused(
    cli: Callable[..., Any], registry_dir: Path, tmp_path: Path
) -> None:
    result = cli("registry", "import", tmp_path, "--name", "p", "--registry", registry_dir)
    assert result.code == 2 and "holds no MLmodel file" in result.err

"""``registry import`` of the onnx, lightgbm and xgboost flavors from a real tracking store.

Each model is logged here with MLflow's own client into a SQLite store in
tmp_path, imported by ``runs:/`` URI, packed, and the packed graph run with
onnxruntime against the original library's own predictions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
# MLflow itself runs `git` (source tagging) and registration runs it too.
pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    folder = tmp_path_factory.mktemp("mlflow-flavors")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    x_tr, x_te, y_tr, _ = train_test_split(x, y, test_size=0.3, random_state=0)
    mlflow.set_tracking_uri(uri)
    out: dict[str, Any] = {"uri": uri, "x_te": x_te, "models": {}, "runs": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        experiment = mlflow.create_experiment(
            "flavors", artifact_location=(folder / "artifacts").as_uri()
        )
        for flavor in ("onnx", "lightgbm", "xgboost"):
            with mlflow.start_run(experiment_id=experiment) as run:
                mlflow.log_metric("accuracy", 0.9)
                if flavor == "onnx":
                    from skl2onnx import to_onnx

                    est: Any = LogisticRegression(max_iter=3000).fit(x_tr, y_tr)
                    onx = to_onnx(est, x_tr[:1], options={"zipmap": False}, target_opset=17)
                    mlflow.onnx.log_model(onx, name="model", input_example=x_te[:20])
                elif flavor == "lightgbm":
                    import lightgbm

                    est = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(x_tr, y_tr)
                    mlflow.lightgbm.log_model(est, name="model", input_example=x_te[:20])
                else:
                    import xgboost

                    est = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(x_tr, y_tr)
                    mlflow.xgboost.log_model(est, name="model", input_example=x_te[:20])
            out["models"][flavor] = est
            out["runs"][flavor] = run.info.run_id
    return out


@pytest.mark.parametrize("flavor", ["onnx", "lightgbm", "xgboost"])
def test_flavor_imports_packs_and_matches_the_library(
    runs: dict[str, Any],
    cli: Callable[..., Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
    flavor: str,
) -> None:
    import onnxruntime as ort

    from edgefleet.core.bundle_verifier import BundleVerifier
    from edgefleet.core.keys import load_public_key
    from edgefleet.core.trust import TrustStore

    result = cli(
        "registry", "import", f"runs:/{runs['runs'][flavor]}/model", "--name", flavor,
        "--tracking-uri", runs["uri"], "--registry", registry_dir, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    mv = result.json()
    assert mv["tags"]["mlflow_flavor"] == flavor
    assert mv["tags"]["mlflow_run_id"] == runs["runs"][flavor]
    assert mv["metrics"] == {"accuracy": 0.9}
    assert mv["reference"]["rows"] == 20
    packed = cli(
        "pack", f"{flavor}:1", "--profile", "rpi4-arm64", "--key", signing_key[0], "--out",
        tmp_path / "out", "--registry", registry_dir, "--json",
    )  # fmt: skip
    assert packed.code == 0, packed.err
    trust = TrustStore.from_keys([load_public_key(signing_key[1])])
    BundleVerifier(trust).verify_and_extract(Path(packed.json()["bundle"]), tmp_path / "x")
    session = ort.InferenceSession(str(tmp_path / "x" / "model.onnx"))
    x = runs["x_te"]
    values = session.run(None, {session.get_inputs()[0].name: x})
    got = dict(zip([o.name for o in session.get_outputs()], values, strict=True))
    est = runs["models"][flavor]
    probabilities = next(v for k, v in got.items() if "prob" in k)
    labels = next(v for k, v in got.items() if "label" in k)
    assert np.max(np.abs(probabilities - est.predict_proba(x))) < 1e-5
    assert list(labels) == list(est.predict(x))

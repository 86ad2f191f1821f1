"""The demo's models: three versions of a tumour classifier on scikit-learn's breast-cancer data.

- v1: standardised logistic regression, heavily regularised (C=0.01): good, not the best;
- v2: the same pipeline with C=1.0, trained on the same split: a little more accurate;
- v3: v2 plus one engineered feature (``compactness_ratio``) that the live clients do
  not send yet. Its own smoke set (31 columns) passes on the device, but every live
  request (30 columns) fails input validation, so its live error rate is 100 %: the
  kind of mistake a staged rollout with probation exists to catch.

The data set ships with scikit-learn (569 rows, 30 numeric features); nothing is
downloaded. 40 % of the rows are held out: they are the registered reference data (drift
reference and validation) and the pool the demo's clients draw their requests from, so
undrifted traffic follows the reference distribution.

scikit-learn records feature names only when fitted on a DataFrame; the demo trains on
numpy arrays (no pandas needed) and sets the names on the pipeline's first step, which is
where ``Pipeline.feature_names_in_`` reads them from. The packager carries them into the
bundle's io schema, so drift reports name real features.

scikit-learn is imported lazily: only ``edgefleet demo`` needs it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "cancer"
EXTRA_FEATURE = "compactness_ratio"
# Measurements in physical units; a recalibrated scanner reads them too large.
SIZE_FEATURES = (
    "mean_radius",
    "mean_perimeter",
    "mean_area",
    "worst_radius",
    "worst_perimeter",
    "worst_area",
)
DRIFT_SCALE = 1.25
SPLIT_SEED = 0
HELD_OUT_SHARE = 0.4


@dataclass(frozen=True)
class TrainedVersion:
    version: int
    model_path: Path
    dataset_path: Path
    reference_path: Path
    metrics: dict[str, float]
    params: dict[str, str]
    description: str
    n_features: int


@dataclass(frozen=True)
class DemoData:
    """The held-out rows the clients send, with what drift does to them."""

    feature_names: tuple[str, ...]
    rows: np.ndarray  # float32 (n, 30): held-out rows, the reference distribution
    labels: np.ndarray  # (n,) true labels of ``rows``
    drift_columns: tuple[int, ...]

    def sample(self, rng: np.random.Generator, n: int, drifted: bool) -> tuple[np.ndarray, Any]:
        """``n`` rows drawn with replacement; size features scaled when ``drifted``."""
        idx = rng.integers(0, len(self.rows), size=n)
        batch = self.rows[idx].copy()
        if drifted:
            batch[:, list(self.drift_columns)] *= np.float32(DRIFT_SCALE)
        return batch, self.labels[idx]


def _feature_names(raw: Any) -> tuple[str, ...]:
    return tuple(str(n).replace(" ", "_") for n in raw)


def _compactness_ratio(X: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    area = X[:, names.index("mean_area")]
    perimeter = X[:, names.index("mean_perimeter")]
    return (4.0 * np.pi * area / np.maximum(perimeter, 1e-6) ** 2).astype(np.float32)


def train_versions(out_dir: Path) -> tuple[list[TrainedVersion], DemoData]:
    """Train v1, v2 and v3, save them (joblib) with their data (npz); a few seconds."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_breast_cancer()
    names = _feature_names(data.feature_names)
    X = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=HELD_OUT_SHARE, random_state=SPLIT_SEED, stratify=y
    )
    extra_tr = np.column_stack([X_tr, _compactness_ratio(X_tr, names)]).astype(np.float32)
    extra_te = np.column_stack([X_te, _compactness_ratio(X_te, names)]).astype(np.float32)
    specs = [
        (1, 0.01, X_tr, X_te, names, "logistic regression, strong regularisation (C=0.01)"),
        (2, 1.0, X_tr, X_te, names, "logistic regression, C=1.0"),
        (3, 1.0, extra_tr, extra_te, (*names, EXTRA_FEATURE), f"v2 + feature {EXTRA_FEATURE}"),
    ]
    versions: list[TrainedVersion] = []
    for version, c, x_train, x_test, cols, description in specs:
        model = Pipeline(
            [("scale", StandardScaler()), ("classify", LogisticRegression(C=c, max_iter=1000))]
        ).fit(x_train, y_tr)
        model.steps[0][1].feature_names_in_ = np.asarray(cols, dtype=object)
        with warnings.catch_warnings():
            # Predicting on arrays after naming the features warns; the columns are right.
            warnings.simplefilter("ignore", UserWarning)
            predicted = model.predict(x_test)
        metrics = {
            "accuracy": round(float(accuracy_score(y_te, predicted)), 4),
            "f1": round(float(f1_score(y_te, predicted)), 4),
        }
        stem = out_dir / f"{MODEL_NAME}-v{version}"
        model_path = stem.with_suffix(".joblib")
        joblib.dump(model, model_path)
        dataset_path = out_dir / f"{MODEL_NAME}-v{version}-train.npz"
        np.savez(dataset_path, X=x_train, y=y_tr)
        reference_path = out_dir / f"{MODEL_NAME}-v{version}-reference.npz"
        np.savez(reference_path, X=x_test, y=y_te)
        versions.append(
            TrainedVersion(
                version=version,
                model_path=model_path,
                dataset_path=dataset_path,
                reference_path=reference_path,
                metrics=metrics,
                params={"C": str(c), "max_iter": "1000", "features": str(len(cols))},
                description=description,
                n_features=len(cols),
            )
        )
    demo_data = DemoData(
        feature_names=names,
        rows=X_te,
        labels=y_te,
        drift_columns=tuple(names.index(n) for n in SIZE_FEATURES),
    )
    return versions, demo_data

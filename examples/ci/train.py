"""Train the example model of the CI recipe: scikit-learn's bundled digits data (no download).

Writes ``model.joblib``, ``holdout.npz`` (features ``X`` and labels ``y`` of the held-out
rows, for validation and the drift reference) and prints the held-out accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X.astype(np.float32), y, test_size=0.25, random_state=args.seed, stratify=y
    )
    model = LogisticRegression(max_iter=500).fit(X_train, y_train)
    args.out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, args.out / "model.joblib")
    np.savez(args.out / "holdout.npz", X=X_test, y=y_test)
    print(f"{model.score(X_test, y_test):.4f}")


if __name__ == "__main__":
    main()

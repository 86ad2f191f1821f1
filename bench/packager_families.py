"""Per-family figures for ``bench/packager.py``: a DataFrame pipeline with string
columns, boosted trees and an anomaly detector.

Each family is trained on scikit-learn's breast-cancer data (70/30 split),
registered and packed through the real command line (a subprocess, so
``convert_pack_s`` is what a user waits, imports included), then the signed
bundle is loaded by the agent's own loader and served on the held-out rows.

Figures (``families.<name>``):

- ``max_abs_diff``: served probabilities (classifiers) or scores (anomaly) vs
  the framework's own ``predict_proba``/``decision_function`` on the same
  float32-rounded held-out rows (the bundle's input type);
  ``max_abs_diff_raw_float64_rows`` compares with the framework on the raw
  float64 rows instead;
- ``label_agreement``: share of held-out rows whose served label equals the
  framework's ``predict`` on the raw float64 rows; ``flipped_rows`` names the row indexes that differ
  (a float64 value within float32 rounding of a tree threshold can flip);
- ``served_p50_ratio``: p50 of the agent's one-row predict over p50 of the
  framework's one-row ``predict`` (below 1: the bundle answers faster);
- ``bundle_bytes``, ``convert_pack_s`` (register + pack wall time).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np

PROFILE = "rpi4-arm64"
ONE_ROW_REPEATS = 200


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.core.cli.main", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _estimator(family: str) -> Any:
    if family == "histgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=100, random_state=0)
    if family == "lightgbm":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(n_estimators=100, verbose=-1, random_state=0)
    if family == "xgboost":
        from xgboost import XGBClassifier

        return XGBClassifier(n_estimators=100, max_depth=4, random_state=0)
    if family == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=100, random_state=0)
    raise ValueError(family)


def _p50_ms(call: Callable[[], Any]) -> float:
    call()  # warm-up (lazy initialisation, caches)
    samples = []
    for _ in range(ONE_ROW_REPEATS):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples)


def run_family(family: str, work: Path, key: Path, public: Path, registry: Path) -> dict[str, Any]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from edgefleet.agent.model.runtime import load_bundle
    from edgefleet.core.keys import load_public_key
    from edgefleet.core.profiles import load_profile
    from edgefleet.core.trust import TrustStore

    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, _ = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    est = _estimator(family)
    anomaly = family == "isolation_forest"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(x_tr) if anomaly else est.fit(x_tr, y_tr)
    model = work / f"{family}.joblib"
    joblib.dump(est, model)
    reference = work / f"{family}-reference.npz"
    np.savez(reference, X=x_te)

    started = time.perf_counter()
    task = ("--task", "anomaly") if anomaly else ()
    reg = _cli(
        "registry", "register", model, "--name", family, "--reference-data", reference,
        "--registry", registry, "--json", *task,
    )  # fmt: skip
    if reg.returncode != 0:
        raise SystemExit(f"register {family} failed: {reg.stderr.strip()}")
    packed = _cli(
        "pack", f"{family}:1", "--profile", PROFILE, "--key", key, "--out", work / "bundles",
        "--registry", registry, "--json",
    )  # fmt: skip
    convert_pack_s = time.perf_counter() - started
    if packed.returncode != 0:
        raise SystemExit(f"pack {family} failed: {packed.stderr.strip()}")
    result = json.loads(packed.stdout)

    trust = TrustStore.from_keys([load_public_key(public)])
    served = load_bundle(Path(result["bundle"]), trust, load_profile(PROFILE))
    x32 = x_te.astype(np.float32)
    prediction = served.predict(x32)
    expected_labels = np.asarray(est.predict(x_te))
    scores = est.decision_function if anomaly else est.predict_proba
    got = np.asarray(prediction.values if anomaly else prediction.probabilities, dtype=np.float64)
    # The bundle's input is float32: the like-for-like figure runs the framework on the
    # same float32-rounded rows; the raw figure shows what float32 inputs cost.
    diff32 = float(np.max(np.abs(got - np.asarray(scores(x32.astype(np.float64))))))
    diff_raw = float(np.max(np.abs(got - np.asarray(scores(x_te)))))
    labels = np.asarray(prediction.labels)
    flipped = [int(i) for i in np.flatnonzero(labels != expected_labels)]

    one = x_te[:1]
    one32 = one.astype(np.float32)
    framework_p50 = _p50_ms(lambda: est.predict(one))
    served_p50 = _p50_ms(lambda: served.predict(one32))
    return {
        "estimator": type(est).__name__,
        "rows": int(len(x_te)),
        "max_abs_diff": diff32,
        "max_abs_diff_ok": diff32 <= 1e-5,
        "max_abs_diff_raw_float64_rows": diff_raw,
        "label_agreement": float(np.mean(labels == expected_labels)),
        "flipped_rows": flipped,
        "served_p50_ms": round(served_p50, 4),
        "framework_p50_ms": round(framework_p50, 4),
        "served_p50_ratio": round(served_p50 / framework_p50, 4),
        "bundle_bytes": int(result["size"]),
        "convert_pack_s": round(convert_pack_s, 3),
    }


def _frame(n: int, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "income": rng.normal(50, 10, n).round(3),
            "city": rng.choice(["Lyon", "Paris", "Nice", "Lille", "Brest"], n),
            "plan": rng.choice(["basic", "pro"], n),
            "member": rng.random(n) > 0.5,
        }
    )


def run_dataframe(work: Path, key: Path, public: Path, registry: Path) -> dict[str, Any]:
    """A DataFrame pipeline with string columns: one ONNX input per column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    from edgefleet.agent.model.runtime import load_bundle
    from edgefleet.core.keys import load_public_key
    from edgefleet.core.profiles import load_profile
    from edgefleet.core.trust import TrustStore

    train, held_out = _frame(2000, 0), _frame(300, 1)
    y = ((train.age > 45) ^ (train.city == "Paris") ^ (train.plan == "pro")).astype(int)
    columns = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income"]),
            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
            ("plan", OrdinalEncoder(), ["plan"]),
            ("member", "passthrough", ["member"]),
        ]
    )
    est = Pipeline(
        [("columns", columns), ("model", HistGradientBoostingClassifier(random_state=0))]
    ).fit(train, y)
    model = work / "dataframe.joblib"
    joblib.dump(est, model)
    reference = work / "dataframe.csv"
    held_out.to_csv(reference, index=False)
    started = time.perf_counter()
    reg = _cli(
        "registry", "register", model, "--name", "dataframe", "--reference-data", reference,
        "--registry", registry, "--json",
    )  # fmt: skip
    if reg.returncode != 0:
        raise SystemExit(f"register dataframe failed: {reg.stderr.strip()}")
    packed = _cli(
        "pack", "dataframe:1", "--profile", PROFILE, "--key", key, "--out", work / "bundles",
        "--registry", registry, "--json",
    )  # fmt: skip
    convert_pack_s = time.perf_counter() - started
    if packed.returncode != 0:
        raise SystemExit(f"pack dataframe failed: {packed.stderr.strip()}")
    result = json.loads(packed.stdout)
    trust = TrustStore.from_keys([load_public_key(public)])
    served = load_bundle(Path(result["bundle"]), trust, load_profile(PROFILE))

    def feeds(df: Any) -> dict[str, np.ndarray]:
        return {
            "age": df.age.to_numpy(np.int64),
            "income": df.income.to_numpy(np.float32),
            "city": np.asarray(df.city, dtype=object),
            "plan": np.asarray(df.plan, dtype=object),
            "member": df.member.to_numpy(bool),
        }

    prediction = served.predict_inputs(feeds(held_out))
    as_float32 = held_out.assign(income=held_out.income.astype(np.float32).astype(np.float64))
    diff32 = float(
        np.max(np.abs(np.asarray(prediction.probabilities) - est.predict_proba(as_float32)))
    )
    diff_raw = float(
        np.max(np.abs(np.asarray(prediction.probabilities) - est.predict_proba(held_out)))
    )
    labels = np.asarray(prediction.labels)
    flipped = [int(i) for i in np.flatnonzero(labels != est.predict(held_out))]
    one = held_out.head(1)
    one_feeds = feeds(one)
    framework_p50 = _p50_ms(lambda: est.predict(one))
    served_p50 = _p50_ms(lambda: served.predict_inputs(one_feeds))
    return {
        "estimator": "Pipeline(ColumnTransformer, HistGradientBoostingClassifier)",
        "inputs": [s["name"] + ":" + s["dtype"] for s in result["io_schema"]["inputs"]],
        "rows": int(len(held_out)),
        "max_abs_diff": diff32,
        "max_abs_diff_ok": diff32 <= 1e-5,
        "max_abs_diff_raw_float64_rows": diff_raw,
        "label_agreement": float(np.mean(labels == est.predict(held_out))),
        "flipped_rows": flipped,
        "served_p50_ms": round(served_p50, 4),
        "framework_p50_ms": round(framework_p50, 4),
        "served_p50_ratio": round(served_p50 / framework_p50, 4),
        "bundle_bytes": int(result["size"]),
        "convert_pack_s": round(convert_pack_s, 3),
    }


FAMILIES = ("histgb", "lightgbm", "xgboost", "isolation_forest")


def run_families(work: Path, key: Path, public: Path, registry: Path) -> dict[str, Any]:
    out = {"dataframe": run_dataframe(work, key, public, registry)}
    out.update({family: run_family(family, work, key, public, registry) for family in FAMILIES})
    return out

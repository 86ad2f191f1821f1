"""Packager benchmark: what `edgefleet pack` does to size, accuracy and latency.

Trains two models on scikit-learn's bundled datasets (digits MLP with hidden
layers 256 and 128; iris random forest), registers each with its held-out
split as reference data and packs it for the rpi4-arm64 profile with
``--quantize auto`` through the real command line (a subprocess, so
``pack_s`` is the wall time a user waits, imports included).

Baseline in the same run: the float32 row of the variant table (same
evaluation rows, same onnxruntime session settings). The packaged model is
then extracted from the verified bundle and re-scored with onnxruntime here,
so ``accuracy_packaged_recomputed`` checks the manifest's claim.

Prints one JSON object: ``{"mlp": {...}, "forest": {...}, "families": {...}}``;
Per model, ``variants`` gives every measured variant's status, size ratio,
metric drop, p50, ``batch_dependence`` (a row scored alone vs in a batch) and
the operator types static int8 quantized (MatMul/Gemm for the MLP), and
``latency_not_gated_because`` says why timings on this machine did not
decide (an aarch64 profile packed on x86_64).
``families`` holds the boosted-tree and anomaly figures of
``bench/packager_families.py`` (max_abs_diff, label_agreement with the flipped
rows named, served_p50_ratio, bundle_bytes, convert_pack_s). Sizes are of
``model.onnx`` (float32 vs packaged); ``bundle_bytes`` is the whole signed
bundle including the drift reference and the smoke set.

    python bench/packager.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np

PROFILE = "rpi4-arm64"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from packager_families import _cli, run_families  # noqa: E402  (the script's own folder)


def _train(kind: str) -> tuple[Any, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits, load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    if kind == "mlp":
        x, y = load_digits(return_X_y=True)
        est: Any = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=200, random_state=0)
    else:
        x, y = load_iris(return_X_y=True)
        est = RandomForestClassifier(n_estimators=100, random_state=0)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(x_tr, y_tr)
    return est, x_te, y_te


def _run(kind: str, work: Path, key: Path, public: Path, registry: Path) -> dict[str, Any]:
    est, x_test, y_test = _train(kind)
    model = work / f"{kind}.joblib"
    joblib.dump(est, model)
    reference = work / f"{kind}-reference.npz"
    np.savez(reference, X=x_test, y=y_test)
    reg = _cli(
        "registry",
        "register",
        model,
        "--name",
        kind,
        "--reference-data",
        reference,
        "--registry",
        registry,
        "--json",
    )
    if reg.returncode != 0:
        raise SystemExit(f"register {kind} failed: {reg.stderr.strip()}")
    out = work / "bundles"
    started = time.perf_counter()
    packed = _cli(
        "pack",
        f"{kind}:1",
        "--profile",
        PROFILE,
        "--key",
        key,
        "--out",
        out,
        "--registry",
        registry,
        "--json",
    )
    pack_s = time.perf_counter() - started
    if packed.returncode != 0:
        raise SystemExit(f"pack {kind} failed: {packed.stderr.strip()}")
    result = json.loads(packed.stdout)
    q, v = result["quantization"], result["validation"]
    rows = {row["variant"]: row for row in q["variants"]}
    base, chosen = rows["float32"], rows[q["variant"]]
    return {
        "float32_bytes": base["size_bytes"],
        "packaged_bytes": chosen["size_bytes"],
        "size_ratio": round(chosen["size_bytes"] / base["size_bytes"], 4),
        "bundle_bytes": result["size"],
        "accuracy_float32": base["metric"],
        "accuracy_packaged": chosen["metric"],
        "accuracy_drop": round(base["metric"] - chosen["metric"], 6),
        "accuracy_packaged_recomputed": _recompute(
            Path(result["bundle"]), public, work / kind, x_test, y_test
        ),
        "accuracy_sklearn": v["original"]["accuracy"],
        "variant": "not_applicable" if q["method"] == "not_applicable" else q["variant"],
        "quantization_reason": q["reason"],
        "p50_ms_float32": round(base["p50_ms"], 4),
        "p50_ms_packaged": round(chosen["p50_ms"], 4),
        "p95_ms_float32": round(base["p95_ms"], 4),
        "p95_ms_packaged": round(chosen["p95_ms"], 4),
        "evaluation_rows": v["dataset"]["rows"],
        "variants": {
            name: {
                "status": row["status"],
                "size_ratio": round(row["size_bytes"] / base["size_bytes"], 4)
                if row.get("size_bytes")
                else None,
                "metric_drop": row.get("metric_drop"),
                "p50_ms": row.get("p50_ms"),
                "batch_dependence": row.get("batch_dependence"),
                "op_types": (row.get("settings") or {}).get("op_types"),
                "reason": row.get("reason"),
            }
            for name, row in rows.items()
        },
        "latency_gated": q["criteria"].get("latency_gated"),
        "latency_not_gated_because": q["criteria"].get("latency_not_gated_because"),
        "pack_s": round(pack_s, 3),
        "pack_s_in_process": result["seconds"],
    }


def _recompute(bundle: Path, public: Path, dest: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    from edgefleet.core.bundle_verifier import BundleVerifier
    from edgefleet.core.keys import load_public_key
    from edgefleet.core.trust import TrustStore

    BundleVerifier(TrustStore.from_keys([load_public_key(public)])).verify_and_extract(bundle, dest)
    session = ort.InferenceSession(str(dest / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = np.arange(len(x)) % 4 != 0  # the packager's evaluation rows
    labels = session.run(None, {session.get_inputs()[0].name: x[rows].astype(np.float32)})[0]
    return float(np.mean(labels == y[rows]))


def main() -> None:
    from edgefleet.core.keys import generate_keypair

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        pair = generate_keypair("bench", work / "keys")
        registry = work / "registry"
        report: dict[str, Any] = {
            kind: _run(kind, work, pair.private, pair.public, registry)
            for kind in ("mlp", "forest")
        }
        report["families"] = run_families(work, pair.private, pair.public, registry)
    mlp = report["mlp"]
    report["targets"] = {
        "mlp_size_ratio_le_0.30": mlp["size_ratio"] <= 0.30,
        "mlp_accuracy_drop_le_0.005": mlp["accuracy_drop"] <= 0.005,
        "mlp_pack_s_le_15": mlp["pack_s"] <= 15.0,
    }
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()

"""Signed bundles for tests: real models trained on bundled datasets, and placeholders.

Usage::

    from tests.support.bundles import make_signer, trained_model, write_signed_bundle, write_model_dir

    signer = make_signer(tmp_path)                      # key pair + trust.json (signer.trust_path)
    info = write_signed_bundle(tmp_path / "iris-1.efb", "iris", signer, version=1)
    bundle_dir = write_model_dir(tmp_path / "iris-1", "iris", signer, version=1)

Model kinds (:data:`MODEL_KINDS`), each trained once per test process:

- ``iris``: LogisticRegression, 4 features, int labels 0..2 (fast; the default)
- ``digits``: MLPClassifier(32,), 64 features, int labels 0..9
- ``digits_mlp``: MLPClassifier(256, 128) on digits (the benchmark model; ~4 s to train)
- ``wine_str``: LogisticRegression on wine with string labels ("class_0"...), string label output
- ``diabetes``: Ridge regression, 10 features, one float ``variable`` output

Every bundle carries ``model.onnx`` (skl2onnx, zipmap off), ``smoke.npz``
(first 20 test rows with onnxruntime's own outputs, ``atol`` 1e-4),
``reference.json`` (a drift ReferenceProfile when the drift module is
importable, else a placeholder) and a manifest following docs/bundle-format.md.
Knobs for fault tests: ``overrides`` (deep-merged into the manifest dict, e.g.
``{"target": {"arch": "aarch64"}}``), ``break_smoke=True`` (expected outputs
that cannot match), ``extra_members``, and signing with any key(s).

:func:`placeholder_bundle` signs a bundle whose members are placeholder bytes (a
random ``model.onnx`` of ``payload_bytes``): for tests of the hub, the store and
the bundle commands, which never run the model.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.core.bundle_writer import BundleInfo, sign_manifest_bytes, write_bundle
from edgefleet.core.canonical import canonical_json
from edgefleet.core.keys import generate_keypair, keyid_of, load_private_key
from edgefleet.core.manifest import MANIFEST_NAME, SIGNATURES_NAME, FileEntry, Manifest
from edgefleet.core.trust import TrustStore

MODEL_KINDS = ("iris", "digits", "digits_mlp", "wine_str", "diabetes")
DEFAULT_PROFILE = "x86_64-gateway"
SMOKE_ROWS = 20
SMOKE_ATOL = 1e-4
TARGET_OPSET = 17


@dataclass(frozen=True)
class TrainedModel:
    """A trained, converted model with the data the manifest and tests need."""

    kind: str
    task: str
    onnx_bytes: bytes
    io_schema: dict[str, Any]
    labels: list[Any] | None
    feature_names: list[str]
    X_train: np.ndarray  # float32, the drift reference
    X_test: np.ndarray  # float32
    y_test: np.ndarray
    expected: np.ndarray  # onnxruntime labels (classification) or values (regression) on X_test
    expected_probabilities: np.ndarray | None = field(default=None)

    @property
    def n_features(self) -> int:
        return int(self.X_test.shape[1])


@dataclass(frozen=True)
class Signer:
    """A publisher key pair and the trust store that trusts it."""

    private_key: Ed25519PrivateKey
    keyid: str
    trust: TrustStore
    trust_path: Path | None
    key_path: Path | None


def make_signer(directory: Path | None = None, name: str = "publisher") -> Signer:
    """A fresh publisher key; with ``directory``, also NAME.key/NAME.pub and trust.json there."""
    if directory is None:
        key = Ed25519PrivateKey.generate()
        trust = TrustStore.from_keys(publisher_keys=[key.public_key()])
        return Signer(key, keyid_of(key.public_key()), trust, None, None)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = generate_keypair(name, directory)
    key = load_private_key(paths.private)
    trust = TrustStore.from_keys(publisher_keys=[key.public_key()])
    trust_path = directory / "trust.json"
    trust.save(trust_path)
    return Signer(key, keyid_of(key.public_key()), trust, trust_path, paths.private)


def _split(X: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    cut = int(len(X) * 0.75)
    tr, te = order[:cut], order[cut:]
    return X[tr], X[te], y[tr], y[te]


@functools.cache
def trained_model(kind: str = "iris") -> TrainedModel:
    """Train and convert ``kind`` (cached per process)."""
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn import datasets
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier

    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; one of {MODEL_KINDS}")
    task = "regression" if kind == "diabetes" else "classification"
    if kind == "iris":
        data = datasets.load_iris()
        estimator: Any = LogisticRegression(max_iter=500)
    elif kind in ("digits", "digits_mlp"):
        data = datasets.load_digits()
        hidden = (32,) if kind == "digits" else (256, 128)
        estimator = MLPClassifier(
            hidden, max_iter=60 if kind == "digits_mlp" else 120, random_state=0
        )
    elif kind == "wine_str":
        data = datasets.load_wine()
        estimator = LogisticRegression(max_iter=1000)
    else:
        data = datasets.load_diabetes()
        estimator = Ridge(alpha=1.0)
    X = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target)
    if kind == "wine_str":
        y = np.array([f"class_{int(v)}" for v in y])
    if kind in ("digits", "digits_mlp"):
        X = X / np.float32(16.0)
    if kind == "wine_str":  # standardised so lbfgs converges in a few dozen iterations
        X = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)
    feature_names = [str(n) for n in getattr(data, "feature_names", [])] or [
        f"f{i}" for i in range(X.shape[1])
    ]
    feature_names = [n.replace(" ", "_") for n in feature_names]
    X_train, X_test, y_train, y_test = _split(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(X_train, y_train)
    options = {id(estimator): {"zipmap": False}} if task == "classification" else None
    onx = to_onnx(
        estimator,
        X_train[:1],
        options=options,
        target_opset={"": TARGET_OPSET, "ai.onnx.ml": 3},
    )
    onnx_bytes = onx.SerializeToString()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    graph_outputs = session.get_outputs()
    results = session.run(None, {input_name: X_test})
    n = X.shape[1]
    inputs = [{"name": input_name, "dtype": "float32", "shape": [-1, n]}]
    features = [{"name": name, "kind": "numeric"} for name in feature_names]
    if task == "classification":
        labels = [v.item() if hasattr(v, "item") else str(v) for v in estimator.classes_]
        label_dtype = "string" if kind == "wine_str" else "int64"
        outputs = [
            {"name": graph_outputs[0].name, "dtype": label_dtype, "shape": [-1], "role": "label"},
            {
                "name": graph_outputs[1].name,
                "dtype": "float32",
                "shape": [-1, len(labels)],
                "role": "probabilities",
            },
        ]
        expected = np.asarray(results[0])
        probabilities: np.ndarray | None = np.asarray(results[1], dtype=np.float32)
    else:
        labels = None
        outputs = [
            {"name": graph_outputs[0].name, "dtype": "float32", "shape": [-1, 1], "role": "value"}
        ]
        expected = np.asarray(results[0], dtype=np.float32).reshape(-1)
        probabilities = None
    return TrainedModel(
        kind=kind,
        task=task,
        onnx_bytes=onnx_bytes,
        io_schema={"inputs": inputs, "outputs": outputs, "features": features},
        labels=labels,
        feature_names=feature_names,
        X_train=X_train,
        X_test=X_test,
        y_test=y_test,
        expected=expected,
        expected_probabilities=probabilities,
    )


def _model(model: str | TrainedModel) -> TrainedModel:
    return trained_model(model) if isinstance(model, str) else model


def _deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def make_manifest(
    model: str | TrainedModel,
    *,
    name: str | None = None,
    version: int = 1,
    profile: str = DEFAULT_PROFILE,
    arch: str = "x86_64",
    overrides: Mapping[str, Any] | None = None,
) -> Manifest:
    """The manifest (``files`` empty: the writer fills it) for ``model``."""
    import onnxruntime as ort

    m = _model(model)
    data: dict[str, Any] = {
        "format_version": 1,
        "bundle_id": f"{name or m.kind}-{version}-test",
        "model": {
            "name": name or m.kind,
            "version": version,
            "task": m.task,
            "labels": m.labels,
            "framework": "sklearn",
            "opsets": {"": TARGET_OPSET, "ai.onnx.ml": 3},
            "ir_version": 8,
        },
        "target": {
            "profile": profile,
            "arch": arch,
            "min_onnxruntime": "1.17",
            "execution_providers": ["CPUExecutionProvider"],
            "session_options": {"graph_optimization_level": "all"},
        },
        "files": [],
        "io_schema": copy.deepcopy(m.io_schema),
        "quantization": {"method": "not_applicable", "reason": "test bundle"},
        "validation": {"onnxruntime": ort.__version__, "rows": int(len(m.X_test))},
        "lineage": {"created_by": "tests", "dataset": m.kind},
        "reference_path": "reference.json",
        "smoke_path": "smoke.npz",
    }
    if overrides:
        data = _deep_merge(data, overrides)
    return Manifest.from_dict(data)


def reference_json(model: str | TrainedModel) -> bytes:
    """A drift ReferenceProfile of the training data (placeholder without the drift module)."""
    m = _model(model)
    try:
        from edgefleet.core.drift import ReferenceProfile
    except ImportError:
        return canonical_json({"placeholder": True, "feature_names": m.feature_names})
    outputs = m.expected if m.task == "classification" else None
    try:
        profile = ReferenceProfile.build(
            m.X_train,
            m.feature_names,
            outputs=outputs,
            output_kind="class" if m.task == "classification" else "score",
        )
    except TypeError:
        profile = ReferenceProfile.build(m.X_train, m.feature_names)
    return profile.to_json().encode("utf-8")


def smoke_npz(model: str | TrainedModel, *, break_smoke: bool = False) -> bytes:
    """The smoke set; ``break_smoke`` makes the expected outputs impossible to meet."""
    m = _model(model)
    arrays: dict[str, Any] = {"inputs": m.X_test[:SMOKE_ROWS].astype(np.float32)}
    if m.task == "classification":
        expected = m.expected[:SMOKE_ROWS].copy()
        probabilities = m.expected_probabilities
        assert probabilities is not None
        probs = probabilities[:SMOKE_ROWS].copy()
        if break_smoke:
            labels = list(m.labels or [])
            index = {lab: i for i, lab in enumerate(labels)}
            expected = np.array(
                [
                    labels[(index[v.item() if hasattr(v, "item") else v] + 1) % len(labels)]
                    for v in expected
                ],
                dtype=expected.dtype,
            )
            probs = probs[:, ::-1].copy()
        arrays["expected_labels"] = expected
        arrays["expected_probabilities"] = probs
    else:
        values = m.expected[:SMOKE_ROWS].astype(np.float32)
        arrays["expected_values"] = values + (1000.0 if break_smoke else 0.0)
    arrays["atol"] = np.float32(SMOKE_ATOL)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def bundle_members(
    model: str | TrainedModel,
    *,
    break_smoke: bool = False,
    extra_members: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    m = _model(model)
    members = {
        "model.onnx": m.onnx_bytes,
        "smoke.npz": smoke_npz(m, break_smoke=break_smoke),
        "reference.json": reference_json(m),
    }
    members.update(extra_members or {})
    return members


def _keys(
    signer: Signer | Sequence[Ed25519PrivateKey] | Ed25519PrivateKey,
) -> list[Ed25519PrivateKey]:
    if isinstance(signer, Signer):
        return [signer.private_key]
    if isinstance(signer, Ed25519PrivateKey):
        return [signer]
    return list(signer)


def write_signed_bundle(
    out_path: Path,
    model: str | TrainedModel,
    signer: Signer | Sequence[Ed25519PrivateKey] | Ed25519PrivateKey,
    *,
    name: str | None = None,
    version: int = 1,
    profile: str = DEFAULT_PROFILE,
    arch: str = "x86_64",
    overrides: Mapping[str, Any] | None = None,
    break_smoke: bool = False,
    extra_members: Mapping[str, bytes] | None = None,
) -> BundleInfo:
    """A signed ``.efb`` at ``out_path`` (through the real bundle writer)."""
    manifest = make_manifest(
        model, name=name, version=version, profile=profile, arch=arch, overrides=overrides
    )
    members = bundle_members(model, break_smoke=break_smoke, extra_members=extra_members)
    return write_bundle(Path(out_path), manifest, members, _keys(signer))


def write_model_dir(
    dest: Path,
    model: str | TrainedModel,
    signer: Signer | Sequence[Ed25519PrivateKey] | Ed25519PrivateKey,
    *,
    name: str | None = None,
    version: int = 1,
    profile: str = DEFAULT_PROFILE,
    arch: str = "x86_64",
    overrides: Mapping[str, Any] | None = None,
    break_smoke: bool = False,
    extra_members: Mapping[str, bytes] | None = None,
) -> Path:
    """An extracted bundle directory (what verify-and-extract produces) at ``dest``."""
    import hashlib

    dest = Path(dest)
    manifest = make_manifest(
        model, name=name, version=version, profile=profile, arch=arch, overrides=overrides
    )
    members = bundle_members(model, break_smoke=break_smoke, extra_members=extra_members)
    files = [
        FileEntry(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest())
        for p, b in members.items()
    ]
    signed = manifest.with_files(files)
    manifest_bytes = signed.canonical_bytes()
    signatures = sign_manifest_bytes(manifest_bytes, _keys(signer))
    dest.mkdir(parents=True, exist_ok=False)
    (dest / MANIFEST_NAME).write_bytes(manifest_bytes)
    (dest / SIGNATURES_NAME).write_bytes(canonical_json([s.to_dict() for s in signatures]))
    for path, data in members.items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return dest


def placeholder_bundle(
    out: Path,
    key: Path | Ed25519PrivateKey | Sequence[Ed25519PrivateKey],
    *,
    model: str = "digits",
    version: int = 1,
    profile: str | None = "rpi4-arm64",
    payload_bytes: int = 4096,
    reference: bytes = b'{"profile_id":"p"}',
    bundle_id: str | None = None,
    **manifest_fields: Any,
) -> BundleInfo:
    """A signed ``.efb`` of placeholder members (never loaded by a runtime) at ``out``.

    ``key`` is a private key file, a key or several keys; ``manifest_fields`` go into the
    manifest as they are, and ``labels`` into its ``model`` section.
    """
    target: dict[str, Any] = {"arch": "aarch64"}
    if profile is not None:
        target["profile"] = profile
    model_section: dict[str, Any] = {"name": model, "version": version, "task": "classification"}
    if "labels" in manifest_fields:
        model_section["labels"] = manifest_fields.pop("labels")
    manifest = Manifest(
        bundle_id=bundle_id or f"{model}-{version}-{profile}",
        model=model_section,
        target=target,
        **manifest_fields,
    )
    members: dict[str, bytes | Path] = {
        "model.onnx": os.urandom(payload_bytes),
        "smoke.npz": b"smoke",
        "reference.json": reference,
    }
    keys = [load_private_key(key)] if isinstance(key, Path) else _keys(key)
    return write_bundle(Path(out), manifest, members, keys)

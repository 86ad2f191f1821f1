"""Bad input: one line on stderr, exit code 1 or 2, and nothing half-written."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from edgefleet.packager.registry import Registry

Setup = Callable[[Path, dict[str, Any]], list[str | Path]]


def _iris(files: dict[str, Any]) -> Any:
    return files["iris_forest"]


def _model(tmp: Path, files: dict[str, Any]) -> Path:
    return _iris(files).model


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _joblib(path: Path, obj: Any) -> Path:
    joblib.dump(obj, path)
    return path


def _npz(path: Path, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    if y is None:
        np.savez(path, X=x)
    else:
        np.savez(path, X=x, y=y)
    return path


def _transformer(tmp: Path) -> Path:
    from sklearn.preprocessing import StandardScaler

    return _joblib(tmp / "scaler.joblib", StandardScaler().fit(np.eye(3)))


def _unfitted(tmp: Path) -> Path:
    from sklearn.linear_model import LogisticRegression

    return _joblib(tmp / "unfitted.joblib", LogisticRegression())


def _nan_reference(tmp: Path, files: dict[str, Any]) -> Path:
    x = _iris(files).x_test.copy()
    x[3, 2] = np.nan
    return _npz(tmp / "nan.npz", x)


REGISTER_CASES: dict[str, tuple[Setup, int, str]] = {
    "unknown_model_type": (
        lambda t, f: [_write(t / "model.txt", b"weights")],
        2,
        "unknown model type '.txt'",
    ),
    "pickle_not_an_estimator": (
        lambda t, f: [_write(t / "d.pkl", pickle.dumps({"weights": [1, 2]}))],
        2,
        "holds a builtins.dict, not a scikit-learn estimator",
    ),
    "transformer_only": (lambda t, f: [_transformer(t)], 2, "which edgefleet cannot pack"),
    "unfitted_estimator": (lambda t, f: [_unfitted(t)], 2, "unfitted LogisticRegression"),
    "not_a_pickle": (
        lambda t, f: [_write(t / "junk.pkl", b"\x00\x01 definitely not a pickle")],
        2,
        "is not a pickle or joblib file",
    ),
    "missing_model_file": (lambda t, f: [t / "absent.joblib"], 2, "cannot read model file"),
    "broken_onnx": (
        lambda t, f: [_write(t / "m.onnx", b"not protobuf at all \xff\xfe")],
        2,
        "is not a valid ONNX model",
    ),
    "reference_wrong_columns": (
        lambda t, f: [_model(t, f), "--reference-data", _npz(t / "r.npz", np.ones((10, 3)))],
        2,
        "reference data has 3 columns, the model takes 4",
    ),
    "reference_with_nan": (
        lambda t, f: [_model(t, f), "--reference-data", _nan_reference(t, f)],
        2,
        "1 NaN or infinite values (first at row 3, column 2)",
    ),
    "labels_count_mismatch": (
        lambda t, f: [
            _model(t, f),
            "--reference-data",
            _npz(t / "r.npz", _iris(f).x_test),
            "--labels",
            _write(t / "labels.txt", b"0\n1\n2\n"),
        ],
        2,
        "3 labels for 45 reference rows",
    ),
    "labels_not_model_classes": (
        lambda t, f: [
            _model(t, f),
            "--reference-data",
            _npz(t / "r.npz", _iris(f).x_test, np.full(45, 7)),
        ],
        2,
        "labels ['7'] are not classes of the model",
    ),
    "csv_without_header": (
        lambda t, f: [_model(t, f), "--reference-data", _write(t / "r.csv", b"1,2,3,4\n5,6,7,8\n")],
        2,
        "needs a header row",
    ),
    "unknown_data_format": (
        lambda t, f: [_model(t, f), "--reference-data", _write(t / "r.parquet", b"PAR1")],
        2,
        "unknown data file type '.parquet'",
    ),
    "metric_not_a_number": (
        lambda t, f: [_model(t, f), "--metric", "accuracy=high"],
        2,
        "--metric accuracy must be a finite number",
    ),
    "unknown_parent": (
        lambda t, f: [_model(t, f), "--parent", "ghost:3"],
        2,
        "no model named 'ghost'",
    ),
    "labels_without_reference": (
        lambda t, f: [_model(t, f), "--labels", _write(t / "l.txt", b"1\n")],
        2,
        "--labels needs --reference-data",
    ),
}


def _assert_one_line_error(result: Any, code: int, message: str) -> None:
    assert result.code == code, (result.code, result.err)
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.err


@pytest.mark.parametrize("case", sorted(REGISTER_CASES))
def test_bad_registration(
    case: str, cli: Any, models: dict[str, Any], tmp_path: Path, registry_dir: Path
) -> None:
    setup, code, message = REGISTER_CASES[case]
    args = setup(tmp_path, models)
    name = "digits" if case != "bad_name" else "bad name"
    result = cli("registry", "register", *args, "--name", name, "--registry", registry_dir)
    _assert_one_line_error(result, code, message)
    # Nothing half-written: either no registry at all, or one with no versions and no artifacts.
    if registry_dir.exists():
        with Registry.open(registry_dir) as reg:
            assert reg.versions() == []
        assert [p for p in (registry_dir / "artifacts").rglob("*") if p.is_file()] == []


def test_invalid_model_name(cli: Any, models: dict[str, Any], registry_dir: Path) -> None:
    result = cli(
        "registry",
        "register",
        _iris(models).model,
        "--name",
        "bad name",
        "--registry",
        registry_dir,
    )
    _assert_one_line_error(result, 2, "invalid model name 'bad name'")
    assert not registry_dir.exists()


# -- pack ---------------------------------------------------------------------------------


@pytest.fixture
def packable(cli: Any, models: dict[str, Any], registry_dir: Path, tmp_path: Path) -> Path:
    """A registry with iris:1 (retired), iris:2 (active, aliased staging), bare:1 (no reference)."""
    files = _iris(models)
    for _ in range(2):
        result = cli(
            "registry",
            "register",
            files.model,
            "--name",
            "iris",
            "--reference-data",
            files.reference,
            "--registry",
            registry_dir,
        )
        assert result.code == 0, result.err
    assert (
        cli("registry", "register", files.model, "--name", "bare", "--registry", registry_dir).code
        == 0
    )
    assert cli("registry", "alias", "iris:2", "staging", "--registry", registry_dir).code == 0
    assert cli("registry", "retire", "iris:1", "--registry", registry_dir).code == 0
    return registry_dir


PACK_CASES: dict[str, tuple[Callable[[Path, Path, Path], list[str | Path]], int, str]] = {
    "unknown_profile": (
        lambda t, key, pub: ["iris:2", "--profile", "toaster-9000", "--key", key],
        2,
        "unknown device profile 'toaster-9000'",
    ),
    "missing_key": (
        lambda t, key, pub: ["iris:2", "--profile", "rpi5", "--key", t / "nope.key"],
        2,
        "does not exist (create one with 'edgefleet keys generate NAME')",
    ),
    "unreadable_key": (
        lambda t, key, pub: [
            "iris:2",
            "--profile",
            "rpi5",
            "--key",
            _write(t / "k.key", b"\x00" * 64),
        ],
        2,
        "does not hold a PEM private key",
    ),
    "public_key_as_signing_key": (
        lambda t, key, pub: ["iris:2", "--profile", "rpi5", "--key", pub],
        2,
        "does not hold a PEM private key",
    ),
    "unknown_alias": (
        lambda t, key, pub: ["iris@production", "--profile", "rpi5", "--key", key],
        2,
        "model 'iris' has no alias 'production'",
    ),
    "unknown_model": (
        lambda t, key, pub: ["ghost", "--profile", "rpi5", "--key", key],
        2,
        "no model named 'ghost'",
    ),
    "unknown_version": (
        lambda t, key, pub: ["iris:9", "--profile", "rpi5", "--key", key],
        2,
        "model 'iris' has no version 9",
    ),
    "retired_version": (
        lambda t, key, pub: ["iris:1", "--profile", "rpi5", "--key", key],
        2,
        "iris:1 is retired and cannot be used",
    ),
    "quantization_not_applicable": (
        lambda t, key, pub: [
            "iris@staging",
            "--profile",
            "rpi5",
            "--key",
            key,
            "--quantize",
            "dynamic",
        ],
        2,
        "--quantize dynamic does not apply: the graph is made of ai.onnx.ml operators",
    ),
    "no_reference_data": (
        lambda t, key, pub: ["bare:1", "--profile", "rpi5", "--key", key],
        2,
        "bare:1 has no reference data",
    ),
    "bad_accuracy_drop": (
        lambda t, key, pub: [
            "iris:2",
            "--profile",
            "rpi5",
            "--key",
            key,
            "--max-accuracy-drop",
            "5",
        ],
        2,
        "--max-accuracy-drop must be between 0 and 1",
    ),
}


@pytest.mark.parametrize("case", sorted(PACK_CASES))
def test_bad_pack(
    case: str, cli: Any, packable: Path, signing_key: tuple[Path, Path], tmp_path: Path
) -> None:
    build, code, message = PACK_CASES[case]
    out = tmp_path / "out"
    args = build(tmp_path, *signing_key)
    result = cli("pack", *args, "--out", out, "--registry", packable)
    _assert_one_line_error(result, code, message)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "file", "foreign_folder"])
def test_registry_folder_that_is_not_one(
    case: str, cli: Any, tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    target = tmp_path / "reg"
    if case == "file":
        target.write_text("x")
    elif case == "foreign_folder":
        target.mkdir()
        (target / "photo.jpg").write_bytes(b"\xff\xd8")
    for args in (
        ["registry", "list"],
        ["pack", "iris", "--profile", "rpi5", "--key", signing_key[0]],
    ):
        result = cli(*args, "--registry", target)
        expected = "no registry at" if case == "missing" else "is not a registry"
        _assert_one_line_error(result, 2, expected)


def test_registry_path_from_the_environment(
    cli: Any, models: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_REGISTRY", str(tmp_path / "env-registry"))
    assert cli("registry", "register", _iris(models).model, "--name", "iris").code == 0
    assert (tmp_path / "env-registry" / "registry.db").is_file()
    assert "iris:1" in cli("registry", "list").out

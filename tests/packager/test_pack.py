"""register -> pack -> bundle verify -> onnxruntime: the bundle does what its manifest claims."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.core.bundle_verifier import BundleVerifier
from edgefleet.core.drift import ReferenceProfile
from edgefleet.core.keys import load_public_key
from edgefleet.core.trust import TrustStore


def _register(
    cli: Any, registry: Path, path: Path, name: str, *extra: str | Path
) -> dict[str, Any]:
    result = cli(
        "registry", "register", path, "--name", name, "--registry", registry, "--json", *extra
    )
    assert result.code == 0, result.err
    return result.json()


def _pack(cli: Any, registry: Path, ref: str, key: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = cli(
        "pack",
        ref,
        "--profile",
        extra[0] if extra else "rpi4-arm64",
        "--key",
        key,
        "--out",
        out,
        "--registry",
        registry,
        "--json",
        *extra[1:],
    )
    assert result.code == 0, result.err
    assert result.err == ""  # no progress lines when stderr is not a terminal
    return result.json()


def _extract(bundle: Path, public_key: Path, dest: Path) -> Any:
    trust = TrustStore.from_keys([load_public_key(public_key)])
    return BundleVerifier(trust).verify_and_extract(bundle, dest)


def _session(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def _evaluation_rows(n: int) -> np.ndarray:
    return np.arange(n) % 4 != 0


def test_digits_mlp_round_trip(
    cli: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    files = models["digits_mlp"]
    private, public = signing_key
    registered = _register(
        cli,
        registry_dir,
        files.model,
        "digits",
        "--reference-data",
        files.reference,
        "--metric",
        "accuracy=0.97",
        "--param",
        "hidden=128",
        "--tag",
        "team=vision",
    )
    assert registered["version"] == 1
    result = _pack(
        cli,
        registry_dir,
        "digits:1",
        private,
        tmp_path / "out",
        "rpi4-arm64",
        "--quantize",
        "dynamic",
        "--allow-batch-dependent",
    )
    bundle = Path(result["bundle"])
    assert bundle.name == "digits-1-rpi4-arm64.efb" and bundle.stat().st_size == result["size"]

    verify = cli("bundle", "verify", bundle, "--trust", public)
    assert verify.code == 0, verify.err
    verified = _extract(bundle, public, tmp_path / "extracted")
    manifest = verified.manifest
    folder = tmp_path / "extracted"

    assert manifest.io_schema["inputs"] == [
        {"name": "input", "dtype": "float32", "shape": [-1, 64]}
    ]
    assert manifest.io_schema["outputs"] == [
        {"name": "label", "dtype": "int64", "shape": [-1], "role": "label"},
        {"name": "probabilities", "dtype": "float32", "shape": [-1, 10], "role": "probabilities"},
    ]
    assert [f["name"] for f in manifest.io_schema["features"]][:2] == ["f0", "f1"]
    assert manifest.model["labels"] == list(range(10))
    assert manifest.model["opsets"]["ai.onnx"] <= 20 and manifest.model["ir_version"] <= 9
    assert manifest.target["profile"] == "rpi4-arm64"
    q = manifest.quantization
    assert q["method"] == "dynamic" and q["format"] == "U8S8"
    v = manifest.validation
    assert v["size_bytes"] < 0.35 * v["float32_size_bytes"]
    assert v["fidelity"]["passed"] and v["fidelity"]["label_agreement"] == 1.0
    lineage = manifest.lineage
    assert lineage["registry"]["model"] == "digits:1"
    assert lineage["params"] == {"hidden": 128} and lineage["tags"] == {"team": "vision"}
    assert "onnxruntime" in lineage["tool_versions"]

    # The packaged model, run here, reproduces the validation claims exactly.
    session = _session(folder / "model.onnx")
    rows = _evaluation_rows(len(files.x_test))
    x_eval = files.x_test[rows].astype(np.float32)
    labels, probabilities = session.run(["label", "probabilities"], {"input": x_eval})
    assert v["dataset"]["rows"] == len(x_eval)
    assert float(np.mean(labels == files.y_test[rows])) == v["packaged"]["accuracy"]
    original = files.estimator.predict(x_eval.astype(np.float64))
    assert float(np.mean(labels == original)) == v["label_agreement"]
    assert float(np.mean(original == files.y_test[rows])) == v["original"]["accuracy"]
    assert v["original"]["accuracy"] - v["packaged"]["accuracy"] == pytest.approx(v["metric_drop"])

    smoke = np.load(folder / "smoke.npz", allow_pickle=False)
    smoke_labels, smoke_probs = session.run(None, {"input": smoke["inputs"]})
    assert smoke["inputs"].dtype == np.float32 and len(smoke["inputs"]) == v["smoke"]["rows"]
    assert np.array_equal(smoke_labels, smoke["expected_labels"])
    assert np.max(np.abs(smoke_probs - smoke["expected_probabilities"])) <= float(smoke["atol"])

    reference = ReferenceProfile.from_json((folder / "reference.json").read_text())
    assert len(reference.feature_names) == 64 and reference.output_kind == "class"


def test_auto_choice_follows_the_rule_on_the_measured_table(
    cli: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    files = models["digits_mlp"]
    _register(cli, registry_dir, files.model, "digits", "--reference-data", files.reference)
    result = _pack(cli, registry_dir, "digits", signing_key[0], tmp_path, "rpi5")
    q = result["quantization"]
    rows = {row["variant"]: row for row in q["variants"]}
    assert set(rows) == {"float32", "static", "dynamic"} and not q["not_applicable"]
    # rpi5 is aarch64: timings taken elsewhere neither qualify nor refuse a variant.
    gated = q["criteria"]["latency_gated"]
    assert gated == (q["criteria"]["latency_not_gated_because"] is None)
    static, dynamic, base = rows["static"], rows["dynamic"], rows["float32"]

    def qualifies(row: dict[str, Any], batch_free: bool = True) -> bool:
        fast = not gated or row["p50_ms"] <= 1.10 * base["p50_ms"]
        return row["metric_drop"] <= 0.01 and fast and batch_free

    assert static["batch_dependence"] <= 1e-5  # static int8 does not depend on the batch
    expected = "float32"
    if qualifies(static):
        expected = "static"
    elif qualifies(dynamic, dynamic["batch_dependence"] <= 1e-5):
        expected = "dynamic"
    assert q["variant"] == expected
    assert [r["variant"] for r in q["variants"] if r["status"] == "chosen"] == [q["variant"]]
    for row in rows.values():
        assert row["size_bytes"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0
        assert 0.0 <= row["metric"] <= 1.0


@pytest.mark.parametrize(
    ("kind", "operator"),
    [("iris_forest", "TreeEnsembleClassifier"), ("cancer_lr", "LinearClassifier")],
)
def test_ml_operator_graphs_are_not_applicable(
    cli: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
    kind: str,
    operator: str,
) -> None:
    files = models[kind]
    _register(
        cli, registry_dir, files.model, kind.replace("_", "-"), "--reference-data", files.reference
    )
    result = _pack(cli, registry_dir, kind.replace("_", "-"), signing_key[0], tmp_path)
    q = result["quantization"]
    assert q["method"] == "not_applicable" and q["variant"] == "float32"
    assert operator in q["reason"] and "ai.onnx.ml" in q["reason"]
    assert [r["variant"] for r in q["variants"]] == ["float32"]
    v = result["validation"]
    assert v["metric_drop"] == 0.0 and v["label_agreement"] == 1.0
    assert v["original"]["accuracy"] == pytest.approx(
        float(
            np.mean(
                files.estimator.predict(files.x_test[_evaluation_rows(len(files.x_test))])
                == files.y_test[_evaluation_rows(len(files.x_test))]
            )
        )
    )


def test_pipeline_with_csv_reference_names_the_features(
    cli: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    files = models["wine_pipeline"]
    reference = tmp_path / "wine.csv"
    names = [f"chem_{i}" for i in range(files.x_test.shape[1])]
    with open(reference, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, "label"])
        for row, label in zip(files.x_test, files.y_test, strict=True):
            writer.writerow([*row, label])
    registered = _register(cli, registry_dir, files.model, "wine", "--reference-data", reference)
    assert registered["estimator"] == "Pipeline(StandardScaler, MLPClassifier)"
    assert registered["reference"]["has_labels"] and registered["reference"]["columns"] == 13
    result = _pack(cli, registry_dir, "wine:1", signing_key[0], tmp_path / "out", "x86_64-gateway")
    verified = _extract(Path(result["bundle"]), signing_key[1], tmp_path / "x")
    assert [f["name"] for f in verified.manifest.io_schema["features"]] == names
    assert result["validation"]["fidelity"]["passed"]
    reference_profile = ReferenceProfile.from_json((tmp_path / "x" / "reference.json").read_text())
    assert list(reference_profile.feature_names) == names


def _helper_api_model(path: Path) -> None:
    """A two-layer network written with onnx.helper: Gemm + Relu + Gemm + Softmax, no label output."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (4, 16)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (16, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(np.zeros(16, np.float32), "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def test_onnx_file_from_the_helper_api(
    cli: Any, registry_dir: Path, signing_key: tuple[Path, Path], tmp_path: Path
) -> None:
    model = tmp_path / "tiny.onnx"
    _helper_api_model(model)
    x = np.random.default_rng(5).normal(size=(80, 4))
    np.save(tmp_path / "ref.npy", x)
    registered = _register(
        cli, registry_dir, model, "tiny", "--reference-data", tmp_path / "ref.npy"
    )
    assert registered["framework"] == "onnx" and registered["labels"] == [0, 1, 2]
    assert registered["reference"]["has_labels"] is False
    # Dynamic int8 scales activations per batch: refused unless the user accepts it.
    refused = cli(
        "pack", "tiny:1", "--profile", "rpi4-arm64", "--key", signing_key[0],
        "--out", tmp_path / "refused", "--registry", registry_dir, "--quantize", "dynamic",
    )  # fmt: skip
    assert refused.code == 1 and "--quantize dynamic refused: batch-dependent" in refused.err
    assert not (tmp_path / "refused").exists()
    result = _pack(
        cli,
        registry_dir,
        "tiny:1",
        signing_key[0],
        tmp_path / "out",
        "rpi4-arm64",
        "--quantize",
        "dynamic",
        "--max-accuracy-drop",
        "0.2",
        "--allow-batch-dependent",
    )
    v, q = result["validation"], result["quantization"]
    assert (
        v["metric"] == "agreement_with_float32"
        and v["fidelity"]["compared_with"] == "the registered ONNX file"
    )
    assert q["settings"]["gemm_rewritten_as_matmul"] == 2
    verified = _extract(Path(result["bundle"]), signing_key[1], tmp_path / "x")
    roles = {o["role"]: o for o in verified.manifest.io_schema["outputs"]}
    assert roles["label"]["dtype"] == "int64"
    session = _session(tmp_path / "x" / "model.onnx")
    rows = _evaluation_rows(len(x))
    labels, probabilities = session.run(
        [roles["label"]["name"], "probabilities"], {"input": x[rows].astype(np.float32)}
    )
    assert np.array_equal(labels, probabilities.argmax(axis=1))


def test_regression_bundle(
    cli: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    files = models["diabetes_ridge"]
    registered = _register(
        cli, registry_dir, files.model, "diabetes", "--reference-data", files.reference
    )
    assert registered["task"] == "regression" and registered["labels"] is None
    result = _pack(cli, registry_dir, "diabetes:1", signing_key[0], tmp_path / "out")
    v = result["validation"]
    assert v["metric"] == "r2" and 0.2 < v["packaged"]["r2"] <= 1.0
    assert result["quantization"]["method"] == "not_applicable"
    verified = _extract(Path(result["bundle"]), signing_key[1], tmp_path / "x")
    assert [o["role"] for o in verified.manifest.io_schema["outputs"] if "role" in o] == ["value"]
    smoke = np.load(tmp_path / "x" / "smoke.npz", allow_pickle=False)
    assert "expected_values" in smoke.files and "expected_labels" not in smoke.files
    session = _session(tmp_path / "x" / "model.onnx")
    (values,) = session.run(None, {"input": smoke["inputs"]})
    assert np.max(np.abs(values.reshape(-1) - smoke["expected_values"])) <= float(smoke["atol"])


def test_gpu_profile_measures_fp16_without_a_latency_gate(
    cli: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    files = models["digits_mlp"]
    _register(cli, registry_dir, files.model, "digits", "--reference-data", files.reference)
    result = _pack(cli, registry_dir, "digits", signing_key[0], tmp_path, "jetson-orin-nano")
    q = result["quantization"]
    assert [r["variant"] for r in q["variants"]] == ["float32", "fp16"]
    assert q["criteria"]["latency_gated"] is False  # CUDA is not on this machine
    fp16 = next(r for r in q["variants"] if r["variant"] == "fp16")
    assert q["variant"] == ("fp16" if fp16["metric_drop"] <= 0.01 else "float32")
    assert result["target"]["execution_providers"][0] == "CUDAExecutionProvider"


def test_pack_by_alias_and_readable_report(
    cli: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    files = models["iris_forest"]
    _register(cli, registry_dir, files.model, "iris", "--reference-data", files.reference)
    assert cli("registry", "alias", "iris:1", "production", "--registry", registry_dir).code == 0
    report = cli(
        "pack",
        "iris@production",
        "--profile",
        "rpi-zero-2w",
        "--key",
        signing_key[0],
        "--out",
        tmp_path,
        "--registry",
        registry_dir,
    )
    assert report.code == 0, report.err
    assert report.out.startswith("packed iris:1 for rpi-zero-2w")
    for words in ("quantization  not_applicable", "variants", "fidelity", "smoke set", "latency"):
        assert words in report.out


def test_bundle_over_the_profile_budget_is_refused(
    cli: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    text = (Path(__file__).parents[2] / "device-profiles" / "rpi4-arm64.toml").read_text()
    lines = [
        'name = "tiny-board"' if line.startswith("name =") else line for line in text.splitlines()
    ]
    lines = [
        "max_bundle_bytes = 20000" if line.startswith("max_bundle_bytes") else line
        for line in lines
    ]
    (profiles / "tiny-board.toml").write_text("\n".join(lines) + "\n")
    files = models["digits_mlp"]
    _register(cli, registry_dir, files.model, "digits", "--reference-data", files.reference)
    out = tmp_path / "out"
    result = cli(
        "pack",
        "digits",
        "--profile",
        "tiny-board",
        "--profiles",
        profiles,
        "--key",
        signing_key[0],
        "--out",
        out,
        "--registry",
        registry_dir,
    )
    assert result.code == 1
    assert (
        result.err.startswith("error: bundle would be") and "max_bundle_bytes 20000" in result.err
    )
    assert list(out.iterdir()) == []  # neither the bundle nor a partial file


def test_registry_commands_render_and_emit_json(
    cli: Any, models: dict[str, Any], registry_dir: Path
) -> None:
    files = models["iris_forest"]
    dataset = files.reference
    _register(cli, registry_dir, files.model, "iris", "--metric", "acc=0.9", "--dataset", dataset)
    _register(cli, registry_dir, files.model, "iris", "--metric", "acc=0.95", "--parent", "iris:1")
    listing = cli("registry", "list", "--registry", registry_dir)
    assert listing.code == 0 and "iris:1" in listing.out and "iris:2" in listing.out
    shown = cli("registry", "show", "iris:2", "--registry", registry_dir, "--json").json()
    assert shown["parent"] == "iris:1" and shown["metrics"] == {"acc": 0.95}
    compared = cli("registry", "compare", "iris:1", "iris:2", "--registry", registry_dir)
    assert compared.code == 0 and "+0.05" in compared.out
    lineage = cli("registry", "lineage", "iris:2", "--registry", registry_dir, "--json").json()
    assert [c["ref"] for c in lineage["chain"]] == ["iris:2", "iris:1"]
    assert lineage["chain"][1]["dataset"]["rows"] == 45
    retired = cli(
        "registry", "retire", "iris:1", "--reason", "superseded", "--registry", registry_dir
    )
    assert retired.code == 0 and "superseded" in retired.out
    listing = cli("registry", "list", "--registry", registry_dir, "--json").json()
    assert {v["ref"]: v["status"] for v in listing["versions"]} == {
        "iris:1": "retired",
        "iris:2": "active",
    }
    shown_text = cli("registry", "show", "iris:1", "--registry", registry_dir).out
    assert "[RETIRED]" in shown_text and "superseded" in shown_text
    assert "[RETIRED]" in cli("registry", "lineage", "iris:2", "--registry", registry_dir).out
    json.loads(cli("registry", "show", "iris", "--registry", registry_dir, "--json").out)


def test_conv_graph_measures_static_and_dynamic(
    cli: Any,
    conv_model: Any,
    models: dict[str, Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    path = tmp_path / "cnn.onnx"
    path.write_bytes(conv_model.SerializeToString())
    digits = models["digits_mlp"]
    _register(cli, registry_dir, path, "cnn", "--reference-data", digits.reference)
    result = _pack(cli, registry_dir, "cnn", signing_key[0], tmp_path / "out", "x86_64-gateway")
    q = result["quantization"]
    rows = {row["variant"]: row for row in q["variants"]}
    assert set(rows) == {"float32", "dynamic", "static"} and q["not_applicable"] == {}
    static = rows["static"]
    assert static["status"] != "failed" and static["format"] == "U8S8"  # the profile's format
    assert static["settings"]["calibration_rows"] == len(digits.x_test[::4])
    assert rows["dynamic"]["settings"]["gemm_rewritten_as_matmul"] == 1
    assert q["variant"] in rows and rows[q["variant"]]["status"] == "chosen"
    # Labels are known (digits), so every variant is scored by accuracy.
    assert result["validation"]["metric"] == "accuracy"

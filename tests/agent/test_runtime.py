"""Runtime: real onnxruntime sessions from real signed bundle directories."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from tests.support.bundles import (
    Signer,
    make_signer,
    trained_model,
    write_model_dir,
    write_signed_bundle,
)

from edgefleet.agent.errors import (
    InferenceError,
    InputSchemaError,
    ModelLoadError,
    ModelNotFoundError,
)
from edgefleet.agent.model.runtime import (
    LoadedModel,
    ThreadSettings,
    load_bundle,
    load_model_dir,
    select_providers,
)
from edgefleet.agent.model.serving import ServingSet
from edgefleet.core.errors import (
    BundleError,
    OperationalError,
    SignatureError,
    VerificationError,
)
from edgefleet.core.profiles import load_profile

PROFILE = load_profile("x86_64-gateway")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return make_signer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> LoadedModel:
    bundle = write_model_dir(tmp_path_factory.mktemp("b") / "iris", "iris", signer, version=3)
    return load_bundle(bundle, signer.trust, PROFILE)


def test_loaded_model_matches_onnxruntime_outputs(iris: LoadedModel) -> None:
    m = trained_model("iris")
    pred = iris.predict(m.X_test)
    assert iris.name == "iris" and iris.version == 3 and iris.task == "classification"
    assert pred.labels is not None and pred.probabilities is not None
    np.testing.assert_array_equal(pred.labels, m.expected)
    assert m.expected_probabilities is not None
    np.testing.assert_allclose(pred.probabilities, m.expected_probabilities, atol=1e-6)
    assert pred.values is None
    np.testing.assert_array_equal(pred.primary, m.expected)
    assert len(pred) == len(m.X_test) == len(pred.ids)


def test_session_uses_profile_threads_and_no_spinning(iris: LoadedModel) -> None:
    options = iris.session.get_session_options()
    assert options.intra_op_num_threads == PROFILE.intra_op_threads
    assert options.inter_op_num_threads == PROFILE.inter_op_threads
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert iris.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("wanted", "available", "expected"),
    [
        (
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CPUExecutionProvider"],
            ["CPUExecutionProvider"],
        ),
        (["XnnpackExecutionProvider"], ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (
            ["XnnpackExecutionProvider", "CPUExecutionProvider"],
            ["XnnpackExecutionProvider", "CPUExecutionProvider"],
            ["XnnpackExecutionProvider", "CPUExecutionProvider"],
        ),
        ([], ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ],
)
def test_providers_are_filtered_to_available_ones(
    wanted: list[str], available: list[str], expected: list[str]
) -> None:
    assert select_providers(wanted, available) == expected


def test_single_row_forms_are_accepted(iris: LoadedModel) -> None:
    m = trained_model("iris")
    row = m.X_test[0]
    for form in (row, row.astype(np.float64), row.tolist(), [row.tolist()], row.reshape(1, -1)):
        pred = iris.predict(form)
        assert pred.labels is not None
        assert pred.labels.tolist() == [m.expected[0]]


def test_non_contiguous_input_is_handled(iris: LoadedModel) -> None:
    m = trained_model("iris")
    wide = np.repeat(m.X_test[:5], 2, axis=1)[:, ::2]  # a strided view
    assert not wide.flags.c_contiguous
    pred = iris.predict(wide)
    assert pred.labels is not None
    np.testing.assert_array_equal(pred.labels, m.expected[:5])


@pytest.mark.parametrize(
    ("case", "value", "kind", "fragment"),
    [
        ("too_few_features", np.zeros((2, 3), np.float32), "features", "expects 4 features, got 3"),
        (
            "too_many_features",
            np.zeros((1, 5), np.float32),
            "features",
            "expects 4 features, got 5",
        ),
        ("three_dims", np.zeros((1, 2, 4), np.float32), "shape", "must have 2 dimensions"),
        ("scalar", np.float32(1.0), "shape", "must have 2 dimensions"),
        ("no_rows", np.zeros((0, 4), np.float32), "empty", "has no rows"),
        ("strings", np.array([["a", "b", "c", "d"]]), "dtype", "expects float32"),
        ("objects", np.array([[{}, 1, 2, 3]], dtype=object), "dtype", "expects float32"),
        (
            "nan",
            np.array([[1, np.nan, 2, 3]], np.float32),
            "non_finite",
            "first at row 0, column 1",
        ),
        ("inf", np.array([[1, 2, 3, 4], [1, 2, np.inf, 3]], np.float32), "non_finite", "row 1"),
        ("ragged_list", [[1.0, 2.0], [1.0]], "shape", "not a rectangular array"),
    ],
)
def test_schema_violations_are_precise(
    iris: LoadedModel, case: str, value: object, kind: str, fragment: str
) -> None:
    with pytest.raises(InputSchemaError) as info:
        iris.predict(value)
    assert info.value.kind == kind, case
    assert fragment in str(info.value), case
    assert "'X'" in str(info.value) or "input" in str(info.value)


def test_predict_inputs_checks_names(iris: LoadedModel) -> None:
    x = trained_model("iris").X_test[:2]
    with pytest.raises(InputSchemaError) as info:
        iris.predict_inputs({"nope": x})
    assert info.value.kind == "name" and "no input named 'nope'" in str(info.value)
    with pytest.raises(InputSchemaError) as info:
        iris.predict_inputs({})
    assert info.value.kind == "name"
    pred = iris.predict_inputs({iris.input_names[0]: x})
    assert len(pred) == 2


def test_prediction_ids_are_unique_across_threads(iris: LoadedModel) -> None:
    x = trained_model("iris").X_test[:3]
    ids: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        local: list[str] = []
        for _ in range(50):
            local.extend(iris.predict(x).ids)
        with lock:
            ids.extend(local)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4 * 50 * 3 == len(set(ids))
    assert all(len(i) <= 20 and i.replace("_", "").isalnum() for i in ids)


def test_string_labels_and_regression(tmp_path: Path, signer: Signer) -> None:
    wine = load_bundle(write_model_dir(tmp_path / "w", "wine_str", signer), signer.trust, PROFILE)
    m = trained_model("wine_str")
    pred = wine.predict(m.X_test)
    assert pred.labels is not None
    assert pred.labels.tolist() == m.expected.tolist()
    assert all(isinstance(v, str) for v in pred.labels.tolist())

    reg = load_bundle(write_model_dir(tmp_path / "d", "diabetes", signer), signer.trust, PROFILE)
    d = trained_model("diabetes")
    pred = reg.predict(d.X_test[:7])
    assert pred.labels is None and pred.values is not None
    assert pred.values.shape == (7,)
    np.testing.assert_allclose(pred.values, d.expected[:7], rtol=1e-5)


def test_load_model_dir_reads_manifest_itself(tmp_path: Path, signer: Signer) -> None:
    bundle = write_model_dir(tmp_path / "iris", "iris", signer, version=9)
    loaded = load_model_dir(bundle, None, ThreadSettings())
    assert loaded.version == 9 and loaded.n_features == 4


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("member", ["model.onnx", "reference.json", "smoke.npz"])
def test_tampered_member_is_refused_on_load(tmp_path: Path, signer: Signer, member: str) -> None:
    bundle = write_model_dir(tmp_path / "iris", "iris", signer)
    _tamper(bundle / member)
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(bundle, signer.trust, PROFILE)


def test_model_tampered_after_verification_is_refused(tmp_path: Path, signer: Signer) -> None:
    bundle = write_model_dir(tmp_path / "iris", "iris", signer)
    _tamper(bundle / "model.onnx")
    with pytest.raises(BundleError, match="modified after verification"):
        load_model_dir(bundle, None, PROFILE)


def test_edited_manifest_breaks_the_signature(tmp_path: Path, signer: Signer) -> None:
    bundle = write_model_dir(tmp_path / "iris", "iris", signer, version=1)
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    manifest["model"]["version"] = 99
    from edgefleet.core.canonical import canonical_json

    (bundle / "manifest.json").write_bytes(canonical_json(manifest))
    with pytest.raises(SignatureError):
        load_bundle(bundle, signer.trust, PROFILE)


def test_unknown_signer_is_refused(tmp_path: Path, signer: Signer) -> None:
    stranger = make_signer()
    bundle = write_model_dir(tmp_path / "iris", "iris", stranger)
    with pytest.raises(VerificationError):
        load_bundle(bundle, signer.trust, PROFILE)


def test_schema_that_disagrees_with_graph_is_a_load_error(tmp_path: Path, signer: Signer) -> None:
    overrides = {
        "io_schema": {"inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 4]}]}
    }
    bundle = write_model_dir(tmp_path / "iris", "iris", signer, overrides=overrides)
    with pytest.raises(ModelLoadError, match="'pixels' is not in the graph"):
        load_bundle(bundle, signer.trust, PROFILE)


def test_malformed_io_schema_is_a_load_error(tmp_path: Path, signer: Signer) -> None:
    overrides = {"io_schema": {"inputs": [{"name": "X", "dtype": "complex128", "shape": [-1, 4]}]}}
    bundle = write_model_dir(tmp_path / "iris", "iris", signer, overrides=overrides)
    with pytest.raises(ModelLoadError, match="io_schema is invalid"):
        load_bundle(bundle, signer.trust, PROFILE)


def test_signed_garbage_model_is_a_load_error(tmp_path: Path, signer: Signer) -> None:
    bundle = write_model_dir(
        tmp_path / "iris", "iris", signer, extra_members={"model.onnx": b"not an onnx model"}
    )
    with pytest.raises(ModelLoadError, match="cannot load model 'iris'"):
        load_bundle(bundle, signer.trust, PROFILE)


def test_signed_efb_file_loads(tmp_path: Path, signer: Signer) -> None:
    info = write_signed_bundle(tmp_path / "iris.efb", "iris", signer, version=4)
    loaded = load_bundle(info.path, signer.trust, PROFILE)
    assert loaded.version == 4 and loaded.bundle_sha256 == info.sha256
    assert loaded.bundle_dir is None
    assert list(tmp_path.iterdir()) == [info.path]  # the temporary extraction is gone
    m = trained_model("iris")
    assert loaded.predict(m.X_test[:1]).labels is not None


def test_serving_set_swap_and_versions(iris: LoadedModel, tmp_path: Path, signer: Signer) -> None:
    serving = ServingSet()
    seen: list[tuple[str, object]] = []
    serving.on_swap(lambda name, loaded: seen.append((name, loaded)))
    assert serving.swap("iris", iris) is None
    assert serving.get("iris") is iris and serving.get("iris", 3) is iris
    assert serving.get("iris", "3") is iris
    with pytest.raises(ModelNotFoundError, match="version 2 is not served"):
        serving.get("iris", 2)
    with pytest.raises(ModelNotFoundError, match="'nope' is not served"):
        serving.get("nope")
    newer = load_bundle(
        write_model_dir(tmp_path / "v4", "iris", signer, version=4), signer.trust, PROFILE
    )
    assert serving.swap("iris", newer) is iris
    assert serving.get("iris").version == 4
    with pytest.raises(ValueError):
        serving.swap("other", newer)
    assert serving.remove("iris") is newer and "iris" not in serving
    assert [name for name, _ in seen] == ["iris", "iris", "iris"]


def test_onnxruntime_failing_on_valid_input_is_an_inference_error(
    tmp_path: Path, signer: Signer
) -> None:
    loaded = load_bundle(write_model_dir(tmp_path / "iris", "iris", signer), signer.trust, PROFILE)

    def failing_run(*args: object) -> None:  # what onnxruntime raises when a kernel fails
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : kernel failed\ntrace")

    loaded._run = failing_run
    with pytest.raises(InferenceError, match="kernel failed") as info:
        loaded.predict(np.zeros((1, 4), dtype=np.float32))
    assert isinstance(info.value, OperationalError)
    assert not isinstance(info.value, ModelLoadError)  # the model loaded fine

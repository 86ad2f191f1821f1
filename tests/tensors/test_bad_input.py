"""Every bad input of a tensor model: one line of error, its exit code, nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tests.support.agents import PROFILE_NAME, AgentEnv, make_env
from tests.tensors import graphs

pytestmark = pytest.mark.subprocess  # pack records the source revision with git

Cli = Callable[..., tuple[int, str, str]]


def _one_line(err: str, message: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def _unknown_op_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


REGISTER_CASES = {
    "unknown_output_role_name": (
        ["--output-role", "nope=score"], "--output-role names unknown output 'nope'"
    ),
    "bad_role": (["--output-role", "mixed=banana"], "role must be one of"),
    "unknown_state_input": (["--state", "h=mixed"], "--state names unknown input 'h'"),
    "batch_axis_out_of_range": (["--batch-axis", "half=5"], "the input has 2 dimensions"),
    "batch_axis_syntax": (["--batch-axis", "half=first"], "expected an axis number or none"),
    "class_names_count": (
        ["--task", "classifier", "--output-role", "mixed=probabilities", "--class-names", "a,b"],
        "2 class names for output 'mixed' of 3 classes",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REGISTER_CASES))
def test_bad_declarations(cli: Cli, tmp_path: Path, case: str) -> None:
    model, samples = graphs.save(tmp_path, "multi", graphs.multi_io())
    extra, message = REGISTER_CASES[case]
    registry = tmp_path / "registry"
    code, _, err = cli("registry", "register", model, "--name", "m", "--registry", registry, *extra)
    assert code == 2, err
    _one_line(err, message)
    assert not registry.exists()


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _multi_samples(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
    _, samples = graphs.multi_io()
    for key, value in changes.items():
        if value is None:
            samples.pop(key)
        else:
            samples[key] = value
    return samples


REFERENCE_CASES = {
    "missing_and_unknown_names": (
        _multi_samples(word=None, extra=np.zeros(3)),
        "arrays must be named after the model's inputs (half, ids, mask, word, gain): "
        "missing word; unknown extra",
    ),
    "float_into_int64": (
        _multi_samples(ids=np.zeros((7, 2), np.float32)),
        "input 'ids' is int64, the array holds float32",
    ),
    "wrong_shape": (
        _multi_samples(half=np.zeros((7, 4), np.float16)),
        "input 'half' has shape [N, 3], the array has [7, 4]",
    ),
    "samples_disagree": (
        _multi_samples(ids=np.zeros((6, 2), np.int64)),
        "inputs disagree on the number of samples",
    ),
    "nan": (
        _multi_samples(half=np.full((7, 3), np.nan, np.float16)),
        "input 'half' holds 21 NaN or infinite values",
    ),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_bad_reference_samples(cli: Cli, tmp_path: Path, case: str) -> None:
    model, _ = graphs.save(tmp_path, "multi", graphs.multi_io())
    arrays, message = REFERENCE_CASES[case]
    samples = _write_npz(tmp_path / "bad.npz", **arrays)
    registry = tmp_path / "registry"
    code, _, err = cli(
        "registry", "register", model, "--name", "m", "--registry", registry,
        "--reference-data", samples,
    )  # fmt: skip
    assert code == 2, err
    _one_line(err, message)
    assert not registry.exists()


def test_reference_for_a_tensor_model_must_be_npz(cli: Cli, tmp_path: Path) -> None:
    model, _ = graphs.save(tmp_path, "conv", graphs.conv_net())
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 32, 32), np.float32))
    code, _, err = cli(
        "registry", "register", model, "--name", "m", "--registry", tmp_path / "r",
        "--reference-data", tmp_path / "x.npy",
    )  # fmt: skip
    assert code == 2
    _one_line(err, "takes --reference-data as .npz with one array per input name (image)")


def test_a_graph_onnxruntime_cannot_load_is_refused_in_one_line(cli: Cli, tmp_path: Path) -> None:
    model = _unknown_op_model(tmp_path / "custom.onnx")
    onnx.checker.check_model(onnx.load(model))  # the checker alone lets it through
    code, _, err = cli("registry", "register", model, "--name", "m", "--registry", tmp_path / "r")
    assert code == 2
    _one_line(err, "cannot load")
    assert "Frobnicate" in err and "[ONNXRuntimeError]" not in err


def test_sklearn_task_is_not_overridden(cli: Cli, tmp_path: Path) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    path = tmp_path / "iris.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    code, _, err = cli(
        "registry", "register", path, "--name", "m", "--registry", tmp_path / "r",
        "--task", "regressor",
    )  # fmt: skip
    assert code == 2
    _one_line(err, "holds a scikit-learn classification model; --task regressor contradicts it")


@pytest.fixture
def installed_multi(cli: Cli, tmp_path: Path) -> AgentEnv:
    env = make_env(tmp_path / "agent")
    model, samples = graphs.save(tmp_path / "src", "multi", graphs.multi_io())
    registry = tmp_path / "registry"
    code, _, err = cli(
        "registry", "register", model, "--name", "multi", "--registry", registry,
        "--reference-data", samples,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli(
        "pack", "multi", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
        "--out", tmp_path / "out", "--registry", registry, "--json",
    )  # fmt: skip
    assert code == 0, err
    bundle = json.loads(out)["bundle"]
    code, _, err = cli("agent", "install", bundle, "--wait", "final", "--config", env.config_path)
    assert code == 0, err
    return env


PREDICT_CASES = {
    "missing_name": (_multi_samples(gain=None), "missing gain"),
    "float_into_int64": (
        _multi_samples(ids=np.full((7, 2), 1.5)),
        "input 'ids' expects int64, got floating-point values",
    ),
    "bool_into_float": (
        _multi_samples(gain=np.array(True)),
        "input 'gain' expects float32, got true/false values",
    ),
    "int_into_bool": (
        _multi_samples(mask=np.ones((7, 4), np.int64)),
        "input 'mask' expects bool, got int64",
    ),
    "batch_disagrees": (
        _multi_samples(ids=np.zeros((3, 2), np.int64)),
        "inputs disagree on the batch size",
    ),
    "fixed_dimension": (
        _multi_samples(half=np.zeros((7, 5), np.float16)),
        "input 'half' expects 3 features, got 5",
    ),
}


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_bad_prediction_input(
    cli: Cli, installed_multi: AgentEnv, tmp_path: Path, case: str
) -> None:
    arrays, message = PREDICT_CASES[case]
    source = _write_npz(tmp_path / "in.npz", **arrays)
    out = tmp_path / "p.npz"
    code, _, err = cli(
        "agent", "predict", "multi", "--input", source, "--output", out,
        "--config", installed_multi.config_path,
    )  # fmt: skip
    assert code == 2, err
    _one_line(err, message)
    assert not out.exists()


def test_pack_refuses_a_quantization_that_does_not_apply(cli: Cli, tmp_path: Path) -> None:
    env = make_env(tmp_path / "agent")
    model, samples = graphs.save(tmp_path / "src", "sum", graphs.big_input_net())
    registry = tmp_path / "registry"
    code, _, err = cli(
        "registry", "register", model, "--name", "c", "--registry", registry,
        "--reference-data", samples,
    )  # fmt: skip
    assert code == 0, err
    code, _, err = cli(
        "pack", "c", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
        "--out", tmp_path / "out", "--registry", registry, "--quantize", "fp16",
    )  # fmt: skip
    assert code == 2
    _one_line(err, "--quantize fp16 does not apply: the graph has no MatMul, Gemm or Conv")
    assert not (tmp_path / "out").exists()

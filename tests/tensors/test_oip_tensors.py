"""OIP v2 JSON for format-2 models: several named N-D inputs, datatypes mapped strictly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tests.support.agents import PROFILE_NAME, make_env
from tests.tensors import graphs

from edgefleet.agent.errors import InputSchemaError
from edgefleet.agent.model.runtime import LoadedModel, ThreadSettings, load_bundle
from edgefleet.core.cli.main import main

Cli = Callable[..., tuple[int, str, str]]
pytestmark = pytest.mark.subprocess  # pack records the source revision with git


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Path]:
    tmp = tmp_path_factory.mktemp("oip")
    env = make_env(tmp / "agent")
    model, samples = graphs.save(tmp / "src", "multi", graphs.multi_io())

    def cli(*args: str | Path) -> str:
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        assert not info.value.code
        return ""

    cli("registry", "register", model, "--name", "multi", "--registry", tmp / "r",
        "--reference-data", samples)  # fmt: skip
    cli("pack", "multi", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
        "--out", tmp / "out", "--registry", tmp / "r")  # fmt: skip
    bundle = next((tmp / "out").glob("*.efb"))
    return load_bundle(bundle, env.signer.trust, ThreadSettings()), model


def _request(**overrides: dict[str, Any]) -> bytes:
    inputs = {
        "half": {"datatype": "FP16", "shape": [2, 3], "data": [0.5, 1, 2, 3, 4, 5]},
        "ids": {"datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 9]]},
        "mask": {"datatype": "BOOL", "shape": [2, 4], "data": [True, False] * 4},
        "word": {"datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
        "gain": {"datatype": "FP32", "shape": [], "data": [2.0]},
    }
    for name, change in overrides.items():
        inputs[name] = {**inputs[name], **change}
    return json.dumps({"inputs": [{"name": k, **v} for k, v in inputs.items()]}).encode()


def _infer(model: LoadedModel, body: bytes) -> dict[str, Any]:
    from edgefleet.agent.endpoint import oip

    call = oip.decode_infer_request(body, model)
    _, prediction = oip.run_infer(model, call)
    doc = json.loads(oip.encode_infer_response(model, prediction, call))
    return {o["name"]: o for o in doc["outputs"]}


def test_named_nd_inputs_give_the_raw_onnxruntime_outputs(
    multi: tuple[LoadedModel, Path],
) -> None:
    model, path = multi
    out = _infer(model, _request())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        "half": np.array([[0.5, 1, 2], [3, 4, 5]], np.float16),
        "ids": np.array([[1, 2], [3, 9]], np.int64),
        "mask": np.array([[True, False] * 2] * 2),
        "word": np.array(["a", "b"], dtype=object),
        "gain": np.array(2.0, np.float32),
    }
    mixed, inverted, word = session.run(None, feeds)
    assert out["mixed"]["shape"] == [2, 3] and out["mixed"]["datatype"] == "FP32"
    assert np.max(np.abs(np.array(out["mixed"]["data"]) - mixed.ravel())) <= 1e-4
    assert out["inverted"]["data"] == inverted.ravel().tolist()
    assert out["word_out"]["data"] == ["a", "b"] == word.tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gain": {"data": [True]}}, "input 'gain': datatype FP32 needs numbers, got true/false"),
        ({"ids": {"data": [1.5, 2, 3, 4]}}, "input 'ids': datatype INT64 needs integers"),
        ({"ids": {"datatype": "UINT8", "data": [300, 1, 2, 3]}}, "input 'ids': 300 is out of range for datatype UINT8"),
        ({"gain": {"datatype": "FP64"}}, "input 'gain': datatype FP64 does not match the model's FP32"),
        ({"half": {"shape": [2, 4], "data": [1] * 8}}, "input 'half' expects 3 features, got 4"),
        ({"mask": {"datatype": "INT64", "data": [1] * 8}}, "input 'mask': datatype INT64 does not match the model's BOOL"),
    ],
)  # fmt: skip
def test_datatypes_are_mapped_strictly(
    multi: tuple[LoadedModel, Path], change: dict[str, Any], message: str
) -> None:
    model, _ = multi
    with pytest.raises(InputSchemaError, match="^" + message.replace("(", r"\(")):
        _infer(model, _request(**change))


def test_model_metadata_names_roles_and_batch_axes(multi: tuple[LoadedModel, Path]) -> None:
    from edgefleet.agent.endpoint import oip

    meta = oip.model_metadata(multi[0])
    assert [i["name"] for i in meta["inputs"]] == ["half", "ids", "mask", "word", "gain"]
    assert meta["inputs"][4]["shape"] == [] and meta["inputs"][3]["datatype"] == "BYTES"
    params = meta["parameters"]
    assert params["task"] == "raw"
    assert params["output_roles"] == {"mixed": "raw", "inverted": "raw", "word_out": "raw"}
    assert params["batch_axes"]["gain"] is None and params["batch_axes"]["half"] == 0

"""``pack --preprocess image:...``: raw camera pixels in, the registered model's answers out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tests.support.agents import PROFILE_NAME, make_env
from tests.tensors import graphs
from tests.tensors.conftest import Cli

from edgefleet.agent.model.runtime import ThreadSettings, load_bundle

pytestmark = pytest.mark.subprocess  # pack records the source revision with git

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
SPEC = "image:layout=nhwc,dtype=uint8,mean={},std={}".format(
    ":".join(map(str, MEAN)), ":".join(map(str, STD))
)


def _register(cli: Cli, tmp_path: Path) -> tuple[Path, Path]:
    model, samples = graphs.save(tmp_path / "src", "cnn", graphs.conv_net())
    code, _, err = cli(
        "registry", "register", model, "--name", "cnn", "--registry", tmp_path / "r",
        "--reference-data", samples, "--task", "classifier",
    )  # fmt: skip
    assert code == 0, err
    return model, samples


def test_raw_nhwc_uint8_pixels_give_the_registered_models_answers(cli: Cli, tmp_path: Path) -> None:
    model, _ = _register(cli, tmp_path)
    env = make_env(tmp_path / "agent")
    code, out, err = cli(
        "pack", "cnn", "--profile", PROFILE_NAME, "--key", env.signer.key_path, "--out",
        tmp_path / "out", "--registry", tmp_path / "r", "--quantize", "none",
        "--preprocess", SPEC, "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    image = {i["name"]: i for i in report["io_schema"]["inputs"]}["image"]
    assert image["dtype"] == "uint8" and image["shape"] == ["N", 32, 32, 3]
    fidelity = report["validation"]["fidelity"]
    assert fidelity["passed"] and fidelity["preprocess"]["layout"] == "nhwc"
    code, _, err = cli("bundle", "verify", report["bundle"], "--trust", env.signer.trust_path)
    assert code == 0, err

    loaded = load_bundle(Path(report["bundle"]), env.signer.trust, ThreadSettings())
    pixels = np.random.default_rng(4).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    got = loaded.predict_inputs({"image": pixels}).outputs[0]
    normalised = (pixels.transpose(0, 3, 1, 2).astype(np.float32) - np.array(MEAN, np.float32)
                  .reshape(1, 3, 1, 1)) / np.array(STD, np.float32).reshape(1, 3, 1, 1)  # fmt: skip
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"image": normalised.astype(np.float32)})
    assert np.max(np.abs(got - want)) <= 1e-5


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("video:fps=30", "'image:...' or 'audio:...'"),
        ("audio:rate=16000", "'rate=16000' is not one of dtype=, scale=, input="),
        ("audio:dtype=float8", "dtype='float8'"),
        ("image:layout=hwc", "layout='hwc': nhwc or nchw"),
        ("image:dtype=int4", "dtype='int4'"),
        ("image:mean=1:2,std=1", "mean has 2 values; the input has 3 channels"),
        ("image:std=0", "std must not be 0"),
        ("image:gamma=2", "'gamma=2' is not one of"),
    ],
)
def test_bad_preprocess_specs_are_one_line_and_exit_2(
    cli: Cli, tmp_path: Path, spec: str, words: str
) -> None:
    _register(cli, tmp_path)
    env = make_env(tmp_path / "agent")
    code, _, err = cli(
        "pack", "cnn", "--profile", PROFILE_NAME, "--key", env.signer.key_path, "--out",
        tmp_path / "out", "--registry", tmp_path / "r", "--quantize", "none",
        "--preprocess", spec,
    )  # fmt: skip
    assert code == 2 and words in err and err.strip().count("\n") == 0, err
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_int16_pcm_gives_the_registered_models_answers(cli: Cli, tmp_path: Path) -> None:
    model_proto, _ = graphs.sequence_mlp()
    rng = np.random.default_rng(6)
    samples = {"x": rng.uniform(-1, 1, (12, 8, 64)).astype(np.float32)}
    model, npz = graphs.save(tmp_path / "src", "enc", (model_proto, samples))
    env = make_env(tmp_path / "agent")
    code, _, err = cli(
        "registry", "register", model, "--name", "enc", "--registry", tmp_path / "r",
        "--reference-data", npz, "--task", "embedding",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli(
        "pack", "enc", "--profile", PROFILE_NAME, "--key", env.signer.key_path, "--out",
        tmp_path / "out", "--registry", tmp_path / "r", "--quantize", "none",
        "--preprocess", "audio:dtype=int16", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["io_schema"]["inputs"][0]["dtype"] == "int16"
    loaded = load_bundle(Path(report["bundle"]), env.signer.trust, ThreadSettings())
    pcm = rng.integers(-32768, 32768, (3, 8, 64)).astype(np.int16)
    got = loaded.predict_inputs({"x": pcm}).outputs[0]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"x": pcm.astype(np.float32) / np.float32(32768)})
    assert np.max(np.abs(got - want)) <= 1e-5

"""Tensor classifiers registered with labels: held-out accuracy of float32 and of each
variant, and ``--max-accuracy-drop`` deciding (top-1 agreement only reported)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tests.support.agents import PROFILE_NAME, make_env
from tests.tensors.conftest import Cli
from tests.tensors.digits_cnn import digits_conv_net

from edgefleet.core.io_schema import IoSchema, TensorSpec
from edgefleet.packager.cli.pack_cmd import render_tensor_report
from edgefleet.packager.errors import AccuracyDropError
from edgefleet.packager.tensor_accuracy import tensor_accuracy
from edgefleet.packager.tensor_quantize import (
    EVALUATION_MAX_SAMPLES,
    choose_variant,
    split_samples,
)

SAMPLES = 96


@pytest.fixture(scope="module")
def digits() -> tuple[Any, np.ndarray, np.ndarray]:
    model, samples, info = digits_conv_net()
    return model, samples["image"][:SAMPLES], np.asarray(info["labels"][:SAMPLES])


def _schema() -> IoSchema:
    return IoSchema(
        inputs=(TensorSpec("image", "float32", ("N", 1, 8, 8)),),
        outputs=(TensorSpec("probabilities", "float32", ("N", 10), role="probabilities"),),
    )


def _float_classes(model: Any, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": x})[0]).argmax(axis=1)


def test_accuracy_compares_integer_labels_with_the_index_and_names_as_text() -> None:
    schema = _schema()
    probs = np.eye(10, dtype=np.float32)[[3, 1, 4, 1]]
    assert tensor_accuracy(schema, [probs], np.asarray([3, 1, 4, 5]), None) == 0.75
    names = [f"c{i}" for i in range(10)]
    truth = np.asarray(["c3", "c1", "c0", "c1"])
    assert tensor_accuracy(schema, [probs], truth, names) == 0.75
    assert tensor_accuracy(schema, [probs], np.asarray([3, 1, 4, 1]), names) == 1.0
    raw = IoSchema(inputs=schema.inputs, outputs=(TensorSpec("y", "float32", ("N", 10)),))
    assert tensor_accuracy(raw, [probs], np.asarray([3, 1, 4, 1]), None) is None


def _choose_degraded(model: Any, x: np.ndarray, labels: np.ndarray, every: int, **kw: Any) -> Any:
    """choose_variant where every quantized variant swaps the top class of each
    ``every``-th sample (a stand-in for a variant that loses accuracy)."""
    packaged = model.SerializeToString()
    sessions: dict[int, Any] = {}

    def outputs_of(data: bytes, index: np.ndarray) -> list[Any]:
        if id(data) not in sessions:
            sessions[id(data)] = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        probs = np.asarray(sessions[id(data)].run(None, {"image": x[index]})[0])
        if data is not packaged:
            hit = index % every == 1
            probs[hit] = np.roll(probs[hit], 1, axis=1)
        return [probs]

    return choose_variant(
        model, packaged, _schema(), len(x), int8_format="U8S8", min_cosine=0.0,
        feeds_for=lambda index: {"image": x[index]}, outputs_of=outputs_of,
        labels=labels, **kw,
    )  # fmt: skip


def test_a_variant_losing_accuracy_is_refused_and_top1_is_only_reported(digits: Any) -> None:
    model, x, _ = digits
    # Labels the float graph gets right: float32 accuracy is 1 on the held-out samples.
    labels = _float_classes(model, x)
    evaluation = split_samples(len(x))[1][:EVALUATION_MAX_SAMPLES]
    lost = float(np.mean(evaluation % 10 == 1))
    assert 0.05 < lost < 0.2

    choice = _choose_degraded(model, x, labels, 10, requested="auto", max_accuracy_drop=0.01)
    q = choice.quantization
    assert q["method"] == "none" and q["variant"] == "float32"
    assert q["criteria"]["max_accuracy_drop"] == 0.01
    assert q["criteria"]["min_top1_agreement"] is None
    float_row = q["variants"][0]
    assert float_row["variant"] == "float32" and float_row["accuracy"] == 1.0
    static = [r for r in q["variants"] if r["variant"] == "static"]
    assert static and all(r["status"] == "rejected" for r in static)
    for row in static:
        # int8 itself may flip a sample or two besides the swapped ones.
        assert row["accuracy"] == pytest.approx(1.0 - lost, abs=2 / 64)
        assert row["accuracy_drop"] == pytest.approx(1.0 - row["accuracy"])
        assert "loses accuracy: accuracy drop" in row["reason"], row["reason"]
        assert "top-1 agreement of" not in row["reason"]
    assert "accuracy drop" in q["reason"]

    with pytest.raises(AccuracyDropError, match=r"--quantize static refused: .*accuracy drop"):
        _choose_degraded(model, x, labels, 10, requested="static", max_accuracy_drop=0.01)

    # A top-1 agreement of about 0.9 (< 0.98) does not refuse when the accuracy drop is
    # within --max-accuracy-drop: with labels, agreement is informational.
    allowed = _choose_degraded(model, x, labels, 10, requested="auto", max_accuracy_drop=0.2)
    chosen = next(r for r in allowed.quantization["variants"] if r["status"] == "chosen")
    assert allowed.quantization["method"] == "static", allowed.quantization["reason"]
    assert chosen["outputs"]["probabilities"]["top1_agreement"] < 0.98
    assert "accuracy" in allowed.quantization["reason"]


def test_labelled_classifier_pack_shows_accuracy_of_float_and_the_chosen_variant(
    cli: Cli, tmp_path: Path, digits: Any
) -> None:
    model, x, labels = digits
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "digits.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "src" / "digits.npz", image=x)
    np.save(tmp_path / "src" / "labels.npy", labels)
    np.save(tmp_path / "src" / "short.npy", labels[:-1])
    registry = tmp_path / "registry"
    register = (
        "registry", "register", path, "--name", "d", "--task", "classifier",
        "--reference-data", tmp_path / "src" / "digits.npz", "--registry", registry,
    )  # fmt: skip
    code, _, err = cli(*register, "--labels", tmp_path / "src" / "short.npy")
    assert code == 2 and f"{SAMPLES - 1} labels for {SAMPLES} samples" in err, err
    code, _, err = cli(*register, "--labels", tmp_path / "src" / "labels.npy")
    assert code == 0, err

    env = make_env(tmp_path / "agent")
    code, out, err = cli(
        "pack", "d", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
        "--out", tmp_path / "out", "--registry", registry, "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    q = report["quantization"]
    assert q["method"] == "static", q["reason"]
    assert q["criteria"]["max_accuracy_drop"] == 0.01
    evaluation = split_samples(SAMPLES)[1][:EVALUATION_MAX_SAMPLES]
    expected = float(np.mean(_float_classes(model, x[evaluation]) == labels[evaluation]))
    float_row = q["variants"][0]
    assert float_row["accuracy"] == pytest.approx(expected, abs=1 / 64)
    chosen = next(r for r in q["variants"] if r["status"] == "chosen")
    assert chosen["accuracy_drop"] <= 0.01
    assert chosen["accuracy_drop"] == pytest.approx(
        max(0.0, float_row["accuracy"] - chosen["accuracy"])
    )
    text = render_tensor_report(report)
    assert f"accuracy {float_row['accuracy']:.4f}" in text
    assert f"accuracy {chosen['accuracy']:.4f}" in text

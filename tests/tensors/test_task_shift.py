"""Prediction shift of segmenters and sequence models, end to end through the paths every
task takes: register -> pack (the drift reference) -> the agent's endpoint -> the window
recorder (the prediction mix the rollout gates compare, and the drift statistics).

- segmenter: the class of every pixel of the argmax mask (the class mix over pixels) and,
  per image, each class's share of its pixels (``mask_scores.share[k]``);
- sequence: the top-1 confidence of every step, by tenths, and per sample its mean and
  minimum (``step_probs.step_top1.mean`` / ``.min``).
"""

from __future__ import annotations

import base64
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tests.agent.test_endpoint import RawClient
from tests.support.agents import PROFILE_NAME, make_env
from tests.tensors import graphs

from edgefleet.agent.endpoint import EndpointConfig, EndpointServer
from edgefleet.agent.model.runtime import ThreadSettings, load_bundle
from edgefleet.agent.model.serving import ServingSet
from edgefleet.core.cli.main import main
from edgefleet.core.drift import ReferenceProfile, WindowStats, score_window
from edgefleet.core.drift.tensor_summary import TensorDriftPlan, prediction_keys
from edgefleet.core.io_schema import IoSchema, TensorSpec

CLASSES = ("sky", "road", "car", "tree")


def _schema(outputs: list[TensorSpec]) -> IoSchema:
    return IoSchema(inputs=(TensorSpec("x", "float32", ("N", 4)),), outputs=tuple(outputs))


# --- the plan (pure) --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "label"])
def test_segmenter_shares_are_the_class_mix_over_pixels(layout: str) -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (3, 5, 6))
    scores = np.eye(4, dtype=np.float32)[mask]  # [N, H, W, C]
    if layout == "nchw":
        spec = TensorSpec("m", "float32", ("N", 4, 5, 6), role="probabilities")
        out = np.moveaxis(scores, 3, 1)
    elif layout == "nhwc":
        spec, out = TensorSpec("m", "float32", ("N", 5, 6, 4), role="probabilities"), scores
    else:
        spec, out = TensorSpec("m", "int64", ("N", 5, 6), role="label"), mask
    plan = TensorDriftPlan.from_io_schema(_schema([spec]), "segmenter", CLASSES)
    assert plan.feature_names[-4:] == [f"m.share[{k}]" for k in range(4)]
    assert plan.class_output is None  # no one class per image
    rows = plan.rows({"x": np.zeros((3, 4), np.float32)}, {"m": out})
    want = np.stack([np.bincount(m.ravel(), minlength=4) / m.size for m in mask])
    np.testing.assert_allclose(rows[:, -4:], want)
    keys = prediction_keys(plan, "segmenter", {"m": out}, CLASSES)
    assert keys is not None and Counter(keys.tolist()) == {
        CLASSES[c]: n for c, n in Counter(mask.ravel().tolist()).items()
    }


def test_sequence_confidence_per_step_or_norm_per_step() -> None:
    probs = np.array([[[0.95, 0.05], [0.55, 0.45], [0.28, 0.72]]], np.float32)  # [1, 3, 2]
    spec = TensorSpec("p", "float32", ("N", "T", 2), role="probabilities")
    plan = TensorDriftPlan.from_io_schema(_schema([spec]), "sequence")
    assert plan.feature_names[-2:] == ["p.step_top1.mean", "p.step_top1.min"]
    rows = plan.rows({"x": np.zeros((1, 4), np.float32)}, {"p": probs})
    np.testing.assert_allclose(rows[0, -2:], [(0.95 + 0.55 + 0.72) / 3, 0.55], rtol=1e-6)
    keys = prediction_keys(plan, "sequence", {"p": probs})
    assert keys is not None and keys.tolist() == ["0.9", "0.5", "0.7"]

    hidden = TensorSpec("h", "float32", ("T", "N", 2), 1)  # role raw, batch on axis 1
    raw_plan = TensorDriftPlan.from_io_schema(_schema([hidden]), "sequence")
    states = np.array([[[3, 4]], [[0, 0.5]]], np.float32)  # [T=2, N=1, 2]: norms 5, 0.5
    assert raw_plan.feature_names[-2:] == ["h.step_norm.mean", "h.step_norm.max"]
    np.testing.assert_allclose(
        raw_plan.rows({"x": np.zeros((1, 4), np.float32)}, {"h": states})[0, -2:], [2.75, 5.0]
    )
    norm_keys = prediction_keys(raw_plan, "sequence", {"h": states})
    assert norm_keys is not None and norm_keys.tolist() == ["5e+00", "5e-01"]
    # Other tasks keep their summaries: the same output is a plain raw one there.
    assert prediction_keys(raw_plan.from_io_schema(_schema([hidden]), "raw"), "raw", {}) is None


# --- register -> pack -> endpoint -> window ---------------------------------------------

CASES = {
    "segmenter": (
        graphs.tiny_segmenter,
        "image",
        "mask_scores",
        ["--class-names", ",".join(CLASSES)],
    ),
    "sequence": (graphs.tiny_sequence, "x", "step_probs", []),
}


def _keys_of(task: str, out: np.ndarray) -> Counter[str]:
    if task == "segmenter":
        return Counter(CLASSES[c] for c in np.argmax(out, axis=1).ravel().tolist())
    tenth = np.clip(np.floor(out.max(axis=2) * 10), 0, 9).ravel()
    return Counter(f"{b / 10:.1f}" for b in tenth.tolist())


@pytest.mark.subprocess  # pack records the source revision with git
@pytest.mark.parametrize("task", sorted(CASES))
def test_prediction_shift_of_segmenters_and_sequence_models(tmp_path: Path, task: str) -> None:
    from edgefleet.agent.daemon import registration_for
    from edgefleet.agent.telemetry import TelemetryBuffer, WindowRecorder
    from edgefleet.core.testing.clock import FakeClock

    build, input_name, output_name, extra = CASES[task]
    env = make_env(tmp_path / "agent")
    model, samples = graphs.save(tmp_path / "src", task, build())
    for args in (
        ["registry", "register", model, "--name", task, "--registry", tmp_path / "r",
         "--reference-data", samples, "--task", task,
         "--output-role", f"{output_name}=probabilities", *extra],
        ["pack", task, "--profile", PROFILE_NAME, "--key", env.signer.key_path,
         "--out", tmp_path / "out", "--registry", tmp_path / "r", "--quantize", "none"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        assert not info.value.code
    bundle = next((tmp_path / "out").glob("*.efb"))
    store = tmp_path / "store"
    with tarfile.open(bundle) as tar:
        tar.extractall(store, filter="data")
    loaded = load_bundle(bundle, env.signer.trust, ThreadSettings())
    loaded.bundle_dir = store  # as the daemon's installed copy: reference.json is read from it
    assert loaded.schema.io is not None
    plan = TensorDriftPlan.from_io_schema(loaded.schema.io, task, loaded.labels)
    profile = ReferenceProfile.from_json((store / "reference.json").read_bytes())
    assert list(profile.feature_names) == plan.feature_names  # packager and agent agree
    task_features = [n for n in plan.feature_names if n.startswith(output_name)]
    assert task_features == (
        [f"mask_scores.share[{k}]" for k in range(4)]
        if task == "segmenter"
        else ["step_probs.step_top1.mean", "step_probs.step_top1.min"]
    )

    clock = FakeClock(1_000_000.0)
    buffer = TelemetryBuffer(tmp_path / "telemetry.db", 4 << 20)
    recorder = WindowRecorder(buffer, 60, clock=clock)
    registration = registration_for(loaded)
    assert registration.reference is not None
    recorder.register_model(registration)
    with np.load(samples) as data:
        x = data[input_name][:12]
    with EndpointServer(EndpointConfig(port=0), ServingSet({task: loaded}), recorder) as srv:
        client = RawClient(srv.port)
        body = json.dumps(
            {"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape),
                         "data": x.ravel().tolist()}]}
        ).encode()  # fmt: skip
        status, _, reply = client.request("POST", f"/v2/models/{task}/infer", body)
        client.close()
        assert status == 200, reply
    clock.advance(60)
    recorder.flush()
    [record] = buffer.records()
    out = loaded.predict_inputs({input_name: x}).outputs[0]
    assert record.body["predictions"] == dict(_keys_of(task, out))
    drift = WindowStats.from_bytes(base64.b64decode(record.body["drift"]))
    assert drift.n == 12
    report = score_window(profile, drift)
    assert {f.name for f in report.features} >= set(task_features)

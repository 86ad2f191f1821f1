"""Tensor drift: inputs summarised per channel, outputs monitored, reference built at pack.

The plan is checked as pure logic; the reference is built by the real ``pack``
from the ``.npz`` samples of a conv net built here; the agent's endpoint
hands the same summaries to telemetry; the existing window machinery scores
them (no drift on the same distribution, drift on brighter images).
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tests.agent.test_endpoint import RawClient
from tests.support.agents import PROFILE_NAME, make_env
from tests.tensors import graphs

from edgefleet.agent.endpoint import EndpointConfig, EndpointServer
from edgefleet.agent.model.runtime import LoadedModel, ThreadSettings, load_bundle
from edgefleet.agent.model.serving import ServingSet
from edgefleet.agent.telemetry_sink import RecordingTelemetrySink
from edgefleet.core.cli.main import main
from edgefleet.core.drift import ReferenceProfile, WindowStats, score_window
from edgefleet.core.drift.tensor_summary import MAX_CHANNELS, TensorDriftPlan
from edgefleet.core.io_schema import IoSchema, TensorSpec
from edgefleet.hub.fleet.references import bundle_loaders


def _schema(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> IoSchema:
    return IoSchema(inputs=tuple(inputs), outputs=tuple(outputs))


# --- the plan (pure) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "batch_axis", "channel_axis", "features"),
    [
        (["N", 3, 224, 224], 0, 1, 12),  # NCHW
        (["N", 224, 224, 3], 0, 3, 12),  # NHWC
        (["N", "T", 6], 0, 2, 24),  # sensor window [N, T, C]
        (["T", "N", 4], 1, 2, 16),  # a GRU's [T, N, F]
        (["N", 64, 7, 7], 0, 3, 28),  # 64 first (above MAX_CHANNELS): the last axis
        (["N", 512, 40, 40], 0, None, 4),  # too many channels: one whole-sample summary
        (["N", "H", "W"], 0, None, 4),  # nothing fixed
    ],
)
def test_channel_axis_and_feature_count_never_depend_on_pixels(
    shape: list[Any], batch_axis: int, channel_axis: int | None, features: int
) -> None:
    spec = TensorSpec("x", "float32", tuple(shape), batch_axis)
    plan = TensorDriftPlan.from_io_schema(_schema([spec], [TensorSpec("y", "float32", ("N",))]))
    (summary,) = plan.inputs
    assert summary.channel_axis == channel_axis
    assert len(summary.feature_names()) == features
    assert features <= MAX_CHANNELS * 4


def test_rows_are_per_channel_statistics_and_output_monitors() -> None:
    schema = _schema(
        [
            TensorSpec("image", "uint8", ("N", 8, 8, 3)),
            TensorSpec("h_in", "float32", (1, "N", 4), None, role="state"),
            TensorSpec("word", "string", ("N",)),
        ],
        [
            TensorSpec("probs", "float32", ("N", 5), role="probabilities"),
            TensorSpec("emb", "float32", ("N", 4), role="embedding"),
            TensorSpec("anomaly", "float32", ("N", 2), role="score"),
            TensorSpec("h_out", "float32", (1, "N", 4), None, role="state"),
        ],
    )
    plan = TensorDriftPlan.from_io_schema(schema)
    assert [s.name for s in plan.inputs] == ["image"]  # no state, no text
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    probs = rng.dirichlet(np.ones(5), 2).astype(np.float32)
    emb = rng.normal(0, 1, (2, 4)).astype(np.float32)
    anomaly = rng.random((2, 2)).astype(np.float32)
    rows = plan.rows({"image": image}, {"probs": probs, "emb": emb, "anomaly": anomaly})
    names = plan.feature_names
    assert rows.shape == (2, len(names)) == (2, 12 + 1 + 2 + 1)
    green = image[1, :, :, 1].astype(np.float64)
    got = dict(zip(names, rows[1], strict=True))
    assert got["image[c1].mean"] == pytest.approx(green.mean())
    assert got["image[c1].std"] == pytest.approx(green.std())
    assert (got["image[c1].min"], got["image[c1].max"]) == (green.min(), green.max())
    assert got["probs.top1"] == pytest.approx(probs[1].max())
    assert got["emb.norm"] == pytest.approx(np.linalg.norm(emb[1]), rel=1e-6)
    assert got["anomaly.max"] == pytest.approx(anomaly[1].max())
    classes = plan.classes({"probs": probs})
    assert classes is not None and classes.tolist() == np.argmax(probs, axis=1).tolist()


# --- pack -> reference.json -> endpoint -> window ----------------------------------------


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("drift")
    env = make_env(tmp / "agent")
    model, samples = graphs.save(tmp / "src", "cnn", graphs.conv_net())
    rng = np.random.default_rng(21)
    reference = {"image": rng.random((64, 3, 32, 32)).astype(np.float32)}
    np.savez(samples, **reference)  # type: ignore[arg-type]
    for args in (
        ["registry", "register", model, "--name", "cnn", "--registry", tmp / "r",
         "--reference-data", samples, "--task", "classifier"],
        ["pack", "cnn", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
         "--out", tmp / "out", "--registry", tmp / "r", "--quantize", "none"],
        ["bundle", "verify", next(iter([tmp / "out"])), "--trust", env.signer.trust_path],
    ):  # fmt: skip
        if args[0] == "bundle":
            args[2] = next((tmp / "out").glob("*.efb"))
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        assert not info.value.code
    bundle = next((tmp / "out").glob("*.efb"))
    loaded = load_bundle(bundle, env.signer.trust, ThreadSettings())
    return {"bundle": bundle, "model": loaded, "rng": rng, "reference": reference}


def _member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


@pytest.mark.subprocess  # pack records the source revision with git
def test_pack_writes_a_per_channel_reference(packed: dict[str, Any]) -> None:
    manifest = json.loads(_member(packed["bundle"], "manifest.json"))
    assert manifest["reference_path"] == "reference.json"
    profile = ReferenceProfile.from_json(_member(packed["bundle"], "reference.json"))
    loaded: LoadedModel = packed["model"]
    assert loaded.schema.io is not None
    plan = TensorDriftPlan.from_io_schema(loaded.schema.io)
    assert (
        list(profile.feature_names)
        == plan.feature_names
        == [
            *(f"image[c{k}].{s}" for k in range(3) for s in ("mean", "std", "min", "max")),
            "scores.top1",
        ]
    )
    assert profile.outputs is not None  # the class distribution
    assert len(_member(packed["bundle"], "reference.json")) < 64 * 1024
    drift = manifest["validation"]["drift"]
    assert drift["features"] == 13 and drift["samples"] == 64


@pytest.mark.subprocess
def test_endpoint_hands_summaries_to_telemetry_and_the_window_scores_them(
    packed: dict[str, Any],
) -> None:
    loaded: LoadedModel = packed["model"]
    profile = ReferenceProfile.from_json(_member(packed["bundle"], "reference.json"))
    sink = RecordingTelemetrySink()
    rng = packed["rng"]
    same = rng.random((320, 3, 32, 32)).astype(np.float32)  # min_n is 300
    brighter = np.clip(same + 0.5, 0, 1.5).astype(np.float32)
    with EndpointServer(EndpointConfig(port=0), ServingSet({"cnn": loaded}), sink) as srv:
        client = RawClient(srv.port)
        for batch in (same, brighter):
            header = json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(batch.shape),
                             "parameters": {"binary_data_size": batch.nbytes}}]}
            ).encode()  # fmt: skip
            status, _, body = client.request(
                "POST", "/v2/models/cnn/infer", header + batch.tobytes(),
                {"Inference-Header-Content-Length": str(len(header))},
            )  # fmt: skip
            assert status == 200, body
        client.close()
    first, second = sink.inferences[-2:]
    assert first.X.shape == (320, 13)  # 13 numbers per image, not 3072
    assert loaded.schema.io is not None
    plan = TensorDriftPlan.from_io_schema(loaded.schema.io)
    scores = loaded.predict_inputs({"image": same}).outputs[0]
    np.testing.assert_allclose(first.X, plan.rows({"image": same}, {"scores": scores}), rtol=1e-6)
    assert first.predictions.tolist() == np.argmax(scores, axis=1).tolist()

    def report(rows: np.ndarray, classes: np.ndarray) -> Any:
        window = WindowStats.empty(profile, 0.0, 60.0)
        window.update(rows)
        window.update_outputs(classes)
        return score_window(profile, window)

    calm = report(first.X, first.predictions)
    shifted = report(second.X, second.predictions)
    assert calm.feature("image[c0].mean").verdict == "no_drift"
    assert calm.dataset_drift is False
    assert shifted.feature("image[c0].mean").verdict == "drift"
    assert shifted.dataset_drift is True


def test_hub_loader_takes_a_null_reference_path_as_no_reference(tmp_path: Path) -> None:
    """A format-2 bundle without drift reference has reference_path null: the hub loader
    used to fall back to reference.json and fail on the missing member."""

    def write(name: str, manifest: dict[str, Any], members: dict[str, bytes]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w") as tar:
            for member, data in {"manifest.json": json.dumps(manifest).encode(), **members}.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    rows = np.random.default_rng(1).normal(0, 1, (50, 2))
    profile = ReferenceProfile.build(rows, ["a", "b"])
    bundles = {
        1: SimpleNamespace(
            manifest={"reference_path": None},
            sha256="v1",
            path=write("v1.efb", {"reference_path": None}, {}).name,
            published_at=1,
        ),
        2: SimpleNamespace(  # written before the field existed: reference.json by default
            manifest={},
            sha256="v2",
            path=write("v2.efb", {}, {"reference.json": profile.to_json().encode()}).name,
            published_at=1,
        ),
    }
    index = SimpleNamespace(find_bundles=lambda model, version: [bundles[version]])
    reference, _ = bundle_loaders(index, lambda sha256: tmp_path / f"{sha256}.efb")
    assert reference("m", 1) is None
    loaded = reference("m", 2)
    assert loaded is not None and loaded.profile_id == profile.profile_id


@pytest.mark.subprocess  # pack records the source revision with git
def test_a_tensor_classifier_counts_its_class_mix_by_name(
    tmp_path: Path, packed: dict[str, Any]
) -> None:
    """The rollout gates' prediction PSI needs class counts: a declared tensor classifier
    ("classifier", not the tables' "classification") counts its top-1 class per sample,
    named by its class names, into a window that also folds its drift summaries."""
    from edgefleet.agent.daemon import registration_for
    from edgefleet.agent.telemetry import TelemetryBuffer, WindowRecorder
    from edgefleet.core.testing.clock import FakeClock

    env = make_env(tmp_path / "agent")
    model, samples = graphs.save(tmp_path / "src", "cnn", graphs.conv_net())
    names = "a,b,c,d,e,f,g,h,i,j"
    for args in (
        ["registry", "register", model, "--name", "cnn", "--registry", tmp_path / "r",
         "--reference-data", samples, "--task", "classifier", "--class-names", names],
        ["pack", "cnn", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
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
    clock = FakeClock(1_000_000.0)
    buffer = TelemetryBuffer(tmp_path / "telemetry.db", 4 << 20)
    recorder = WindowRecorder(buffer, 60, clock=clock)
    registration = registration_for(loaded)
    assert registration.reference is not None
    recorder.register_model(registration)
    x = packed["rng"].random((10, 3, 32, 32)).astype(np.float32)
    with EndpointServer(EndpointConfig(port=0), ServingSet({"cnn": loaded}), recorder) as srv:
        client = RawClient(srv.port)
        body = json.dumps(
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [10, 3, 32, 32],
                         "data": x.ravel().tolist()}]}
        ).encode()  # fmt: skip
        status, _, reply = client.request("POST", "/v2/models/cnn/infer", body)
        client.close()
        assert status == 200, reply
    clock.advance(60)
    recorder.flush()
    [record] = buffer.records()
    top = np.argmax(loaded.predict_inputs({"image": x}).outputs[0], axis=1)
    want: dict[str, int] = {}
    for k in top:
        want[names.split(",")[k]] = want.get(names.split(",")[k], 0) + 1
    assert record.body["predictions"] == want
    drift = WindowStats.from_bytes(base64.b64decode(record.body["drift"]))
    assert drift.n == 10


def test_prediction_keys_per_task_and_not_applicable_for_raw(tmp_path: Path) -> None:
    """What the rollout gates' prediction PSI compares: classes, score bins, norm bins; raw
    counts nothing, so the gate is not_applicable for it (segmenters and sequence models:
    tests/tensors/test_task_shift.py)."""
    from edgefleet.agent.telemetry import ModelRegistration, TelemetryBuffer, WindowRecorder
    from edgefleet.core.drift.tensor_summary import prediction_keys
    from edgefleet.core.testing.clock import FakeClock

    schema = _schema(
        [TensorSpec("x", "float32", ("N", 8))],
        [
            TensorSpec("emb", "float32", ("N", 4), role="embedding"),
            TensorSpec("score", "float32", ("N", 3), role="score"),
        ],
    )
    plan = TensorDriftPlan.from_io_schema(schema)
    emb = np.array([[3, 4, 0, 0], [0, 0, 0, 0.2]], np.float32)  # norms 5 and 0.2
    score = np.array([[0.1, 0.74, 0.2], [12.0, -3, 0]], np.float32)
    outputs = {"emb": emb, "score": score}
    embedding = prediction_keys(plan, "embedding", outputs)
    assert embedding is not None and embedding.tolist() == ["5e+00", "2e-01"]
    anomaly = prediction_keys(plan, "anomaly", outputs)
    assert anomaly is not None and anomaly.tolist() == ["7e-01", "1e+01"]
    assert prediction_keys(plan, "raw", outputs) is None

    clock = FakeClock(1_000_000.0)
    buffer = TelemetryBuffer(tmp_path / "telemetry.db", 4 << 20)
    recorder = WindowRecorder(buffer, 60, clock=clock)
    recorder.register_model(ModelRegistration("emb", 1, "embedding", None, None))
    recorder.register_model(ModelRegistration("raw", 1, "raw", None, None))
    X = np.zeros((2, 8), np.float32)
    recorder.record_inference("emb", 1, X, embedding, 1.0, ["a0", "a1"])
    recorder.record_inference("raw", 1, X, np.array([0.5, 0.7]), 1.0, ["b0", "b1"])
    clock.advance(60)
    recorder.flush()
    bodies = {r.body["model"]: r.body for r in buffer.records()}
    assert bodies["emb"]["predictions"] == {"5e+00": 1, "2e-01": 1}
    assert not bodies["raw"].get("predictions")

"""Any ONNX model, end to end: register -> pack -> bundle verify -> agent install -> agent predict.

Every model is built here with onnx.helper (seeded weights). The served
outputs are compared with onnxruntime running the registered file directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tests.support.agents import PROFILE_NAME, AgentEnv
from tests.tensors import graphs

pytestmark = pytest.mark.subprocess  # pack records the source revision with git

Cli = Callable[..., tuple[int, str, str]]


def raw_outputs(model: Path, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {k: (v.astype(object) if v.dtype.kind == "U" else v) for k, v in samples.items()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def raw_outputs_looped(model: Path, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A fixed-batch-1 graph run sample by sample, outputs stacked on axis 0."""
    n = len(next(iter(samples.values())))
    parts = [raw_outputs(model, {k: v[i : i + 1] for k, v in samples.items()}) for i in range(n)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        value = got[name]
        assert value.shape == expected.shape, name
        if expected.dtype.kind == "f":
            assert np.max(np.abs(value.astype(np.float64) - expected)) <= 1e-4, name
        else:
            assert np.array_equal(value.astype(str), expected.astype(str)), name


def through_the_fleet(
    cli: Cli,
    env: AgentEnv,
    tmp: Path,
    name: str,
    model: Path,
    samples: Path,
    *register: str,
) -> tuple[dict[str, Any], Path]:
    """register, pack, verify, install; returns the pack report and the bundle path."""
    registry = tmp / "registry"
    code, out, err = cli(
        "registry", "register", model, "--name", name, "--reference-data", samples,
        "--registry", registry, "--json", *register,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli(
        "pack", name, "--profile", PROFILE_NAME, "--key", env.signer.key_path,
        "--out", tmp / "out", "--registry", registry, "--quantize", "none", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    bundle = Path(report["bundle"])
    code, out, err = cli("bundle", "verify", bundle, "--trust", env.signer.trust_path)
    assert code == 0, err
    code, out, err = cli(
        "agent", "install", bundle, "--wait", "final", "--config", env.config_path, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["state"] == "committed", out
    return report, bundle


def predict_npz(cli: Cli, env: AgentEnv, name: str, samples: Path, out: Path) -> dict[str, Any]:
    code, _, err = cli(
        "agent", "predict", name, "--input", samples, "--output", out, "--config", env.config_path
    )
    assert code == 0, err
    with np.load(out, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


CASES = {
    "conv_dynamic_batch": (graphs.conv_net, ["--task", "classifier", "--class-names", "a,b,c,d,e,f,g,h,i,j"]),
    "conv_fixed_batch_1": (lambda: graphs.conv_net(1), []),
    "gru_with_state": (
        graphs.gru_with_state,
        ["--task", "sequence", "--state", "h_in=h_out", "--batch-axis", "x=1",
         "--batch-axis", "y=2"],
    ),
    "typed_multi_io": (graphs.multi_io, ["--output-role", "mixed=score"]),
    "if_subgraph": (graphs.with_if_subgraph, []),
    "loop_subgraph": (graphs.with_loop, []),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_served_outputs_equal_onnxruntime(
    cli: Cli, env: AgentEnv, tmp_path: Path, case: str
) -> None:
    build, register = CASES[case]
    model, samples = graphs.save(tmp_path / "src", case, build())
    report, _ = through_the_fleet(cli, env, tmp_path, "m", model, samples, *register)
    assert report["format_version"] == 2
    assert report["validation"]["fidelity"]["passed"]
    if case == "gru_with_state":
        axes = {t["name"]: t["batch_axis"] for t in report["io_schema"]["outputs"]}
        roles = {t["name"]: t["role"] for t in report["io_schema"]["inputs"]}
        assert axes == {"y": 2, "h_out": None} and roles == {"x": "data", "h_in": "state"}
    got = predict_npz(cli, env, "m", samples, tmp_path / "pred.npz")
    with np.load(samples) as z:
        arrays = {k: z[k] for k in z.files}
    looped = case == "conv_fixed_batch_1"
    want = (raw_outputs_looped if looped else raw_outputs)(model, arrays)
    assert_same(got, want)


def test_declared_classifier_keeps_its_class_names_and_roles(
    cli: Cli, env: AgentEnv, tmp_path: Path
) -> None:
    model, samples = graphs.save(tmp_path / "src", "conv", graphs.conv_net())
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    report, bundle = through_the_fleet(
        cli, env, tmp_path, "cnn", model, samples, "--task", "classifier", "--class-names", names
    )
    assert report["model"]["task"] == "classifier"
    assert report["model"]["labels"] == [f"class{i}" for i in range(10)]
    (output,) = report["io_schema"]["outputs"]
    assert output["role"] == "probabilities" and output["shape"] == ["N", 10]
    (image,) = report["io_schema"]["inputs"]
    assert image == {
        "name": "image", "dtype": "float32", "shape": ["N", 3, 32, 32],
        "batch_axis": 0, "role": "data",
    }  # fmt: skip


def test_unknown_role_is_raw_with_a_notice_not_an_invented_classifier(
    cli: Cli, tmp_path: Path
) -> None:
    model, samples = graphs.save(tmp_path, "linear", graphs.linear_10_to_8())
    code, out, err = cli(
        "registry", "register", model, "--name", "lin", "--reference-data", samples,
        "--registry", tmp_path / "reg", "--json",
    )  # fmt: skip
    assert code == 0, err
    registered = json.loads(out)
    assert registered["task"] == "raw" and registered["labels"] is None
    assert [o["role"] for o in registered["io_schema"]["outputs"]] == ["raw"]
    assert [o["name"] for o in registered["io_schema"]["outputs"]] == ["y"]  # nothing invented
    assert err.count("\n") == 1 and "registered as raw" in err


def test_big_input_stays_within_the_bundle_and_manifest_budgets(
    cli: Cli, env: AgentEnv, tmp_path: Path
) -> None:
    model, samples = graphs.save(tmp_path / "src", "big", graphs.big_input_net())
    report, bundle = through_the_fleet(cli, env, tmp_path, "big", model, samples)
    from edgefleet.core.bundle_verifier import inspect_bundle

    manifest = inspect_bundle(bundle).manifest
    assert len(manifest.canonical_bytes()) <= 64 * 1024
    assert bundle.stat().st_size <= model.stat().st_size + 512 * 1024
    smoke = report["validation"]["smoke"]
    assert smoke["generated_inputs"]["image"]["generator"] == "splitmix64"
    # The drift reference grows with channels, never with pixels: 4 numbers per channel.
    assert manifest.reference_path == "reference.json"
    assert report["validation"]["drift"]["features"] == 3 * 4
    got = predict_npz(cli, env, "big", samples, tmp_path / "pred.npz")
    with np.load(samples) as z:
        assert_same(got, raw_outputs(model, {"image": z["image"]}))


def test_jsonl_named_inputs(cli: Cli, env: AgentEnv, tmp_path: Path) -> None:
    model, samples = graphs.save(tmp_path / "src", "multi", graphs.multi_io())
    through_the_fleet(cli, env, tmp_path, "multi", model, samples)
    with np.load(samples) as z:
        arrays = {k: z[k] for k in z.files}
    lines = [
        json.dumps(
            {
                "half": arrays["half"][i].astype(float).tolist(),
                "ids": arrays["ids"][i].tolist(),
                "mask": arrays["mask"][i].tolist(),
                "word": str(arrays["word"][i]),
                "gain": 2.5,
            }
        )
        for i in range(3)
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    code, out, err = cli(
        "agent", "predict", "multi", "--input", source, "--config", env.config_path
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    want = raw_outputs(model, {k: (v if k == "gain" else v[:3]) for k, v in arrays.items()})
    assert [r["row"] for r in rows] == [0, 1, 2]
    assert [r["word_out"] for r in rows] == want["word_out"].tolist()
    assert np.max(np.abs(np.array([r["mixed"] for r in rows]) - want["mixed"])) <= 1e-4


@pytest.mark.slow
def test_daemon_serves_a_conv_net_through_the_endpoint(
    cli: Cli, env: AgentEnv, tmp_path: Path
) -> None:
    """The real `agent run` process: install, serve over OIP JSON, outputs as onnxruntime's."""
    from tests.support.agents import http_json, stop

    model, samples = graphs.save(tmp_path / "src", "conv", graphs.conv_net())
    through_the_fleet(cli, env, tmp_path, "cnn", model, samples, "--task", "classifier")
    with np.load(samples) as z:
        images = z["image"][:3]
    proc = env.start_daemon()
    try:
        url = env.endpoint_url(proc)
        body = {
            "inputs": [
                {"name": "image", "shape": list(images.shape), "datatype": "FP32",
                 "data": images.ravel().tolist()}
            ]
        }  # fmt: skip
        status, doc = http_json(f"{url}/v2/models/cnn/infer", body)
        assert status == 200, doc
        scores = next(o for o in doc["outputs"] if o["name"] == "scores")
        want = raw_outputs(model, {"image": images})["scores"]
        assert scores["shape"] == [3, 10]
        assert np.max(np.abs(np.array(scores["data"]).reshape(3, 10) - want)) <= 1e-4
        body["inputs"][0]["datatype"] = "FP64"
        status, doc = http_json(f"{url}/v2/models/cnn/infer", body)
        assert status == 400 and "image" in json.dumps(doc), doc
    finally:
        assert stop(proc) == 0, env.log_tail()


def test_metadata_props_declare_the_task_and_class_names(cli: Cli, tmp_path: Path) -> None:
    from onnx import helper

    model, samples = graphs.conv_net()
    names = [f"c{i}" for i in range(10)]
    helper.set_model_props(model, {"task": "classifier", "class_names": json.dumps(names)})
    path, npz = graphs.save(tmp_path, "meta", (model, samples))
    code, out, err = cli(
        "registry", "register", path, "--name", "meta", "--reference-data", npz,
        "--registry", tmp_path / "reg", "--json",
    )  # fmt: skip
    assert code == 0, err
    registered = json.loads(out)
    assert registered["task"] == "classifier" and registered["labels"] == names
    assert registered["io_schema"]["outputs"][0]["role"] == "probabilities"
    assert "notice" not in err


def test_static_int8_conv_net_is_chosen_when_faithful_and_served(
    cli: Cli, env: AgentEnv, tmp_path: Path
) -> None:
    import tarfile

    model, samples = graphs.save(tmp_path / "src", "wide", graphs.wide_conv_net())
    registry = tmp_path / "registry"
    code, _, err = cli(
        "registry", "register", model, "--name", "wide", "--reference-data", samples,
        "--registry", registry, "--task", "classifier",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli(
        "pack", "wide", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
        "--out", tmp_path / "out", "--registry", registry, "--quantize", "auto", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    q = report["quantization"]
    assert q["method"] == "static" and q["format"] == "U8S8", q["reason"]
    static = next(r for r in q["variants"] if r["variant"] == "static")
    assert static["outputs"]["logits"]["cosine"] >= 0.99
    assert report["validation"]["size_bytes"] < report["validation"]["float32_size_bytes"]
    bundle = Path(report["bundle"])
    code, _, err = cli("agent", "install", bundle, "--wait", "final", "--config", env.config_path)
    assert code == 0, err  # the smoke set passes on the int8 graph
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("model.onnx")
        assert member is not None
        (tmp_path / "packaged.onnx").write_bytes(member.read())
    got = predict_npz(cli, env, "wide", samples, tmp_path / "pred.npz")
    with np.load(samples) as z:
        assert_same(got, raw_outputs(tmp_path / "packaged.onnx", {"image": z["image"]}))
    code, _, err = cli(
        "pack", "wide", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
        "--out", tmp_path / "strict", "--registry", registry, "--quantize", "static",
        "--min-cosine", "1.0",
    )  # fmt: skip
    assert code == 1 and "--quantize static refused: static int8 (MinMax) keeps a cosine of" in err
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize("case", ["gru_with_state", "typed_multi_io", "conv_fixed_batch_1"])
def test_telemetry_counts_one_value_per_sample(
    cli: Cli, env: AgentEnv, tmp_path: Path, case: str
) -> None:
    """What the endpoint hands telemetry: one number per sample, whatever the output layout."""
    from edgefleet.agent.model.runtime import ThreadSettings, load_bundle

    build, register = CASES[case]
    model, samples = graphs.save(tmp_path / "src", case, build())
    _, bundle = through_the_fleet(cli, env, tmp_path, "m", model, samples, *register)
    loaded = load_bundle(bundle, env.signer.trust, ThreadSettings())
    with np.load(samples) as z:
        prediction = loaded.predict_inputs({k: z[k] for k in z.files})
    primary = prediction.primary
    assert primary.shape == (len(prediction),) and primary.dtype.kind in "biuf"
    # The first value of each sample of the first batched output (y is batched on axis 2).
    first = next(o for o in loaded.schema.io.outputs if o.batch_axis is not None)  # type: ignore[union-attr]
    out = np.moveaxis(
        prediction.outputs[loaded.output_names.index(first.name)], first.batch_axis, 0
    )
    assert np.array_equal(primary, out.reshape(len(prediction), -1)[:, 0])


def _shipped_model(name: str) -> Path:
    """A model-zoo architecture the onnx package ships for its backend tests (no download)."""
    import onnx

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    assert path.is_file(), f"{path} is not in the installed onnx package"
    return path


@pytest.mark.parametrize("name", ["light_resnet50", "light_squeezenet", "light_inception_v1"])
def test_model_zoo_architectures_shipped_in_the_onnx_package(
    cli: Cli, env: AgentEnv, tmp_path: Path, name: str
) -> None:
    """Unchanged files (opset 9, fixed batch 1, 3x224x224 input): served like onnxruntime."""
    model = _shipped_model(name)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    samples = tmp_path / "samples.npz"
    rng = np.random.default_rng(11)
    arrays = {image.name: rng.random((3, 3, 224, 224)).astype(np.float32)}
    np.savez(samples, **arrays)
    report, bundle = through_the_fleet(cli, env, tmp_path, "zoo", model, samples)
    assert bundle.stat().st_size <= model.stat().st_size + 512 * 1024
    assert report["validation"]["smoke"]["generated_inputs"]  # a 3x224x224 sample is regenerated
    got = predict_npz(cli, env, "zoo", samples, tmp_path / "pred.npz")
    assert_same(got, raw_outputs_looped(model, arrays))


def test_static_int8_covers_matmul_and_dynamic_int8_needs_the_flag(
    cli: Cli, env: AgentEnv, tmp_path: Path
) -> None:
    model, samples = graphs.save(tmp_path / "src", "mlp", graphs.sequence_mlp())
    registry = tmp_path / "registry"
    code, _, err = cli(
        "registry", "register", model, "--name", "mlp", "--reference-data", samples,
        "--registry", registry, "--task", "embedding",
    )  # fmt: skip
    assert code == 0, err

    def pack(out: str, *extra: str) -> tuple[int, str, str]:
        return cli(
            "pack", "mlp", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
            "--out", tmp_path / out, "--registry", registry, "--json", *extra,
        )  # fmt: skip

    code, out, err = pack("auto")
    assert code == 0, err
    q = json.loads(out)["quantization"]
    # Static QDQ covers MatMul and is batch-independent, so auto keeps it and never
    # measures dynamic int8.
    assert q["method"] == "static", q["reason"]
    assert {r["variant"] for r in q["variants"]} == {"float32", "static"}
    assert all(r["batch_dependence"] == 0.0 for r in q["variants"] if r["variant"] == "static")
    code, _, err = pack("explicit", "--quantize", "dynamic")
    assert code == 1 and "--quantize dynamic refused: dynamic int8 is batch-dependent" in err
    code, out, err = pack("allowed", "--quantize", "dynamic", "--allow-batch-dependent")
    assert code == 0, err
    report = json.loads(out)
    assert report["quantization"]["method"] == "dynamic"
    bundle = Path(report["bundle"])
    code, _, err = cli("agent", "install", bundle, "--wait", "final", "--config", env.config_path)
    assert code == 0, err

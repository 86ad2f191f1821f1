"""External data: only inside the model's folder at register, only bundle members on the device.

onnxruntime resolves the external data of a model loaded from bytes against
the working directory; a signed model naming ``etc/edgefleet/agent.toml``
read that file when the agent ran in ``/``. Here the working directory holds
such a file (and a decoy ``weights.bin``), and the agent must neither read it
nor serve its bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tests.support.agents import PROFILE_NAME, AgentEnv
from tests.tensors import graphs

from edgefleet.agent.errors import ModelLoadError
from edgefleet.agent.model.runtime import ThreadSettings, load_bundle
from edgefleet.core.bundle_writer import write_bundle
from edgefleet.core.manifest import TENSOR_FORMAT_VERSION, Manifest

pytestmark = pytest.mark.subprocess  # pack records the source revision with git

Cli = Callable[..., tuple[int, str, str]]
WEIGHTS = np.arange(4, dtype=np.float32)
SECRET = np.array([1e6, 2e6, 3e6, 4e6], dtype=np.float32)  # what a leak would serve


@pytest.fixture
def hostile_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the agent's 'config' and a decoy weights file."""
    root = tmp_path / "root"
    (root / "etc" / "edgefleet").mkdir(parents=True)
    (root / "etc" / "edgefleet" / "agent.toml").write_bytes(SECRET.tobytes())
    (root / "weights.bin").write_bytes(SECRET.tobytes())
    monkeypatch.chdir(root)
    return root


def _register(cli: Cli, model: Path, registry: Path, samples: Path) -> tuple[int, str, str]:
    return cli(
        "registry", "register", model, "--name", "ext", "--reference-data", samples,
        "--registry", registry, "--json",
    )  # fmt: skip


def _samples(path: Path) -> Path:
    np.savez(path, x=np.ones((3, 4), np.float32))
    return path


def test_external_data_inside_the_folder_is_inlined_and_served(
    cli: Cli, env: AgentEnv, tmp_path: Path, hostile_cwd: Path
) -> None:
    model = graphs.with_external_data(tmp_path / "src", "data/weights.bin")
    registry = tmp_path / "registry"
    code, out, err = _register(cli, model, registry, _samples(tmp_path / "s.npz"))
    assert code == 0, err
    code, out, err = cli(
        "pack", "ext", "--profile", PROFILE_NAME, "--key", env.signer.key_path,
        "--out", tmp_path / "out", "--registry", registry, "--quantize", "none", "--json",
    )  # fmt: skip
    assert code == 0, err
    bundle = Path(json.loads(out)["bundle"])
    code, out, err = cli("agent", "install", bundle, "--wait", "final", "--config", env.config_path)
    assert code == 0, err
    source = _samples(tmp_path / "in.npz")
    code, _, err = cli(
        "agent", "predict", "ext", "--input", source, "--output", tmp_path / "p.npz",
        "--config", env.config_path,
    )  # fmt: skip
    assert code == 0, err
    with np.load(tmp_path / "p.npz") as z:
        assert np.array_equal(z["y"], np.ones((3, 4), np.float32) + WEIGHTS)


@pytest.mark.parametrize(
    ("location", "data_file", "message"),
    [
        ("../outside.bin", "outside.bin", "climbs out of the model's folder"),
        ("/etc/passwd", None, "is not a relative path inside the model's folder"),
        ("etc/edgefleet/agent.toml", None, "does not exist next to the model"),
        ("link.bin", "link", "points outside the model's folder"),
    ],
)
def test_external_data_outside_the_folder_is_refused_at_register(
    cli: Cli, tmp_path: Path, location: str, data_file: str | None, message: str
) -> None:
    folder = tmp_path / "src"
    secret = tmp_path / "outside.bin"
    secret.write_bytes(SECRET.tobytes())
    target = None
    if data_file == "outside.bin":
        target = secret
    model = graphs.with_external_data(folder, location, data_file=target or tmp_path / "unused")
    if data_file == "link":
        (folder / "link.bin").symlink_to(secret)
    registry = tmp_path / "registry"
    code, out, err = _register(cli, model, registry, _samples(tmp_path / "s.npz"))
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not registry.exists()


def _hostile_bundle(
    tmp_path: Path, env: AgentEnv, location: str, members: dict[str, bytes]
) -> Path:
    """A correctly signed format-2 bundle whose model reads external data from ``location``."""
    tensor = numpy_helper.from_array(WEIGHTS, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    smoke = io.BytesIO()
    np.savez(smoke, **{"in:x": np.ones((1, 4), np.float16), "atol": np.array(1e-3)})
    spec = {"batch_axis": 0, "role": "data"}
    manifest = Manifest(
        format_version=TENSOR_FORMAT_VERSION,
        model={"name": "ext", "version": 1, "task": "raw"},
        target={"profile": PROFILE_NAME, "arch": "x86_64", "min_onnxruntime": "1.17"},
        io_schema={
            "version": 2,
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 4], **spec}],
            "outputs": [
                {"name": "y", "dtype": "float32", "shape": ["N", 4], "batch_axis": 0, "role": "raw"}
            ],
        },
        reference_path=None,
    )
    out = tmp_path / f"ext-{len(members)}.efb"
    write_bundle(
        out,
        manifest,
        {"model.onnx": model.SerializeToString(), "smoke.npz": smoke.getvalue(), **members},
        [env.signer.private_key],
    )
    return out


def test_agent_refuses_external_data_that_is_not_a_bundle_member(
    cli: Cli, env: AgentEnv, tmp_path: Path, hostile_cwd: Path
) -> None:
    bundle = _hostile_bundle(tmp_path, env, "etc/edgefleet/agent.toml", {})
    code, out, err = cli("agent", "install", bundle, "--wait", "final", "--config", env.config_path)
    assert code != 0
    assert "'etc/edgefleet/agent.toml', which is not a member of its bundle" in err, err
    with pytest.raises(ModelLoadError, match="not a member of its bundle"):
        load_bundle(bundle, env.signer.trust, ThreadSettings())


def test_agent_reads_member_external_data_from_the_bundle_not_the_working_directory(
    env: AgentEnv, tmp_path: Path, hostile_cwd: Path
) -> None:
    bundle = _hostile_bundle(tmp_path, env, "weights.bin", {"weights.bin": WEIGHTS.tobytes()})
    loaded = load_bundle(bundle, env.signer.trust, ThreadSettings())
    (y,) = loaded.predict_inputs({"x": np.zeros((2, 4), np.float32)}).outputs
    assert np.array_equal(y, np.tile(WEIGHTS, (2, 1)))  # not the decoy in the cwd

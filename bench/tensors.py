"""Tensor-model benchmark: a conv net served with binary tensors, memory, activation, bundles.

Everything is measured side by side in one run, with a conv net built here
with onnx.helper (seeded weights, 1x3x224x224 float32 input, 1000 classes,
about 7 MB of weights), registered, packed and installed with the real CLI,
served by the real daemon (``edgefleet agent run``) with the device profile's
session settings:

- ``raw_p50_ms``: ``InferenceSession.run`` in this process on the packed
  model with the agent's session options (same threads, no spinning);
  ``endpoint_p50_ms``: one request at a time over a keep-alive connection to
  the daemon, tritonclient's binary layout (JSON header + 602 KB of float32),
  binary outputs. Blocks alternate (raw, endpoint) so both see the same
  noise; ``endpoint_p50_ratio`` is the p50 of every endpoint request over the
  p50 of every raw run (``endpoint_p50_ratio_per_block`` lists each block's
  own ratio, to show how steady it was).
- ``binary_rps`` vs ``json_rps``: closed loop on one connection, the same
  image as binary tensors and as OIP JSON; ``binary_vs_json_rps_ratio``.
- ``rss_mb`` (daemon after the load) vs ``bare_rss_mb`` (a bare Python process
  holding the same session after a few runs): ``rss_ratio``.
- ``activation_s``: spawning ``edgefleet agent run`` with the installed
  model to its first 200 on ``/v2/health/ready`` (median of 3: the bundle is
  re-verified and the model loaded each time); ``install_s``: ``agent install
  --wait final`` into a running daemon, end to end (CLI process included).
- ``bundles``: per model (the conv net and the model-zoo SqueezeNet shipped in
  the onnx package) bundle bytes, model bytes, overhead, and the variant
  ``--quantize auto`` chose with its size ratio and agreement;
  ``max_bundle_overhead_bytes`` over all of them.
- ``quantized``: a conv net with trained weights (scikit-learn digits,
  ``tests/tensors/digits_cnn.py``) registered with its test split and packed
  with ``--quantize auto``: per static calibration method (MinMax, Entropy,
  Percentile) the size ratio, worst cosine and top-1 agreement against
  float32 that ``pack`` measured, the method ``auto`` chose, and the accuracy
  of the packed bundle's model against the digit labels on the held-out
  samples; ``static_int8_size_ratio`` is the chosen variant's size over
  float32's.

Prints one JSON object. ``python bench/tensors.py [--quick] [--profile NAME]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent import AGENT_TOML, free_port, rss_mb, start_measured, stop  # noqa: E402
from tests.support.bundles import make_signer  # noqa: E402

TARGETS = {
    "endpoint_p50_ratio": 1.10,
    "rss_ratio": 1.25,
    "activation_s": 2.0,
    "max_bundle_overhead_bytes": 512 * 1024,
    "static_int8_size_ratio": 0.30,
}

BARE_HOLDER = """\
import sys, time
import numpy as np
import onnxruntime as ort

so = ort.SessionOptions()
so.intra_op_num_threads, so.inter_op_num_threads = map(int, sys.argv[2:4])
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
so.add_session_config_entry("session.inter_op.allow_spinning", "0")
so.log_severity_level = 3
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession(open(sys.argv[1], "rb").read(), so, providers=sys.argv[4].split(","))
x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
name = session.get_inputs()[0].name
for _ in range(20):
    session.run(None, {name: x})
print("ready", flush=True)
time.sleep(120)
"""


def conv_net() -> tuple[Any, dict[str, np.ndarray]]:
    """[N,3,224,224] -> 5 3x3 convs (32..512, stride 1 then 2) -> GAP -> Gemm(1000) -> Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2026)
    widths = [3, 32, 64, 128, 256, 512]
    nodes, inits = [], []
    x = "image"
    for i, (cin, cout) in enumerate(zip(widths, widths[1:], strict=False)):
        stride = 1 if i == 0 else 2  # full resolution first: about 2 GFLOP in all
        w = rng.normal(0, (2.0 / (9 * cin)) ** 0.5, (cout, cin, 3, 3)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(rng.normal(0, 0.01, cout).astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node(
                "Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], strides=[stride, stride],
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]  # fmt: skip
        x = f"r{i}"
    inits += [
        numpy_helper.from_array(rng.normal(0, 0.05, (512, 1000)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bench_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    samples = {"image": rng.random((16, 3, 224, 224), dtype=np.float32)}
    return model, samples


def cli(env: dict[str, str], *args: str | Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.core.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if out.returncode:
        raise RuntimeError(f"edgefleet {args[0]} {args[1]} failed: {out.stderr.strip()[-2000:]}")
    try:
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc
    except ValueError:
        return {"stdout": out.stdout}


def pack(
    env: dict[str, str], work: Path, signer: Any, profile: str, name: str, quantize: str
) -> tuple[Path, dict[str, Any]]:
    out = work / f"out-{name}-{quantize}"
    report = cli(
        env, "pack", name, "--profile", profile, "--key", signer.key_path, "--out", out,
        "--registry", work / "registry", "--quantize", quantize, "--json",
    )  # fmt: skip
    return Path(report["bundle"]), report


def binary_request(x: np.ndarray, model: str) -> bytes:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                },
            ],
            "parameters": {"binary_data_output": True},
        }  # fmt: skip
    ).encode()
    body = header + x.tobytes()
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: b\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def json_request(x: np.ndarray, model: str) -> bytes:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                },
            ]
        }  # fmt: skip
    ).encode()
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Conn:
    """One keep-alive connection: send a request, read one whole response."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def roundtrip(self, request: bytes) -> int:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lower = head.lower()
        i = lower.index(b"content-length:")
        length = int(lower[i + 15 :].split(b"\r\n", 1)[0])
        while len(rest) < length:
            rest += self._recv()
        self.buf = rest[length:]
        status = int(head[9:12])
        if status != 200:
            raise RuntimeError(f"endpoint answered {status}: {rest[:length][:300]!r}")
        return status

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed")
        return data

    def close(self) -> None:
        self.sock.close()


def latency_blocks(
    session: Any, port: int, x: np.ndarray, blocks: int, per_block: int
) -> dict[str, Any]:
    request = binary_request(x, "cnn")
    conn = Conn(port)
    raw_all: list[float] = []
    ep_all: list[float] = []
    ratios = []
    try:
        for _ in range(5):  # warm-up both
            session.run(None, {"image": x})
            assert conn.roundtrip(request) == 200
        for _ in range(blocks):
            raw, ep = [], []
            for _ in range(per_block):
                t = time.perf_counter()
                session.run(None, {"image": x})
                raw.append(time.perf_counter() - t)
                t = time.perf_counter()
                if conn.roundtrip(request) != 200:
                    raise RuntimeError("endpoint refused the benchmark request")
                ep.append(time.perf_counter() - t)
            ratios.append(statistics.median(ep) / statistics.median(raw))
            raw_all += raw
            ep_all += ep
    finally:
        conn.close()
    raw_p50, ep_p50 = statistics.median(raw_all), statistics.median(ep_all)
    return {
        "raw_p50_ms": raw_p50 * 1000,
        "endpoint_p50_ms": ep_p50 * 1000,
        "endpoint_p50_ratio": ep_p50 / raw_p50,
        "endpoint_p50_ratio_per_block": ratios,
    }


def closed_loop_rps(port: int, request: bytes, seconds: float) -> float:
    conn = Conn(port)
    try:
        assert conn.roundtrip(request) == 200
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            if conn.roundtrip(request) != 200:
                raise RuntimeError("endpoint refused the benchmark request")
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        conn.close()


def bundle_figures(report: dict[str, Any], bundle: Path, model: Path) -> dict[str, Any]:
    """Sizes, and what --quantize chose: each variant's size ratio and agreement (cosine)."""
    quant = report.get("quantization") or {}
    float_size = model.stat().st_size
    variants = []
    for row in quant.get("variants", []):
        outputs = row.get("outputs", {}).values()
        cosines = [o["cosine"] for o in outputs if "cosine" in o]
        top1 = [o["top1_agreement"] for o in outputs if "top1_agreement" in o]
        variants.append(
            {
                "variant": row.get("variant"),
                "calibration": row.get("calibration"),
                "status": row.get("status"),
                "size_ratio": row["size_bytes"] / float_size if "size_bytes" in row else None,
                "min_cosine": min(cosines) if cosines else None,
                "top1_agreement": min(top1) if top1 else None,
                "reason": row.get("reason"),
            }
        )
    return {
        "bundle_bytes": bundle.stat().st_size,
        "model_bytes": float_size,
        # What the bundle adds to the model it carries (the chosen variant's bytes).
        "overhead_bytes": bundle.stat().st_size
        - int((report.get("validation") or {}).get("size_bytes") or float_size),
        "chosen": quant.get("variant"),
        "calibration": (quant.get("settings") or {}).get("calibration"),
        "reason": quant.get("reason"),
        "graph_optimization": (report.get("validation") or {}).get("graph_optimization"),
        "variants": variants,
        "drift_reference": (report.get("validation") or {}).get("drift"),
    }


def quantized_figures(env: dict[str, str], work: Path, signer: Any, profile: str) -> dict[str, Any]:
    """The trained digits conv net packed with --quantize auto (see the module docstring)."""
    from tests.tensors.digits_cnn import digits_conv_net

    model, samples, info = digits_conv_net()
    path = work / "digits.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(work / "digits.npz", **samples)  # type: ignore[arg-type]
    cli(env, "registry", "register", path, "--name", "digits", "--task", "classifier",
        "--reference-data", work / "digits.npz", "--registry", work / "registry", "--json")  # fmt: skip
    t0 = time.perf_counter()
    bundle, report = pack(env, work, signer, profile, "digits", "auto")
    pack_s = time.perf_counter() - t0
    figures = bundle_figures(report, bundle, path)
    packed = work / "digits-packed.onnx"
    _extract_model(bundle, packed)
    import onnxruntime as ort

    held_out = np.arange(len(samples["image"])) % 4 != 0  # the packager's evaluation samples
    x, y = samples["image"][held_out], info["labels"][held_out]
    accuracy = {}
    for name, source in (("float32", path), ("packaged", packed)):
        session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        accuracy[name] = float(np.mean(session.run(None, {"image": x})[0].argmax(1) == y))
    chosen = next(v for v in figures["variants"] if v["status"] == "chosen")
    return {
        "model": "digits conv net, trained (k-means conv filters, logistic regression head)",
        "float32_bytes": figures["model_bytes"],
        "reference_samples": int(len(samples["image"])),
        "held_out_samples": int(held_out.sum()),
        "calibration_methods": [
            {
                k: v[k]
                for k in (
                    "calibration",
                    "status",
                    "size_ratio",
                    "min_cosine",
                    "top1_agreement",
                    "reason",
                )
            }
            for v in figures["variants"]
            if v["variant"] == "static"
        ],  # fmt: skip
        "auto": {
            "variant": figures["chosen"],
            "calibration": figures["calibration"],
            "size_ratio": chosen["size_ratio"],
            "reason": figures["reason"],
        },
        "accuracy_float32": accuracy["float32"],
        "accuracy_packaged": accuracy["packaged"],
        "graph_optimization": figures["graph_optimization"],
        "bundle_overhead_bytes": figures["overhead_bytes"],
        "pack_s": pack_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--profile", default="rpi4-arm64" if platform.machine() == "aarch64" else "x86_64-gateway"
    )
    args = parser.parse_args()
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    import onnx
    import onnxruntime as ort

    from edgefleet.agent.model.runtime import select_providers
    from edgefleet.core.profiles import load_profile

    profile = load_profile(args.profile)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    blocks, per_block = (3, 10) if args.quick else (5, 20)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-tensors-") as tmp:
        work = Path(tmp)
        signer = make_signer(work / "keys")
        model, samples = conv_net()
        cnn = work / "cnn.onnx"
        cnn.write_bytes(model.SerializeToString())
        np.savez(work / "cnn.npz", **samples)  # type: ignore[arg-type]
        zoo = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
        zoo_session = ort.InferenceSession(str(zoo), providers=["CPUExecutionProvider"])
        zoo_input = zoo_session.get_inputs()[0].name
        rng = np.random.default_rng(5)
        np.savez(work / "zoo.npz", **{zoo_input: rng.random((4, 3, 224, 224), dtype=np.float32)})  # type: ignore[arg-type]
        cli(env, "registry", "register", cnn, "--name", "cnn", "--task", "classifier",
            "--reference-data", work / "cnn.npz", "--registry", work / "registry", "--json")  # fmt: skip
        cli(env, "registry", "register", zoo, "--name", "zoo", "--task", "classifier",
            "--reference-data", work / "zoo.npz", "--registry", work / "registry", "--json")  # fmt: skip

        bundles: dict[str, Any] = {}
        t0 = time.perf_counter()
        float_bundle, report = pack(env, work, signer, args.profile, "cnn", "none")
        bundles["cnn_float32"] = bundle_figures(report, float_bundle, cnn)
        bundles["cnn_float32"]["pack_s"] = time.perf_counter() - t0
        for name, path in (("cnn", cnn), ("zoo", zoo)):
            t0 = time.perf_counter()
            bundle, report = pack(env, work, signer, args.profile, name, "auto")
            bundles[f"{name}_auto"] = bundle_figures(report, bundle, path)
            bundles[f"{name}_auto"]["pack_s"] = time.perf_counter() - t0
        bundle, report = pack(env, work, signer, args.profile, "zoo", "none")
        bundles["zoo_float32"] = bundle_figures(report, bundle, zoo)
        quantized = quantized_figures(env, work, signer, args.profile)

        # The daemon serving the float32 conv net.
        port = free_port()
        config = work / "agent.toml"
        config.write_text(
            AGENT_TOML.format(
                state=work / "state", profile=args.profile, trust=signer.trust_path, port=port
            )
        )
        t0 = time.perf_counter()
        cli(env, "agent", "install", float_bundle, "--config", config, "--wait", "final")
        install_cold_s = time.perf_counter() - t0
        daemon_cmd = [sys.executable, "-m", "edgefleet.core.cli.main", "agent", "run",
                      "--config", str(config)]  # fmt: skip
        activations = []
        for _ in range(3):
            proc, seconds = start_measured(daemon_cmd, port, env)
            activations.append(seconds)
            stop(proc)

        # The same session as the agent's, in this process.
        from edgefleet.agent.model.runtime import session_options

        opts = session_options(profile)
        packed_model = work / "packed.onnx"
        _extract_model(float_bundle, packed_model)
        session = ort.InferenceSession(
            packed_model.read_bytes(), opts, providers=select_providers(profile.execution_providers)
        )
        x = rng.random((1, 3, 224, 224), dtype=np.float32)
        proc, _ = start_measured(daemon_cmd, port, env)
        try:
            latency = latency_blocks(session, port, x, blocks, per_block)
            seconds = 3.0 if args.quick else 6.0
            binary_rps = closed_loop_rps(port, binary_request(x, "cnn"), seconds)
            json_rps = closed_loop_rps(port, json_request(x, "cnn"), seconds)
            daemon_rss = rss_mb(proc.pid)
            del session  # free this process's copy before the bare holder starts
            t0 = time.perf_counter()
            cli(env, "agent", "install", bundle, "--config", config, "--wait", "final")
            install_s = time.perf_counter() - t0
        finally:
            stop(proc)
        (work / "bare.py").write_text(BARE_HOLDER)
        bare = subprocess.Popen(
            [sys.executable, str(work / "bare.py"), str(packed_model),
             str(profile.intra_op_threads), str(profile.inter_op_threads),
             ",".join(select_providers(profile.execution_providers))],
            env=env, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert bare.stdout is not None
            bare.stdout.readline()
            bare_rss = rss_mb(bare.pid)
        finally:
            bare.kill()
            bare.wait()

    result: dict[str, Any] = {
        "machine": platform.machine(),
        "profile": args.profile,
        "threads": {"intra_op": profile.intra_op_threads, "inter_op": profile.inter_op_threads},
        "model": {"input": [1, 3, 224, 224], "bytes": len(model.SerializeToString())},
        **latency,
        "binary_rps": binary_rps,
        "json_rps": json_rps,
        "binary_vs_json_rps_ratio": binary_rps / json_rps,
        "rss_mb": daemon_rss,
        "bare_rss_mb": bare_rss,
        "rss_ratio": daemon_rss / bare_rss,
        "activation_s": statistics.median(activations),
        "activation_runs_s": activations,
        "install_first_s": install_cold_s,
        "install_s": install_s,
        "bundles": bundles,
        "max_bundle_overhead_bytes": max(
            [b["overhead_bytes"] for b in bundles.values()] + [quantized["bundle_overhead_bytes"]]
        ),
        "quantized": quantized,
        "static_int8_size_ratio": quantized["auto"]["size_ratio"]
        if quantized["auto"]["variant"] == "static"
        else None,
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": [round(v, 2) for v in os.getloadavg()],
    }
    result["meets"] = {
        key: result[key] is not None and result[key] <= target for key, target in TARGETS.items()
    }
    print(json.dumps(_rounded(result), indent=1))


def _extract_model(bundle: Path, out: Path) -> None:
    """The model file the bundle carries (what the agent serves)."""
    import tarfile

    from edgefleet.agent.model.runtime import MODEL_MEMBER

    with tarfile.open(bundle) as tar:
        member = tar.extractfile(MODEL_MEMBER)
        assert member is not None
        out.write_bytes(member.read())


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


if __name__ == "__main__":
    main()

"""``make arm64-check``: the agent on an emulated Raspberry Pi OS (Debian 12 arm64).

Builds (or reuses, from a cached archive) an arm64 bookworm root with debootstrap,
installs this tree's wheel with ``[agent]`` into it, packs a float32 digits model for
``rpi4-arm64`` on this machine, installs and serves the bundle with the agent running
under qemu-user, and compares:

- the served probabilities with the x86 onnxruntime run of the same ``model.onnx``
  (``max_abs_diff``);
- the serving agent's peak RSS with a bare onnxruntime session on the same model in the
  same emulation (``rss_ratio``);

and prints one JSON line (with ``wall_s``). Needs root (debootstrap, device nodes),
``debootstrap`` and ``qemu-user-static``; not part of ``make test``.

How the emulation is set up, and why:

- No ``binfmt_misc`` and no chroot: registering a binfmt handler changes the kernel for
  every process on the machine. The root is qemu-user's path prefix (``-L``), so the
  guest's absolute paths (``/usr/lib/python3.11``, ``/opt/edgefleet``) resolve inside
  it. A wrapper script is the guest's ``sys.executable``, so the processes the agent
  spawns (``agent run`` re-executes itself; bundle verification runs in a child) are
  emulated too.
- The host's ``/dev`` is never bind-mounted into the root (package scripts inside could
  replace the host's ``/dev/null``); the few device nodes Python needs are created in
  the root's own ``/dev``.
- ``/proc/cpuinfo`` of the root is a Raspberry Pi 4's: with Debian's QEMU 7.2,
  ``import onnxruntime`` crashes parsing the host's x86 cpuinfo.
- ``QEMU_CPU=cortex-a72`` (the Pi 4's core): the default CPU model makes inference
  5-10 times slower.
- debootstrap runs only its first stage (download and unpack), which needs no arm64
  code; the packages Python needs are unpacked with ``dpkg-deb``. The wheel is
  installed by this machine's pip for the aarch64 platform into ``/opt/edgefleet/lib``
  of the root: the root's own pip would need its venv interpreter to be executable by
  the kernel, i.e. binfmt_misc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
ROOT_ARCHIVE = "bookworm-arm64-root.tar"
PROFILE = "rpi4-arm64"
QEMU = "qemu-aarch64-static"
AARCH64_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")
# What a Raspberry Pi 4 (Cortex-A72, part 0xd08) shows; onnxruntime reads it at import.
PI4_CPUINFO = (
    "".join(
        f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
        "CPU revision\t: 3\n\n"
        for n in range(4)
    )
    + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
)
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}
ROWS = 200


class CheckError(Exception):
    pass


def log(message: str) -> None:
    print(f"arm64-check: {message}", file=sys.stderr, flush=True)


def run(args: list[str | Path], **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise CheckError(
            f"{' '.join(map(str, args))[:200]} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout)[-2000:]}"
        )
    return result


# ------------------------------------------------------------------ the arm64 root


def make_root_archive(archive: Path) -> None:
    """debootstrap's first stage plus Python 3.11 unpacked, as a tar (the cache)."""
    if os.geteuid() != 0:
        raise CheckError("building the arm64 root needs root (debootstrap)")
    for tool in ("debootstrap", "dpkg-deb", QEMU):
        if shutil.which(tool) is None:
            raise CheckError(f"{tool} not found: apt-get install debootstrap qemu-user-static")
    with tempfile.TemporaryDirectory(prefix="arm64-root-", dir=archive.parent) as tmp:
        rootfs = Path(tmp) / "root"
        log(f"debootstrap --foreign {SUITE} arm64 (first stage: download and unpack)")
        run(
            ["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
             "--include=python3.11", SUITE, rootfs, MIRROR],
            timeout=1800,
        )  # fmt: skip
        debs = sorted((rootfs / "var/cache/apt/archives").glob("*.deb"))
        log(f"unpacking {len(debs)} packages (python3.11 and its libraries)")
        for deb in debs:
            run(["dpkg-deb", "-x", deb, rootfs], timeout=300)
        for deb in debs:
            deb.unlink()
        with tarfile.open(archive.with_suffix(".tmp"), "w") as tar:
            tar.add(rootfs, arcname=".")
        archive.with_suffix(".tmp").replace(archive)


def unpack_root(archive: Path, rootfs: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(rootfs, filter="fully_trusted")  # our own archive, device nodes included
    dev = rootfs / "dev"
    dev.mkdir(exist_ok=True)
    for name, (major, minor) in DEVICES.items():
        node = dev / name
        if node.exists() and stat.S_ISCHR(node.stat().st_mode):
            continue
        node.unlink(missing_ok=True)
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    (rootfs / "proc").mkdir(exist_ok=True)
    (rootfs / "proc" / "cpuinfo").write_text(PI4_CPUINFO)
    for name in ("tmp", "var/tmp"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
        (rootfs / name).chmod(0o1777)


def write_python_wrapper(path: Path, rootfs: Path) -> None:
    path.write_text(
        "#!/bin/sh\n"
        "# the root's aarch64 Python under qemu-user; the root is the path prefix\n"
        "export QEMU_CPU=cortex-a72 PYTHONHOME=/usr PYTHONPATH=/opt/edgefleet/lib\n"
        f'exec {shutil.which(QEMU)} -L {rootfs} -0 "$0" {rootfs}/usr/bin/python3.11 -s "$@"\n'
    )
    path.chmod(0o755)


# ------------------------------------------------------------------ host-side steps


def build_wheel(out: Path) -> Path:
    log("building the wheel")
    run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", out, ROOT])
    return next(out.glob("edgefleet-*.whl"))


def install_wheel(wheel: Path, rootfs: Path) -> None:
    log("installing the wheel with [agent] into the root (aarch64 wheels)")
    platforms = [a for p in AARCH64_PLATFORMS for a in ("--platform", p)]
    run(
        [sys.executable, "-m", "pip", "install", "--quiet", *platforms,
         "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
         "--only-binary=:all:", "--target", rootfs / "opt/edgefleet/lib", f"{wheel}[agent]"],
        timeout=1800,
    )  # fmt: skip


def pack_bundle(work: Path) -> tuple[Path, np.ndarray]:
    """A float32 digits MLP packed for rpi4-arm64; returns the bundle and test rows."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    log(f"training and packing a digits model for {PROFILE}")
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
    model.fit(x[:1200], y[:1200])
    joblib.dump(model, work / "model.joblib")
    np.savez(work / "holdout.npz", X=x[1200:], y=y[1200:])
    cli: list[str | Path] = [sys.executable, "-m", "edgefleet.core.cli.main"]
    reg: list[str | Path] = ["--registry", work / "registry"]
    run([*cli, "keys", "generate", "publisher", "--out", work / "keys"])
    run([*cli, "registry", "register", work / "model.joblib", "--name", "digits",
         "--reference-data", work / "holdout.npz", *reg])  # fmt: skip
    run([*cli, "pack", "digits:1", "--profile", PROFILE, "--quantize", "none",
         "--key", work / "keys/publisher.key", "--out", work / "dist", *reg])  # fmt: skip
    run([*cli, "keys", "trust", work / "keys/publisher.pub", "--out", work / "trust.json"])
    return next((work / "dist").glob("*.efb")), x[1200 : 1200 + ROWS]


def model_of(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as tar:
        member = tar.getmember("model.onnx")
        tar.extract(member, dest, filter="data")
    return dest / "model.onnx"


def x86_outputs(model: Path, rows: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: rows})
    return {
        o.name: np.asarray(v, dtype=np.float64)
        for o, v in zip(session.get_outputs(), outputs, strict=True)
    }


# ------------------------------------------------------------------ emulated steps


BARE_SCRIPT = """
import json, sys, numpy as np, onnxruntime as ort
rows = np.load(sys.argv[2])
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
for i in range(len(rows)):
    s.run(None, {name: rows[i : i + 1]})
status = open("/proc/self/status").read()
hwm = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM"))
print(json.dumps({"vm_hwm_kb": hwm, "onnxruntime": ort.__version__}))
"""


def bare_session_rss_kb(python: Path, model: Path, rows: Path) -> tuple[int, str]:
    log("bare onnxruntime session under emulation")
    out = run([python, "-c", BARE_SCRIPT, model, rows], timeout=1800).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return int(data["vm_hwm_kb"]), str(data["onnxruntime"])


def agent_config(path: Path, state: Path, trust: Path) -> None:
    path.write_text(
        "[agent]\n"
        'device_id = "pi-emulated"\n'
        f'profile = "{PROFILE}"\n'
        f'state_dir = "{state}"\n'
        f'trust_store = "{trust}"\n'
        "[endpoint]\n"
        'host = "127.0.0.1"\n'
        "port = 0\n"
        "[probation]\n"
        "min_requests = 0\n"
        "max_seconds = 0\n"
    )


def serve_and_predict(
    python: Path, config: Path, state: Path, bundle: Path, rows: np.ndarray, work: Path
) -> tuple[dict[str, np.ndarray], int]:
    """Install the bundle, start the daemon, infer every row over HTTP; (outputs, VmHWM kB)."""
    cli: list[str | Path] = [python, "-m", "edgefleet.core.cli.main", "agent"]
    log("agent install under emulation (verification in a child process)")
    run([*cli, "install", bundle, "--config", config], timeout=3600)
    log("agent run under emulation")
    with open(work / "agent.log", "wb") as agent_log:
        proc = subprocess.Popen(
            [str(python), "-m", "edgefleet.core.cli.main", "agent", "run", "--config", config],
            stdout=agent_log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = wait_for_endpoint(state / "endpoint.json", proc, work / "agent.log")
        collected: dict[str, list[Any]] = {}
        for row in rows:
            body = {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 64],
                     "data": [float(v) for v in row]}
                ]
            }  # fmt: skip
            request = urllib.request.Request(
                f"{url}/v2/models/digits/infer",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.loads(response.read())
            for output in answer["outputs"]:
                if output["datatype"] in ("FP32", "FP64"):  # not labels or prediction ids
                    collected.setdefault(output["name"], []).append(output["data"])
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {k: np.asarray(v, dtype=np.float64) for k, v in collected.items()}, hwm


def wait_for_endpoint(path: Path, proc: subprocess.Popen[bytes], log_file: Path) -> str:
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckError(f"agent exited {proc.returncode}: {log_file.read_text()[-2000:]}")
        try:
            info = json.loads(path.read_text())
            if info.get("pid") == proc.pid:
                return str(info["url"])
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise CheckError(f"agent endpoint not ready: {log_file.read_text()[-2000:]}")


def max_abs_diff(x86: dict[str, np.ndarray], arm: dict[str, np.ndarray]) -> float:
    worst = 0.0
    compared = 0
    for name, values in x86.items():
        if name not in arm or values.dtype.kind != "f":
            continue
        served = arm[name].reshape(values.shape)
        worst = max(worst, float(np.max(np.abs(served - values))))
        compared += 1
    if not compared:
        raise CheckError(f"no output to compare (x86 {sorted(x86)}, served {sorted(arm)})")
    return worst


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "arm64-check")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    started = time.monotonic()
    cache: Path = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / ROOT_ARCHIVE
    reused = archive.exists()
    if not reused:
        make_root_archive(archive)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=cache))
    try:
        rootfs = work / "root"
        log(f"unpacking the root ({'cached' if reused else 'new'} {archive.name})")
        unpack_root(archive, rootfs)
        python = work / "python-arm64"
        write_python_wrapper(python, rootfs)
        install_wheel(build_wheel(work / "wheels"), rootfs)
        bundle, rows = pack_bundle(work)
        model = model_of(bundle, work / "model")
        np.save(work / "rows.npy", rows)
        x86 = x86_outputs(model, rows)
        bare_kb, ort_version = bare_session_rss_kb(python, model, work / "rows.npy")
        state = work / "state"
        config = work / "agent.toml"
        agent_config(config, state, work / "trust.json")
        served, agent_kb = serve_and_predict(python, config, state, bundle, rows, work)
        result = {
            "max_abs_diff": max_abs_diff(x86, served),
            "rss_ratio": round(agent_kb / bare_kb, 3),
            "agent_vm_hwm_mb": round(agent_kb / 1024, 1),
            "bare_session_vm_hwm_mb": round(bare_kb / 1024, 1),
            "rows": len(rows),
            "profile": PROFILE,
            "onnxruntime_arm64": ort_version,
            "qemu": run([QEMU, "--version"]).stdout.splitlines()[0],
            "qemu_cpu": "cortex-a72",
            "root_archive_reused": reused,
        }
    except CheckError as e:
        log(f"failed: {e}")
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["wall_s"] = round(time.monotonic() - started, 1)  # the clean-up included
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""README.md: every `edgefleet ...` command it shows exists, and sections 1-4 run as written."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from tests.support.waiting import wait_until

from edgefleet.core.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def shown_commands() -> list[list[str]]:
    """The `edgefleet` invocations in the README's code blocks, as argument lists."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            for part in re.split(r"\|\||&&|\|", line):
                words = shlex.split(part.split("#", 1)[0].strip() or "true")
                # the command word: after `sudo`, `do` (a loop body) and VAR=value
                while words and (words[0] in ("sudo", "do") or "=" in words[0]):
                    words = words[1:]
                if words and (words[0] == "edgefleet" or words[0].endswith("/bin/edgefleet")):
                    commands.append(words[1:])
    return commands


def command_path(args: list[str]) -> list[str]:
    """The leading words of ``args`` that name (sub)commands."""
    ctx = click.Context(cli)
    command: click.Command = cli
    path: list[str] = []
    for word in args:
        if not isinstance(command, click.Group):
            break
        sub = command.get_command(ctx, word)
        if sub is None:
            break
        path.append(word)
        command = sub
    return path


def test_readme_shows_commands() -> None:
    assert len(shown_commands()) >= 20


@pytest.mark.parametrize(
    "path",
    sorted({" ".join(command_path(args)) for args in shown_commands()}),
)
def test_readme_command_exists(path: str) -> None:
    words = path.split()
    assert words, "a README line runs `edgefleet` without a known command"
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


# --------------------------------------------------------------------------------------
# README sections 1-4 run as written: a real Mosquitto over TLS dropping to its account,
# a real hub, three real agents, a staged rollout that completes, a drift report.

README_RUN_TIMEOUT_S = 900
DEVICES = ("pi-0001", "pi-0002", "pi-0003")
FIRST_DEVICE = "pi-0001"


def readme_blocks() -> list[str]:
    """The ``sh`` blocks of sections 1-4 of "From a trained model to a fleet of Pis"."""
    text = README.read_text(encoding="utf-8")
    start = text.index("### 1. ")
    end = text.index("\n## ", start)
    return re.findall(r"```sh\n(.*?)```", text[start:end], re.S)


def where(block: str) -> str:
    """Where a block runs: its first line says so (dev machine when it does not)."""
    first = block.splitlines()[0]
    if first.startswith("# on each Pi"):
        return "pi"
    return "hub" if first.startswith("# on the hub") else "dev"


def substitute(block: str, table: list[tuple[str, str]]) -> str:
    """Apply the table; every entry must match, so a README change cannot skip one."""
    for old, new in table:
        assert old in block, f"substitution {old!r} no longer matches:\n{block}"
        block = block.replace(old, new)
    return block


class ReadmeRun:
    """The machines of the README on this one: a work directory per role, a pid file."""

    def __init__(self, work: Path) -> None:
        from edgefleet.core.testing.brokers import free_port

        self.work = work
        self.pids = work / "pids"
        self.opt = work / "opt-edgefleet"  # /opt/edgefleet, shared by the simulated Pis
        self.broker_port = free_port()
        bin_dir = Path(sys.executable).parent
        # the reader's environment (pip's index settings included), with this edgefleet
        # and mosquitto (/usr/sbin) on PATH
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        free = f"$({sys.executable} -c 'from edgefleet.core.testing.brokers import free_port; print(free_port())')"
        # Everything the test changes in the README's commands, and why.
        self.everywhere = [
            # the test's broker listens on loopback only, on a free port
            ("--bind 0.0.0.0", "--bind 127.0.0.1"),
            ("port = 8883", f"port = {self.broker_port}"),
            ("--out broker", f"--out broker --port {self.broker_port}"),
            # a name this machine resolves (the certificate names it, devices use it)
            ("hub.example.org", "localhost"),
        ]
        self.dev = [
            # the wheel is built from this checkout, with the build tools already here
            (
                "python3 -m pip install build && python3 -m build --wheel --outdir wheels",
                f"{sys.executable} -m build --no-isolation --wheel --outdir wheels {ROOT}",
            ),
            ("scp ", "cp "),
        ]
        self.hub = [
            # each agent's state directory and endpoint port on this machine
            (
                "--out devices/$id",
                f"--out devices/$id --state-dir {work}/state/$id --endpoint-port {free}",
            ),
            # background processes are remembered so the test can stop them
            (
                "mosquitto -c broker/mosquitto.conf &",
                f"mosquitto -c broker/mosquitto.conf > mosquitto.log 2>&1 & echo $! >> {self.pids}",
            ),
            (
                "edgefleet hub serve &",
                f"edgefleet hub serve > hub.log 2>&1 & echo $! >> {self.pids}",
            ),
            # minutes of bake and 100 inferences per phase are seconds and 20 here
            (
                "--phases 10%,50%,100%",
                "--phases 10%,50%,100% --gate bake=2s --gate min_inferences=20",
            ),
        ]

    def pi(self, device: str) -> list[tuple[str, str]]:
        home = self.work / device
        etc = home / "etc"
        agent_run = (
            f"(/opt/edgefleet/bin/edgefleet agent run --config /etc/edgefleet/agent.toml "
            f"> {home}/agent.log 2>&1 & echo $! >> {self.pids})"
        )
        return [
            ("sudo apt-get install -y python3-venv", "true"),
            ("sudo ", ""),
            # no system account is created on the test machine; root stands in for it
            ("useradd ", "true "),
            ("-g edgefleet", "-g root"),
            # telemetry windows of 2 s instead of the profile's 5 minutes
            (
                "agent.toml /etc/edgefleet/agent.toml",
                "agent.toml /etc/edgefleet/agent.toml && "
                "printf '\\n[telemetry]\\nwindow_s = 2\\n' >> /etc/edgefleet/agent.toml",
            ),
            # a real agent process instead of systemd
            ("systemctl daemon-reload && systemctl enable --now edgefleet-agent", agent_run),
            ("python3 -m venv", f"{sys.executable} -m venv"),
            ("/etc/systemd/system/edgefleet-agent.service", f"{home}/edgefleet-agent.service"),
            ("/etc/edgefleet", str(etc)),
            ("/opt/edgefleet", str(self.opt)),
        ]

    def curl(self, device: str) -> list[tuple[str, str]]:
        import tomllib

        config = tomllib.loads((self.work / device / "etc" / "agent.toml").read_text())
        return [("localhost:8080", f"localhost:{config['endpoint']['port']}")]

    def bash(self, script: str, cwd: Path) -> str:
        cwd.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (
            f"README block failed ({result.returncode}):\n{script}\n--- stdout\n"
            f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}\n{self.logs()}"
        )
        return result.stdout + result.stderr

    def edgefleet_json(self, *args: str) -> Any:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "edgefleet"), *args, "--json"],
            cwd=self.work, env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def logs(self) -> str:
        parts = []
        for log in sorted(self.work.glob("**/*.log")):
            parts.append(
                f"--- {log.relative_to(self.work)}\n{log.read_text(errors='replace')[-2500:]}"
            )
        return "\n".join(parts)

    def stop_all(self) -> None:
        pids = [int(p) for p in self.pids.read_text().split()] if self.pids.exists() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for pid in pids:
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Traffic(threading.Thread):
    """Clients of the devices' endpoints: what drives probation and the rollout gates."""

    def __init__(self, run: ReadmeRun, rows: list[list[float]]) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.rows = rows
        self.done = threading.Event()
        self.ok = 0

    def run(self) -> None:
        i = 0
        while not self.done.is_set():
            for device in DEVICES:
                endpoint = self.run_.work / "state" / device / "endpoint.json"
                try:
                    url = json.loads(endpoint.read_text())["url"]
                    row = self.rows[i % len(self.rows)]
                    body = {
                        "inputs": [
                            {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}
                        ]
                    }
                    request = urllib.request.Request(
                        f"{url}/v2/models/digits/infer", data=json.dumps(body).encode()
                    )
                    with urllib.request.urlopen(request, timeout=5) as response:
                        self.ok += response.status == 200
                except (OSError, ValueError, KeyError):
                    pass  # not started, or not serving digits yet
                i += 1
            self.done.wait(0.05)


def write_user_inputs(work: Path) -> list[list[float]]:
    """What the README assumes the reader has: a joblib model and its data files."""
    import csv

    import joblib
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
    model.fit(X[:1200], y[:1200])
    joblib.dump(model, work / "model.joblib")
    with open(work / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"px{i}" for i in range(64)] + ["label"])
        writer.writerows(
            [*map(float, row), int(label)] for row, label in zip(X[:1200], y[:1200], strict=True)
        )
    np.savez(work / "holdout.npz", X=X[1200:], y=y[1200:])
    return [list(map(float, row)) for row in X[1200:1300]]


def wait_for(what: str, check: Any, run: ReadmeRun, timeout_s: float) -> Any:
    """The support package's wait, naming the README run's logs when it times out."""
    return wait_until(lambda: f"{what}\n{run.logs()}", check, timeout_s)


@pytest.mark.slow
@pytest.mark.mqtt
@pytest.mark.timeout(README_RUN_TIMEOUT_S)
def test_readme_sections_1_to_4_run_as_written() -> None:
    import pwd

    assert os.geteuid() == 0, "runs Mosquitto as root dropping to its account, as the README does"
    pwd.getpwnam("mosquitto")
    # Mosquitto's account must reach broker/: not a 0700 pytest directory.
    work = Path(tempfile.mkdtemp(prefix="edgefleet-readme-"))
    work.chmod(0o755)
    run = ReadmeRun(work)
    traffic = Traffic(run, write_user_inputs(work))
    traffic.start()
    outputs: list[str] = []
    try:
        for block in readme_blocks():
            place = where(block)
            if place == "pi" and "curl" in block:
                # "once the rollout reached it": the README's order, with the wait made explicit
                wait_for(
                    "the rollout to complete", lambda: rollout_state(run) == "completed", run, 400
                )
                for device in DEVICES:
                    text = substitute(block.replace(FIRST_DEVICE, device), run.curl(device))
                    out = run.bash(text, work / device)
                    assert '"outputs"' in out, out
                continue
            if place == "pi":
                for device in DEVICES:
                    text = substitute(block.replace(FIRST_DEVICE, device), run.pi(device))
                    outputs.append(run.bash(text, work / device))
                continue
            table = [(o, n) for o, n in run.everywhere if o in block]
            extra = run.hub if place == "hub" and "hub serve" in block else []
            if "scp " in block:
                for device in DEVICES:
                    dev = [(o, n) for o, n in run.dev if o in block]
                    text = substitute(block.replace(FIRST_DEVICE, device), table + dev)
                    text = text.replace(f"pi@{device}:", f"{work / device}/")
                    (work / device).mkdir(exist_ok=True)
                    outputs.append(run.bash(text, work))
                continue
            outputs.append(run.bash(substitute(block, table + extra), work))
        joined = "\n".join(outputs)
        assert "disagrees" not in joined, joined  # hub.toml matched the broker it configured
        # (device add warns about loopback here: the table maps hub.example.org to localhost)
        devices = run.edgefleet_json("hub", "devices")["devices"]
        assert {d["device"] for d in devices if d["online"]} == set(DEVICES), devices
        assert rollout_state(run) == "completed"
        assert (work / "drift.html").stat().st_size > 1000
        assert traffic.ok > 0
        hub_log = (work / "hub.log").read_text()
        assert "connected to" in hub_log and "likely cause" not in hub_log, hub_log[-3000:]
    finally:
        traffic.done.set()
        run.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def rollout_state(run: ReadmeRun) -> str | None:
    rollouts = run.edgefleet_json("hub", "rollout", "status")["rollouts"]
    if rollouts and rollouts[0]["state"] in ("aborted", "failed", "rolled_back"):
        raise AssertionError(f"rollout ended {rollouts[0]}\n{run.logs()}")
    return str(rollouts[0]["state"]) if rollouts else None

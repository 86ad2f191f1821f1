"""What the long-running daemon keeps out of its process (it runs beside the user's own
application on a 512 MB device): the signature code, asyncio, the command line, and the
deployment code until there is something to deploy. Real processes, real installs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.support.agents import infer, kill, make_env, stop
from tests.support.waiting import wait_until

from edgefleet.agent.commands.run_cmd import interpreter_options

ROW = [[5.1, 3.5, 1.4, 0.2]]
# Shared objects that only these packages bring into a process.
FOREIGN_LIBRARIES = {
    "cryptography": "_rust.abi3.so",
    "asyncio": "_asyncio.",
    "ssl": "_ssl.",
}


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.subprocess
def test_agent_run_becomes_the_lean_daemon_in_the_same_process(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert env.cli("install", str(env.bundle(1))).returncode == 0
    proc = env.start_daemon()
    try:
        url = env.endpoint_url(proc)  # endpoint.json names the pid we started
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        assert b" -m edgefleet.agent.daemon agent run --config " in cmdline
        assert infer(url, "iris", ROW)[0] == 200
        # an install through the running daemon: verified and extracted by a child
        result = env.cli("install", str(env.bundle(2)), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["via"] == "daemon"
        wait_until(
            lambda: f"version 2 to serve: {env.log_tail()}",
            lambda: infer(url, "iris", ROW)[1]["model_version"] == "2",
            30,
        )
        maps = mapped_libraries(proc.pid)
        for package, library in FOREIGN_LIBRARIES.items():
            assert library not in maps, f"{package} is loaded in the daemon"
    finally:
        code = stop(proc)
        kill(proc)
    assert code == 0


MODULES_AFTER = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from edgefleet.agent.daemon import main

    config, state, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    def watch():
        while not (state / "endpoint.json").exists():
            time.sleep(0.02)
        snapshots = {"ready": sorted(sys.modules)}
        (state / "ready").touch()
        while not (state / "installed").exists():
            time.sleep(0.02)
        snapshots["installed"] = sorted(sys.modules)
        out.write_text(json.dumps(snapshots))
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    sys.exit(main(["agent", "run", "--config", str(config)]))
    """
)


@pytest.mark.subprocess
def test_the_serving_process_imports_no_signature_or_cli_code(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert env.cli("install", str(env.bundle(1))).returncode == 0
    out = tmp_path / "modules.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", MODULES_AFTER, str(env.config_path), str(env.state_dir), str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (env.state_dir / "ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        url = json.loads((env.state_dir / "endpoint.json").read_text())["url"]
        assert infer(url, "iris", ROW)[0] == 200
        result = env.cli("install", str(env.bundle(2)), "--wait", "final")
        assert result.returncode == 0, result.stderr
        (env.state_dir / "installed").touch()
        assert proc.wait(60) == 0
    finally:
        kill(proc)  # type: ignore[arg-type]
    modules = json.loads(out.read_text())
    never = ("cryptography", "asyncio", "ssl", "click", "tarfile", "edgefleet.core.trust")
    for when in ("ready", "installed"):
        loaded = set(modules[when])
        assert not [m for m in loaded if m.split(".")[0] in never or m in never], when
    # the deployment code arrives with the first request, not before
    assert "edgefleet.agent.deploy.driver" not in modules["ready"]
    assert "edgefleet.agent.deploy.driver" in modules["installed"]


def test_interpreter_options_survive_the_exec() -> None:
    python = "/usr/bin/python3"
    assert interpreter_options([python, "-X", "dev", "-OO", "-Wignore", "-m", "x", "-X"]) == [
        "-X",
        "dev",
        "-OO",
        "-Wignore",
    ]
    assert interpreter_options([python, "/venv/bin/edgefleet", "agent", "run"]) == []
    assert interpreter_options([python, "-B", "-c", "pass"]) == ["-B"]


@pytest.mark.subprocess
def test_a_broken_trust_store_still_stops_the_daemon_at_start(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert env.cli("install", str(env.bundle(1))).returncode == 0
    assert env.signer.trust_path is not None
    env.signer.trust_path.write_text("{not json")  # only the verification child reads it now
    result = env.cli("run", timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: field 'agent.trust_store'")
    assert result.stderr.count("\n") == 1

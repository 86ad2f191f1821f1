"""Agent processes for tests: a throwaway installation, its daemon, and talking to it.

``make_env(tmp_path)`` writes a publisher key and trust store, a device
profile (``x86_64-gateway`` with a 1 MiB bundle budget, so oversize bundles
are cheap to build), and an ``agent.toml`` whose endpoint listens on a free
port. ``env.bundle(version, ...)`` writes a real signed iris bundle through
``tests.support.bundles``. The functions below wait for a daemon's endpoint or its
pause hook, stop it, and call its local endpoint; the integration fleet's devices
use them too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.bundles import Signer, make_signer, write_signed_bundle
from tests.support.waiting import wait_until

PROFILE_NAME = "x86_64-gateway"
MAX_BUNDLE_BYTES = 1 << 20


def profile_toml(
    *,
    description: str = "test gateway with small budgets",
    memory_mb: int = 1024,
    max_bundle_bytes: int = MAX_BUNDLE_BYTES,
    telemetry_budget_bytes: int = 1048576,
    window_s: int = 60,
    extra: str = "",
) -> str:
    """The test gateway profile (one onnxruntime thread, small budgets) as a profile file."""
    return f"""\
name = "{PROFILE_NAME}"
description = "{description}"

[hardware]
arch = "x86_64"
cores = 2
memory_mb = {memory_mb}
storage_budget_mb = 64

[onnxruntime]
min_onnxruntime = "1.17"
execution_providers = ["CPUExecutionProvider"]
intra_op_threads = 1
inter_op_threads = 1

[model]
quantization = "none"
int8_format = "U8S8"
max_bundle_bytes = {max_bundle_bytes}

[telemetry]
telemetry_budget_bytes = {telemetry_budget_bytes}
window_s = {window_s}
{extra}"""


PROFILE_TOML = profile_toml()


@dataclass
class AgentEnv:
    root: Path
    config_path: Path
    state_dir: Path
    signer: Signer

    def bundle(self, version: int, name: str = "iris", **kwargs: Any) -> Path:
        out = (
            self.root
            / "bundles-out"
            / f"{name}-{version}-{len(kwargs)}-{abs(hash(repr(sorted(kwargs.items())))) % 10**8}.efb"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        signer = kwargs.pop("signer", self.signer)
        write_signed_bundle(out, "iris", signer, name=name, version=version, **kwargs)
        return out

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "edgefleet.core.cli.main",
                "agent",
                *args,
                "--config",
                str(self.config_path),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def start_daemon(self, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            agent_run_command(self.config_path),
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "daemon.log", "a"),  # noqa: SIM115 - closed with the process
            text=True,
            env={**os.environ, **(env or {})},
        )

    def endpoint_url(self, proc: subprocess.Popen[str], timeout: float = 60) -> str:
        """Wait until the daemon is ready and return its endpoint URL."""
        return wait_endpoint("the daemon", self.state_dir, proc, timeout, self.log_tail)

    def log_tail(self) -> str:
        try:
            return (self.root / "daemon.log").read_text()[-3000:]
        except OSError:
            return ""


def make_env(
    tmp_path: Path,
    *,
    probation: dict[str, Any] | None = None,
    telemetry: dict[str, Any] | None = None,
) -> AgentEnv:
    signer = make_signer(tmp_path / "keys")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / f"{PROFILE_NAME}.toml").write_text(PROFILE_TOML)
    state_dir = tmp_path / "state"
    settings = {"smoke": True, "min_requests": 0, "max_seconds": 0, "max_attempts": 3}
    settings.update(probation or {})
    tel = {"flush_interval_s": 0.2}
    tel.update(telemetry or {})

    def toml_value(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else repr(v)

    lines = [
        "[agent]",
        'device_id = "test-device"',
        f'state_dir = "{state_dir}"',
        f'profile = "{PROFILE_NAME}"',
        f'profiles_dir = "{profiles}"',
        f'trust_store = "{signer.trust_path}"',
        'log_level = "info"',
        "shutdown_timeout_s = 5",
        "[endpoint]",
        'host = "127.0.0.1"',
        "port = 0",
        "[probation]",
        *(f"{k} = {toml_value(v)}" for k, v in settings.items()),
        "[telemetry]",
        *(f"{k} = {toml_value(v)}" for k, v in tel.items()),
    ]
    config_path = tmp_path / "agent.toml"
    config_path.write_text("\n".join(lines) + "\n")
    return AgentEnv(tmp_path, config_path, state_dir, signer)


def agent_run_command(config: Path) -> list[str]:
    """``edgefleet agent run`` for ``config``, in this interpreter."""
    return [
        sys.executable,
        "-m",
        "edgefleet.core.cli.main",
        "agent",
        "run",
        "--config",
        str(config),
    ]


IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def wait_endpoint(
    what: str,
    state_dir: Path,
    proc: subprocess.Popen[Any],
    timeout_s: float,
    log_tail: Callable[[], str],
) -> str:
    """The URL in ``state_dir/endpoint.json`` once the daemon ``proc`` wrote it (its own pid)."""

    def ready() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}: {log_tail()}")
        try:
            info = json.loads((state_dir / "endpoint.json").read_text())
        except (OSError, ValueError):
            return None
        return str(info["url"]) if info.get("pid") == proc.pid else None

    return str(wait_until(f"{what} to serve", ready, timeout_s))


def http_json(url: str, body: Any | None = None, timeout: float = 10) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def infer(
    url: str, model: str = "iris", rows: Sequence[Sequence[float]] = IRIS_ROWS
) -> tuple[int, Any]:
    body = {
        "inputs": [
            {"name": "X", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}
        ]
    }
    return http_json(f"{url}/v2/models/{model}/infer", body)


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def wait_stopped(
    proc: subprocess.Popen[Any], timeout: float = 90, log_tail: Callable[[], str] = lambda: ""
) -> None:
    """Wait until ``proc`` stopped itself with SIGSTOP (the test pause hook)."""

    def paused() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"process exited with {proc.returncode} before pausing {log_tail()}"
            )
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        return fields[0] == "T"

    wait_until("the process to reach the pause point", paused, timeout)
